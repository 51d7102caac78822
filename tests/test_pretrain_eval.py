"""pretrain -> checkpoint -> resume -> eval through the real CLI, with tiny runs."""

import dataclasses
import json

import numpy as np
import pytest

from ada_curriculum import evaluate
from ada_curriculum.cli import main
from ada_curriculum.pretrain import load_policy


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos") / "store"
    assert main(["collect", "--tasks", "nominal", "--episodes", "4", "--out", str(out)]) == 0
    return str(out)


TINY = ["--batch-size", "8", "--log-every", "2", "--optim.warmup-steps", "2"]


@pytest.mark.parametrize("kind", ["diffusion", "transformer"])
def test_pretrain_resume_and_eval(kind, demos, tmp_path, capsys):
    run = tmp_path / "run"
    # Tiny widths: the machinery is under test here, not the model's quality.
    extra = (["--transformer.preset", "tiny", "--transformer.max-len", "32"] if kind == "transformer"
             else ["--diffusion.down-dims", "16,32", "--diffusion.num-inference-steps", "2"])
    argv = ["pretrain", "--policy", kind, "--demos", demos, "--out", str(run), *TINY, *extra]
    assert main([*argv, "--updates", "4", "--checkpoint-every", "2"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["updates"] == 4 and summary["policy"] == kind and summary["params"] > 0
    assert np.isfinite(summary["final_loss"])
    assert json.loads((run / "config.json").read_text())["policy"] == kind
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["update"] for m in lines] == [2, 4]
    assert any(k.startswith("grad_norm/") for k in lines[0])

    # Resume: the same directory continues from update 4 up to 6.
    capsys.readouterr()
    assert main([*argv, "--updates", "6", "--checkpoint-every", "2"]) == 0
    assert "resuming" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["updates"] == 6
    lines = [json.loads(line)["update"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines == [2, 4, 6]

    # The checkpoint holds the normaliser fitted on the demos.
    policy, variables, cfg, step = load_policy(run)
    assert step == 6 and policy.kind == kind
    lo, hi = np.asarray(variables["normalizer"]["action"]["low"]), np.asarray(variables["normalizer"]["action"]["high"])
    assert lo.shape == (5,) and np.all(hi > lo) and hi[4] == pytest.approx(1.0, abs=0.02)

    # Closed-loop eval writes a summary with a confidence interval and per-bin results.
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(run), "--episodes", "2", "--seeds", "0,1", "--num-envs", "2",
                 "--out", str(out), "--videos", "1", "--time-limit", "12"]) == 0
    result = json.loads((out / "summary.json").read_text())
    assert result["episodes"] == 4 and len(result["success_rate_per_seed"]) == 2
    assert 0.0 <= result["ci95"][0] <= result["success_rate"] <= result["ci95"][1] <= 1.0
    assert sum(b["episodes"] for b in result["per_bin"].values()) == 4
    # One row per episode, in plan order, with the task and env seed the plan gave it.
    rows = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    plans = {seed: evaluate.episode_plan("nominal", 2, seed) for seed in (0, 1)}
    assert [(r["seed"], r["index"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(r["env_seed"] == plans[r["seed"]][r["index"]][1] for r in rows)
    assert all(r["task"] == plans[r["seed"]][r["index"]][0].to_dict() for r in rows)
    assert sum(r["success"] for r in rows) == result["successes"]
    videos = list(out.glob("videos-seed0/*"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000


def test_incompatible_resume_and_bad_input_are_one_line_errors(demos, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["pretrain", "--demos", demos, "--out", str(run), *TINY, "--diffusion.down-dims", "16,32"]
    assert main([*base, "--updates", "2"]) == 0
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    capsys.readouterr()
    assert main([*base, "--updates", "4", "--diffusion.horizon", "8", "--diffusion.n-action-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: diffusion.horizon: the checkpoint was made with 16") and err.count("\n") == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # nothing written

    assert main(["pretrain", "--demos", str(tmp_path / "missing"), "--out", str(tmp_path / "r2")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main([*base, "--diffusion.horizon", "10"]) == 2
    assert capsys.readouterr().err.startswith("error: diffusion.horizon:")
    assert main(["eval", "--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err

    # DDIM's stochasticity can be chosen at evaluation (stochastic sampling suits an imperfect
    # model better: bench/RESULTS.md, session 13), within [0, 1].
    assert main(["eval", "--checkpoint", str(run), "--episodes", "2", "--num-envs", "2", "--time-limit", "6",
                 "--eta", "1"]) == 0
    summary = json.loads((run / "eval-nominal-eta1" / "summary.json").read_text())
    assert summary["sampling"] == {"eta": 1.0} and summary["episodes"] == 2
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--eta", "1.5"]) == 2
    assert capsys.readouterr().err.startswith("error: eta:")


def test_wilson_interval_and_task_bins():
    lo, hi = evaluate.wilson_interval(50, 50)
    assert hi == 1.0 and 0.92 < lo < 0.94
    lo, hi = evaluate.wilson_interval(0, 10)
    assert lo == 0.0 and 0.27 < hi < 0.29
    plan = evaluate.episode_plan("full", 30, seed=3)
    assert plan == evaluate.episode_plan("full", 30, seed=3) and plan != evaluate.episode_plan("full", 30, seed=4)
    bins = {evaluate.task_bin(task) for task, _ in plan}
    assert len(bins) > 3 and all(b.startswith("x") for b in bins)


def test_per_dimension_success_finds_the_dimension_a_policy_fails_on():
    import math

    plan = evaluate.episode_plan("full", 240, seed=5)
    # A made-up policy that fails whenever the banana lies across the gripper (|yaw| near pi/2).
    results = [evaluate.EpisodeResult(task=t, seed=s, success=abs(math.cos(t.banana_yaw)) > 0.5, steps=10,
                                      trial_successes=[abs(math.cos(t.banana_yaw)) > 0.5], unstable=False)
               for t, s in plan]
    per_dim = evaluate.summarize(results)["per_dimension"]
    yaw = per_dim["banana_yaw"]
    assert len(yaw) == evaluate.DIMENSION_BINS and yaw[0]["low"] == pytest.approx(-math.pi)
    assert sum(r["episodes"] for r in yaw) == 240
    assert sum(r["successes"] for r in yaw) == sum(r.success for r in results)
    # Bins of headings near 0 or +-pi all succeed; the two around +-pi/2 mostly fail.
    rates = [r["success_rate"] for r in yaw]
    assert rates[0] == rates[2] == rates[3] == rates[5] == 1.0 and max(rates[1], rates[4]) < 0.5
    assert evaluate.widest_spread(per_dim)[0] == "banana_yaw"
    # A dimension every episode shares (the nominal task's) is left out.
    nominal = [dataclasses.replace(r, task=evaluate.episode_plan("nominal", 1, 0)[0][0]) for r in results[:5]]
    assert evaluate.per_dimension(nominal) == {} and evaluate.widest_spread({}) is None


def test_paired_difference_interval_matches_the_formula_and_beats_the_unpaired_one():
    rng = np.random.default_rng(0)
    hard = rng.random(300) < 0.5  # shared episode difficulty: both policies fail the hard half more
    a = rng.random(300) < np.where(hard, 0.1, 0.5)
    b = rng.random(300) < np.where(hard, 0.05, 0.4)
    lo, hi = evaluate.paired_difference_interval(a, b)
    # Agresti-Min: 0.5 in each cell of the 2x2 table, then the paired Wald interval.
    n = 302.0
    p10, p01 = (np.sum(a & ~b) + 0.5) / n, (np.sum(~a & b) + 0.5) / n
    d, se = p10 - p01, np.sqrt((p10 + p01 - (p10 - p01) ** 2) / n)
    assert (lo, hi) == pytest.approx((d - 1.96 * se, d + 1.96 * se))
    assert json.loads(json.dumps({"ci": [lo, hi], "wins": lo > 0}))["ci"] == [lo, hi]  # plain floats, as benches print
    ulo, uhi = evaluate.difference_interval(int(a.sum()), 300, int(b.sum()), 300)
    assert hi - lo < uhi - ulo
    assert evaluate.paired_difference_interval(a, a)[0] < 0 < evaluate.paired_difference_interval(a, a)[1]
    with pytest.raises(ValueError, match="equal-length"):
        evaluate.paired_difference_interval(a, b[:-1])
