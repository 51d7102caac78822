"""The dashboard's HTTP API: the real server on a free port over runs written by the real
`MetricsWriter`, queried with urllib / http.client."""

import http.client
import json
import os
import urllib.error
import urllib.request

import pytest

from ada_curriculum.cli import main
from ada_curriculum.dashboard import serve
from ada_curriculum.metrics_store import FILENAME, MetricsConfig, MetricsWriter
from dashboard_data import populate, write_video


@pytest.fixture
def start():
    servers = []

    def start(root):
        server = serve(root, "127.0.0.1", 0)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def get(server, path, headers=None):
    """(status, headers, body) of a GET; 4xx/5xx answers too."""
    request = urllib.request.Request(server.url.rstrip("/") + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def get_json(server, path):
    status, headers, body = get(server, path)
    assert headers["Content-Type"] == "application/json", (path, status, body[:200])
    return status, json.loads(body)


def raw_get(server, path):
    """A GET with the path sent exactly as given (urllib would not normalise it either, but
    http.client makes that explicit)."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def assert_clean_error(status, body, expected_status):
    assert status == expected_status, body
    text = body.decode() if isinstance(body, bytes) else json.dumps(body)
    data = json.loads(text) if isinstance(body, bytes) else body
    assert set(data) == {"error"} and data["error"] and "\n" not in data["error"]
    for leak in ("Traceback", "File \"", "line ", "sqlite3.", "Error:"):
        assert leak not in text, text


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return populate(tmp_path_factory.mktemp("runs") / "run1")


def test_single_run_endpoints(start, run_dir):
    server = start(run_dir)
    assert server.url.startswith("http://127.0.0.1:")

    status, runs = get_json(server, "/api/runs")
    assert status == 200 and runs["mode"] == "single"
    (run,) = runs["runs"]
    assert run["name"] == "run1" and run["has_metrics"] and not run["live"] and run["last_step"] == 200
    assert run["eval_success"] == 0.75 and run["stage"] == 4

    status, body = get_json(server, "/api/scalars/names")
    assert status == 200 and body["run"] == "run1" and "loss" in body["names"] and "eval/success_rate" in body["names"]

    status, body = get_json(server, "/api/scalars?name=loss,grad_norm&since=150")
    assert status == 200 and sorted(body["scalars"]) == ["grad_norm", "loss"]
    assert [p[0] for p in body["scalars"]["loss"]] == [160, 170, 180, 190, 200] and body["last_step"] == 200
    _, body = get_json(server, "/api/scalars?prefix=replay/&max_points=3")
    assert all(n.startswith("replay/") for n in body["scalars"]) and len(body["scalars"]["replay/online/size"]) == 3
    _, body = get_json(server, "/api/scalars?since=200")
    assert body == {"run": "run1", "scalars": {}, "last_step": None}
    _, body = get_json(server, "/api/scalars?run=run1&name=loss")  # run= is optional but accepted
    assert len(body["scalars"]["loss"]) == 20

    _, body = get_json(server, "/api/curriculum?since=150")
    assert [s["step"] for s in body["snapshots"]] == [160, 170, 180, 190, 200]
    assert "bins" not in body["snapshots"][0] and body["latest"]["step"] == 200
    assert body["latest"]["bins"]["banana"]["counts"] and body["latest"]["bounds"]["banana_x"]["full_lo"] == 0.38

    _, body = get_json(server, "/api/evaluations")
    assert [e["step"] for e in body["evaluations"]] == [100, 200]
    videos = body["evaluations"][-1]["videos"]
    assert [v["name"] for v in videos] == ["episode_000_success.mp4", "episode_001_failure.mp4"]
    assert videos[0]["url"] == "/videos/version_0000200/episode_000_success.mp4?run=run1"
    _, body = get_json(server, "/api/evaluations?last=1")
    assert [e["step"] for e in body["evaluations"]] == [200]

    _, body = get_json(server, "/api/distillation")
    assert [(s["generation"], s["preset"]) for s in body["stages"]] == [(1, "base"), (2, "large")]

    _, body = get_json(server, "/api/health")
    assert body["latest"]["actors_alive"] == 2 and body["latest"]["last_checkpoint_step"] == 200
    assert body["rates"]["learner/updates_per_s"]["value"] == 12.5 and body["last_step"] == 200
    assert not body["live"] and not body["finished"] and body["writer_opened_at"] > 0

    _, body = get_json(server, "/api/embedding")
    assert body["steps"] == [200] and len(body["embedding"]["points"]) == 60
    assert {p["label"] for p in body["embedding"]["points"]} == {"banana left", "banana centre", "banana right"}
    _, body = get_json(server, "/api/embedding?step=5")
    assert body["embedding"] is None

    status, headers, data = get(server, videos[0]["url"])
    assert status == 200 and headers["Content-Type"] == "video/mp4"
    assert data == (run_dir / "videos" / "version_0000200" / "episode_000_success.mp4").read_bytes()
    status, headers, part = get(server, videos[0]["url"], {"Range": "bytes=4-11"})
    assert status == 206 and part == data[4:12] and headers["Content-Range"] == f"bytes 4-11/{len(data)}"
    status, _, _ = get(server, videos[0]["url"], {"Range": f"bytes={len(data) + 5}-"})
    assert status == 416


def test_live_writes_show_up_incrementally(start, tmp_path):
    run = tmp_path / "live"
    writer = MetricsWriter(run, MetricsConfig(tensorboard=False, commit_interval=0.0))
    server = start(run)
    try:
        writer.scalar("loss", 1.0, 10)
        _, body = get_json(server, "/api/scalars")
        assert body["last_step"] == 10
        _, health = get_json(server, "/api/health")
        assert health["live"] and health["last_step"] == 10
        writer.scalars({"loss": 0.5, "learner/updates_per_s": 3.0}, 20)
        _, body = get_json(server, "/api/scalars?since=10")
        assert body["scalars"] == {"learner/updates_per_s": [[20, pytest.approx(body["scalars"]["loss"][0][1]), 3.0]],
                                   "loss": [[20, pytest.approx(body["scalars"]["loss"][0][1]), 0.5]]}
    finally:
        writer.close()
    (run / "summary.json").write_text("{}")
    _, health = get_json(server, "/api/health")
    assert not health["live"] and health["finished"]


EMPTY_ANSWERS = {
    "/api/scalars/names": {"names": []},
    "/api/scalars?since=3&name=loss": {"scalars": {}, "last_step": None},
    "/api/curriculum": {"snapshots": [], "latest": None},
    "/api/evaluations": {"evaluations": []},
    "/api/distillation": {"stages": []},
    "/api/embedding": {"steps": [], "embedding": None},
}


@pytest.mark.parametrize("kind", ["no metrics file", "empty store", "zero-byte file"])
def test_empty_runs_answer_empty_data(start, tmp_path, kind):
    run = tmp_path / "fresh"
    run.mkdir()
    (run / "config.json").write_text("{}")
    if kind == "empty store":
        MetricsWriter(run, MetricsConfig(tensorboard=False)).close()
    elif kind == "zero-byte file":
        (run / FILENAME).touch()
    server = start(run)
    for path, expected in EMPTY_ANSWERS.items():
        status, body = get_json(server, path)
        assert status == 200 and body == {"run": "fresh", **expected}, path
    status, health = get_json(server, "/api/health")
    assert status == 200 and health["latest"] is None and health["rates"] == {} and health["last_step"] is None
    status, runs = get_json(server, "/api/runs")
    assert status == 200 and runs["runs"][0]["has_metrics"] == (kind != "no metrics file")
    assert runs["runs"][0]["last_step"] is None
    if kind == "no metrics file":
        assert not (run / FILENAME).exists()  # reading never creates the store


def test_an_empty_directory_is_an_empty_run(start, tmp_path):
    server = start(tmp_path)
    status, runs = get_json(server, "/api/runs")
    assert status == 200 and runs["mode"] == "single" and runs["runs"][0]["has_metrics"] is False
    status, body = get_json(server, "/api/evaluations")
    assert status == 200 and body["evaluations"] == []


def test_parent_folder_lists_runs_and_serves_each(start, tmp_path):
    root = tmp_path / "runs"
    populate(root / "alpha", updates=100, videos=False)
    populate(root / "beta", updates=50, every=25, videos=False)
    (root / "pending").mkdir(parents=True)
    (root / "pending" / "config.json").write_text("{}")  # started, no metrics yet
    (root / "notes").mkdir()  # not a run
    (root / ".hidden").mkdir()
    (root / ".hidden" / "config.json").write_text("{}")
    server = start(root)

    status, runs = get_json(server, "/api/runs")
    assert status == 200 and runs["mode"] == "parent" and runs["root"] == "runs"
    assert [r["name"] for r in runs["runs"]] == ["alpha", "beta", "pending"]
    assert [r["last_step"] for r in runs["runs"]] == [100, 50, None]

    _, body = get_json(server, "/api/scalars?run=beta&name=loss")
    assert [p[0] for p in body["scalars"]["loss"]] == [25, 50]
    _, body = get_json(server, "/api/evaluations?run=pending")
    assert body == {"run": "pending", "evaluations": []}

    # A run created after the dashboard started appears in the list.
    populate(root / "gamma", updates=20, videos=False)
    _, runs = get_json(server, "/api/runs")
    assert "gamma" in [r["name"] for r in runs["runs"]]

    assert_clean_error(*get_json(server, "/api/scalars?run=nope"), 404)
    assert_clean_error(*get_json(server, "/api/scalars"), 400)  # which run?
    assert_clean_error(*get_json(server, "/api/health?run=.hidden"), 400)
    assert_clean_error(*get_json(server, "/api/health?run=..%2Falpha"), 400)


def test_unknown_run_in_single_mode_is_404(start, run_dir):
    server = start(run_dir)
    assert_clean_error(*get_json(server, "/api/scalars?run=other"), 404)


@pytest.mark.parametrize("path", [
    "/api/scalars?since=abc",
    "/api/scalars?since=1.5",
    "/api/scalars?since=-2",
    "/api/scalars?since=99999999999999999999999",
    "/api/scalars?since=1&since=2",
    "/api/scalars?max_points=1",
    "/api/scalars?name=",
    "/api/scalars?name=loss;DROP%20TABLE%20scalars",
    "/api/scalars?prefix=%27%20OR%201=1--",
    "/api/scalars?bogus=1",
    "/api/evaluations?last=0",
    "/api/embedding?step=-1",
    "/api/runs?run=x",
    "/api/health?run=a/b",
    "/api/scalars?%zz",
    "/api/curriculum?since",
])
def test_bad_query_parameters_are_clear_400s(start, run_dir, path):
    server = start(run_dir)
    status, body = get_json(server, path)
    assert_clean_error(status, body, 400)
    # Still intact afterwards.
    _, names = get_json(server, "/api/scalars/names")
    assert "loss" in names["names"]


@pytest.mark.parametrize("path, status", [
    ("/api/nope", 404),
    ("/nope", 404),
    ("/static/missing.js", 404),
    ("/static/../server.py", 404),
    ("/api/", 404),
])
def test_unknown_paths_are_json_404s(start, run_dir, path, status):
    server = start(run_dir)
    code, body = raw_get(server, path)
    assert_clean_error(code, json.loads(body), status)


def test_videos_refuse_everything_outside_the_videos_dir(start, tmp_path):
    run = tmp_path / "run"
    clip = write_video(run / "videos" / "version_0000001" / "episode_000_success.mp4")
    (run / "config.json").write_text("{}")
    (run / "secret.mp4").write_bytes(b"not for the web")
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"outside")
    os.symlink(outside, run / "videos" / "link.mp4")
    (run / "videos" / "notes.txt").write_text("not a video")
    server = start(run)

    status, body = raw_get(server, "/videos/version_0000001/episode_000_success.mp4")
    assert status == 200 and body == clip.read_bytes()
    for path in ["/videos/../secret.mp4", "/videos/..%2Fsecret.mp4", "/videos/%2e%2e/secret.mp4",
                 "/videos/version_0000001/../../secret.mp4", "/videos/link.mp4", "/videos/..%2F..%2Foutside.mp4",
                 f"/videos/{'%2F'.join(['..'] * 12)}%2Fetc%2Fpasswd", "/videos/"]:
        status, body = raw_get(server, path)
        assert_clean_error(status, json.loads(body), 403)
        assert b"not for the web" not in body and b"outside" != body
    for path, code in [("/videos//etc/passwd", 400), ("/videos/%2Fetc%2Fpasswd", 400), ("/videos/a%00b.mp4", 400),
                       ("/videos/..%5Csecret.mp4", 400), ("/videos/notes.txt", 404), ("/videos/missing.mp4", 404),
                       ("/videos/version_0000001/episode_000_success.mp4?run=../x", 400),
                       ("/videos/version_0000001/episode_000_success.mp4?run=other", 404),
                       ("/videos/version_0000001/episode_000_success.mp4?x=1", 400)]:
        status, body = raw_get(server, path)
        assert_clean_error(status, json.loads(body), code)


def test_page_and_static_files(start, run_dir):
    server = start(run_dir)
    status, headers, body = get(server, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    for panel in ("curriculum", "heatmap", "learning", "distillation", "meta", "health", "videos", "embedding"):
        assert f'data-testid="panel-{panel}"'.encode() in body
    for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css")]:
        status, headers, _ = get(server, f"/static/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind)


def test_read_only_methods(start, run_dir):
    server = start(run_dir)
    host, port = server.server_address[:2]
    for method in ("POST", "PUT", "DELETE"):
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request(method, "/api/scalars", body=b"{}")
        r = conn.getresponse()
        assert_clean_error(r.status, json.loads(r.read()), 501)
        conn.close()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("HEAD", "/api/runs")
    r = conn.getresponse()
    assert r.status == 200 and r.read() == b""
    conn.close()


def test_an_unreadable_store_is_a_clean_error(start, tmp_path):
    (tmp_path / FILENAME).write_bytes(b"this is not a database" * 100)
    server = start(tmp_path)
    status, body = get_json(server, "/api/scalars")
    assert_clean_error(status, body, 503)
    assert "metrics store unreadable" in body["error"]


def test_serve_binds_loopback_by_default(run_dir):
    server = serve(run_dir, port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.close()


def test_cli_errors_are_one_line(tmp_path, capsys, start, run_dir):
    assert main(["dashboard", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: run_dir: {tmp_path / 'missing'} is not a directory"
    busy = start(run_dir)
    assert main(["dashboard", str(run_dir), "--port", str(busy.server_address[1])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: port: 127.0.0.1:") and "is in use" in err and "\n" not in err
    assert main(["dashboard", str(run_dir), "--port", "70000"]) == 2
    assert "port: expected an int" in capsys.readouterr().err
