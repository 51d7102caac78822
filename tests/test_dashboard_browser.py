"""The dashboard page in a real browser: headless Chromium (Debian's `chromium`, installed by
`make sysdeps`) driven by Playwright, against the real server over runs written by the real
`MetricsWriter`. Screenshots go to tests/artifacts/."""

import os
from pathlib import Path

import pytest

from ada_curriculum.dashboard import serve
from ada_curriculum.metrics_store import MetricsConfig, MetricsWriter
from dashboard_data import FULL, populate

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
PANELS = ("curriculum", "heatmap", "learning", "distillation", "meta", "health", "videos", "embedding")
TIMEOUT = 30_000  # ms; two shared cores


def _unavailable(reason):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error; run `make sysdeps`)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} not found: install Debian's chromium (`make sysdeps`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (it is in requirements.lock)")
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT)
    with sync_playwright() as p:
        # Root in a container: no sandbox; small /dev/shm: no shared-memory file system.
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                              args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        yield b
        b.close()


class Page:
    """A browser page that records console errors and uncaught exceptions."""

    def __init__(self, browser):
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT)
        self.errors = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))

    def by_testid(self, name):
        return self.page.get_by_test_id(name)

    def panel(self, name):
        return self.page.locator(f"#panel-{name}")

    def screenshot(self, name):
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path


@pytest.fixture
def page(browser):
    p = Page(browser)
    yield p
    p.context.close()


@pytest.fixture
def start():
    servers = []

    def start(root):
        servers.append(serve(root, "127.0.0.1", 0))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_every_panel_renders_and_updates_live(page, start, tmp_path):
    from playwright.sync_api import expect

    run = populate(tmp_path / "run1")
    server = start(run)
    page.page.goto(server.url)
    for name in PANELS:
        expect(page.panel(name)).to_have_attribute("data-state", "ready")

    expect(page.by_testid("run-name")).to_have_text("run1")
    expect(page.by_testid("last-step")).to_have_text("200")
    expect(page.by_testid("run-status")).to_have_text("stopped")
    # Curriculum: every dimension's bounds, and their coverage over time.
    expect(page.panel("curriculum").locator("[data-testid^=bounds-]")).to_have_count(len(FULL))
    expect(page.by_testid("curriculum-chart").locator("polyline")).to_have_count(len(FULL))
    expect(page.by_testid("curriculum-stage")).to_contain_text("stage 4")
    # Heatmaps: banana and target bins from the curriculum, banana bins from the evaluation.
    for grid in ("banana", "target", "eval"):
        expect(page.by_testid(f"heatmap-{grid}").locator("rect")).to_have_count(9)
    expect(page.by_testid("heatmap-eval")).to_contain_text("4/5")
    # Learning curves, with the clip event at update 100 marked.
    expect(page.by_testid("chart-loss").locator("polyline")).to_have_count(2)
    expect(page.by_testid("chart-success").locator("polyline")).to_have_count(2)
    expect(page.by_testid("chart-grad-norm").locator("line.clip")).to_have_count(1)
    page.by_testid("scalar-select").select_option("replay/online/size")
    expect(page.by_testid("chart-other")).to_contain_text("replay/online/size")
    # Health.
    expect(page.by_testid("health-actors")).to_have_text("2 / 2")
    expect(page.by_testid("health-restarts")).to_have_text("1")
    expect(page.by_testid("health-updates-per-s")).to_have_text("12.50")
    expect(page.by_testid("health-env-steps-per-s")).to_have_text("80")
    expect(page.by_testid("health-checkpoint")).to_contain_text("update 200")
    expect(page.by_testid("health-replay-online")).to_contain_text("2000 / 10000 (20%)")
    expect(page.by_testid("health-actor-0")).to_contain_text("restarted")
    # Meta-learning and distillation.
    expect(page.by_testid("eval-latest")).to_contain_text("update 200: success 75%")
    expect(page.by_testid("chart-trials").locator("rect")).to_have_count(3)
    expect(page.by_testid("distill-table").locator("tr")).to_have_count(3)
    expect(page.by_testid("distill-current")).to_have_text("generation 2 (large)")
    # Embedding: 60 labelled points in three regions.
    expect(page.by_testid("embedding-plot").locator("circle")).to_have_count(60)
    expect(page.by_testid("embedding-plot")).to_contain_text("banana left (20)")
    # Videos: the latest evaluation's two mp4s, served and decodable.
    videos = page.panel("videos").locator("video")
    expect(videos).to_have_count(2)
    page.page.wait_for_function(
        "[...document.querySelectorAll('video')].every(v => v.readyState >= 1 && v.videoWidth > 0)")
    page.screenshot("dashboard.png")

    # Live: a resumed writer appends; the open page picks it up within a few polls.
    with MetricsWriter(run, MetricsConfig(tensorboard=False)) as writer:
        writer.scalars({"learner/updates_per_s": 99.5, "loss": 0.1}, 210)
        writer.evaluation(210, {"episodes": 4, "successes": 2, "success_rate": 0.5, "ci95": [0.15, 0.85],
                                "success_per_trial": [0.25, 0.5, 0.75, 1.0]})
        writer.health(210, actors_alive=1, actors_total=2, actor_restarts=2, last_checkpoint_step=200)
        writer.flush()
        expect(page.by_testid("health-updates-per-s")).to_have_text("99.50")
        expect(page.by_testid("health-actors")).to_have_text("1 / 2")
        expect(page.by_testid("eval-latest")).to_contain_text("update 210: success 50%")
        expect(page.by_testid("chart-trials").locator("rect")).to_have_count(4)
        expect(page.by_testid("last-step")).to_have_text("210")
        expect(page.by_testid("run-status")).to_have_text("live")
    (run / "summary.json").write_text("{}")
    expect(page.by_testid("run-status")).to_have_text("finished")
    page.screenshot("dashboard-live.png")
    assert page.errors == []


def test_empty_run_shows_no_data_then_fills_in(page, start, tmp_path):
    from playwright.sync_api import expect

    run = tmp_path / "fresh"
    run.mkdir()
    (run / "config.json").write_text("{}")
    server = start(run)
    page.page.goto(server.url)
    for name in PANELS:
        expect(page.panel(name).get_by_test_id("empty")).to_be_visible()
        expect(page.panel(name)).to_have_attribute("data-state", "empty")
    expect(page.panel("learning")).to_contain_text("no data yet")
    expect(page.by_testid("run-status")).to_have_text("no data yet")
    page.screenshot("dashboard-empty.png")

    with MetricsWriter(run, MetricsConfig(tensorboard=False)) as writer:
        writer.scalars({"loss": 1.0}, 1)
        writer.scalars({"loss": 0.5}, 2)
        writer.flush()
        expect(page.panel("learning")).to_have_attribute("data-state", "ready")
        expect(page.by_testid("chart-loss").locator("polyline")).to_have_count(1)
    expect(page.panel("videos")).to_have_attribute("data-state", "empty")
    assert page.errors == []


def test_run_list_and_comparison(page, start, tmp_path):
    from playwright.sync_api import expect

    root = tmp_path / "runs"
    populate(root / "alpha", updates=100, videos=False)
    populate(root / "beta", updates=60, videos=False)
    server = start(root)
    page.page.goto(server.url)
    expect(page.by_testid("run-list")).to_have_attribute("data-state", "ready")
    expect(page.by_testid("run-list").locator("tbody tr, tr[data-testid^=run-]")).to_have_count(2)
    expect(page.by_testid("run-alpha")).to_contain_text("100")
    page.screenshot("dashboard-runs.png")

    page.by_testid("run-alpha").get_by_role("checkbox").check()
    page.by_testid("run-beta").get_by_role("checkbox").check()
    page.by_testid("compare-button").click()
    page.page.wait_for_url("**/?compare=alpha%2Cbeta")
    # Only alpha (100 updates) has had an evaluation: one point.
    expect(page.by_testid("compare-chart").locator("h3")).to_have_text("eval/success_rate")
    expect(page.by_testid("compare-chart").locator("circle")).to_have_count(1)
    page.by_testid("compare-select").select_option("loss")
    expect(page.by_testid("compare-chart").locator("h3")).to_have_text("loss")
    expect(page.by_testid("compare-chart").locator("polyline")).to_have_count(2)
    expect(page.by_testid("compare-chart")).to_contain_text("alpha")
    expect(page.by_testid("compare-chart")).to_contain_text("beta")

    page.page.goto(server.url)
    page.by_testid("run-beta").get_by_role("link", name="beta").click()
    expect(page.panel("learning")).to_have_attribute("data-state", "ready")
    expect(page.by_testid("run-name")).to_have_text("beta")
    expect(page.by_testid("last-step")).to_have_text("60")
    expect(page.page.locator("#back")).to_be_visible()
    assert page.errors == []


def test_a_real_train_run(page, start, real_run, tmp_path):
    """The page over the store a short real `train` run wrote (conftest's `real_run`), then live
    while the coordinator's writer appends to it."""
    import shutil

    from playwright.sync_api import expect

    from ada_curriculum.agent.run_metrics import RunMetrics

    run = tmp_path / "real"
    shutil.copytree(real_run["run"], run)  # the shared run stays as train left it
    summary = real_run["summary"]
    server = start(run)
    page.page.goto(server.url)
    for name in PANELS:
        expect(page.panel(name)).to_have_attribute("data-state", "ready")

    expect(page.by_testid("run-status")).to_have_text("finished")
    expect(page.by_testid("last-step")).to_have_text("12")
    expect(page.panel("curriculum").locator("[data-testid^=bounds-]")).to_have_count(9)  # every task dimension
    expect(page.by_testid("curriculum-stage")).to_contain_text(f"stage {summary['curriculum']['curriculum/stage']}")
    for grid in ("banana", "target", "eval"):
        expect(page.by_testid(f"heatmap-{grid}").locator("rect")).to_have_count(9)
    expect(page.by_testid("chart-loss").locator("polyline")).not_to_have_count(0)
    expect(page.by_testid("chart-grad-norm")).to_be_visible()
    expect(page.by_testid("health-actors")).to_have_text("1 / 1")
    expect(page.by_testid("health-checkpoint")).to_contain_text("update 12")
    expect(page.by_testid("health-replay-online")).to_contain_text(f"{summary['replay']['online']['size']} / ")
    expect(page.by_testid("health-actor-0")).to_contain_text("ok")
    expect(page.by_testid("eval-latest")).to_contain_text("latest evaluation at update 12")
    expect(page.by_testid("embedding-plot").locator("circle")).to_have_count(36)
    expect(page.by_testid("embedding-plot")).to_contain_text("banana far left (4)")
    # The run's distillation (conftest's REAL_RUN_DISTILL): the 32x64 student took over at update 4.
    expect(page.by_testid("distill-current")).to_have_text("generation 1 (base)")
    from ada_curriculum.metrics_store import MetricsReader

    with MetricsReader(run) as r:
        records = len(r.distillation())
    expect(page.by_testid("distill-table").locator("tr")).to_have_count(1 + min(records, 8))  # the newest 8
    expect(page.by_testid("distill-table").locator("tr").last).to_contain_text("base")
    expect(page.by_testid("chart-distance").locator("polyline")).not_to_have_count(0)
    expect(page.panel("videos").locator("video")).to_have_count(1)
    page.page.wait_for_function(
        "[...document.querySelectorAll('video')].every(v => v.readyState >= 1 && v.videoWidth > 0)")
    page.screenshot("dashboard-train-run.png")

    # Live: the coordinator's writer reopens the store (as a resume does) and records a learner
    # result; the open page follows within a few polls.
    counters = {"updates": 12, "env_steps": summary["env_steps"], "episodes": summary["episodes"],
                "actor_restarts": 0}
    stats = [{"env_steps": 0, "episodes": 0}]
    metrics = RunMetrics(run, MetricsConfig(tensorboard=False), 12, counters, stats, summary["replay"])
    try:
        stats[0]["env_steps"] = 500
        metrics.learner(16, {"loss": 0.25, "updates_done": 4}, {**counters, "updates": 16}, stats, [True, True],
                        summary["replay"], {"curriculum/stage": 1, "curriculum/coverage": 0.5})
        metrics.writer.flush()
        expect(page.by_testid("last-step")).to_have_text("16")
        expect(page.by_testid("run-status")).to_have_text("live")
        expect(page.by_testid("health-recent-success")).to_have_text("100%")
        page.screenshot("dashboard-train-run-live.png")
    finally:
        metrics.close()
    assert page.errors == []

