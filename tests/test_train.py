"""The actor-learner run end to end: real Reverb, real MuJoCo, real Ray; tiny models."""

import json

import pytest

from ada_curriculum import config as config_lib
from ada_curriculum.checkpointing import Checkpointer
from ada_curriculum.train import TrainConfig, describe_budget, train


def tiny(run, demos, **kw) -> TrainConfig:
    base = {
        "run": str(run), "demos": demos, "time_limit": 15, "num_actors": 1, "envs_per_actor": 2,
        "actor_steps_per_call": 8, "variable_update_period": 2, "batch_size": 16, "updates_per_call": 4,
        "publish_every": 2, "max_updates": 12, "max_minutes": 5.0, "checkpoint_every": 8, "stall_timeout": 30.0,
        "replay": {"min_size_to_sample": 8, "samples_per_insert": 64.0},
        "diffusion": {"down_dims": [16, 32], "num_inference_steps": 2},
        "optim": {"warmup_steps": 2}, "dashboard": False, "embedding_every": 0,
    }
    base.update(kw)
    return config_lib.from_dict(TrainConfig, base)


def rows_all(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_in_process_run_feeds_the_learner_and_resumes(demos, tmp_path):
    run = tmp_path / "run"
    summary = train(tiny(run, demos, distributed=False, eval_every=8, eval_episodes=2, eval_videos=1))
    assert summary["stopped_by"] == "max_updates" and summary["updates"] >= 12
    assert summary["env_steps"] > 0 and summary["episodes"] > 0
    online = summary["replay"]["online"]
    assert online["size"] > 0 and online["num_samples"] > 0  # actors' data reached the learner
    rows = [r for r in rows_all(run) if r.get("kind") != "eval"]
    assert rows[-1]["updates"] == summary["updates"] and "loss" in rows[-1]
    assert rows[-1]["demo_fraction"] == pytest.approx(0.5, abs=0.01)

    # A periodic held-out evaluation ran with published weights and recorded a video.
    evals = [r for r in rows_all(run) if r.get("kind") == "eval"]
    assert evals and evals[-1]["eval/episodes"] == 2 and evals[-1]["eval/version"] >= 8
    assert summary["eval"]["version"] >= 8 and len(summary["eval"]["videos"]) == 1

    ckpt = Checkpointer(run / "checkpoints")
    meta = ckpt.read_meta()
    ckpt.close()
    assert meta["counters"]["env_steps"] == summary["env_steps"]
    assert meta["task_source"]["episodes"] == summary["episodes"]
    assert meta["replay_checkpoint"]

    resumed = train(tiny(run, demos, distributed=False, max_updates=20))
    assert resumed["updates"] >= 20
    assert resumed["env_steps"] > summary["env_steps"] and resumed["episodes"] >= summary["episodes"]
    # The replay tables came back from the Reverb checkpoint: the demo table was not reloaded.
    assert resumed["replay"]["demo"]["size"] == summary["replay"]["demo"]["size"]
    assert "demo_items" not in resumed or resumed["demo_items"] == summary.get("demo_items")

    # A changed task distribution is refused, naming the field, and nothing is overwritten.
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.raises(Exception, match="^tasks: the checkpoint was made with 'nominal'"):
        train(tiny(run, demos, distributed=False, tasks="full"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_distributed_run_on_local_ray(demos, tmp_path):
    ray = pytest.importorskip("ray")
    run = tmp_path / "run"
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        summary = train(tiny(run, demos, distributed=True, num_actors=2, max_updates=16))
    finally:
        ray.shutdown()
    assert summary["stopped_by"] == "max_updates"
    assert summary["replay"]["online"]["size"] > 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["updates"] >= 16 and rows[-1]["episodes"] > 0


def test_curriculum_widens_in_a_real_run_and_its_state_resumes(demos, tmp_path):
    # Threshold 0 makes widening a fixed schedule (a tiny fresh policy never succeeds): each
    # boundary moves once two episodes have been played on it. What is under test is the
    # plumbing: actors' results reach the scheduler, the box grows, the state is checkpointed.
    run = tmp_path / "run"
    curriculum = {"strategy": "widening", "widening": {"dims": ["banana_x", "banana_y"], "window": 2,
                                                       "threshold": 0.0, "boundary_prob": 1.0}}
    summary = train(tiny(run, demos, distributed=False, tasks="full", curriculum=curriculum, max_updates=8))
    stage = summary["curriculum"]["curriculum/stage"]
    assert stage >= 1 and summary["curriculum"]["curriculum/coverage"] > 0
    bounds = summary["curriculum"]
    assert bounds["curriculum/bounds/banana_x/lo"] < 0.5 or bounds["curriculum/bounds/banana_x/hi"] > 0.5 \
        or bounds["curriculum/bounds/banana_y/lo"] < -0.15 or bounds["curriculum/bounds/banana_y/hi"] > -0.15
    # Dimensions not listed stay at the full range (the box holds the whole space there).
    assert bounds["curriculum/bounds/target_x/lo"] == 0.38 and bounds["curriculum/bounds/target_x/hi"] == 0.62
    rows = [r for r in rows_all(run) if r.get("kind") != "eval"]
    assert rows[-1]["curriculum/stage"] == stage

    ckpt = Checkpointer(run / "checkpoints")
    saved = ckpt.read_meta()["task_source"]
    ckpt.close()
    assert saved["strategy"] == "widening" and saved["widening"]["stage"] == stage

    resumed = train(tiny(run, demos, distributed=False, tasks="full", curriculum=curriculum, max_updates=16))
    assert resumed["curriculum"]["curriculum/stage"] >= stage  # the box never shrinks, and went on

    # Another strategy on the same run directory is refused with a one-line error.
    with pytest.raises(Exception, match="curriculum.strategy"):
        train(tiny(run, demos, distributed=False, tasks="full", curriculum={"strategy": "plr"}, max_updates=20))


def test_acting_inference_steps_reach_the_actors_sampling(tmp_path):
    from ada_curriculum.agent.builder import Builder
    from ada_curriculum.config import ConfigError
    from ada_curriculum.policies import make_policy

    cfg = config_lib.from_dict(TrainConfig, {"run": str(tmp_path), "demo_fraction": 0.0, "acting_inference_steps": 4})
    builder = Builder(cfg, make_policy("diffusion", cfg.diffusion))
    assert builder.actor_args(0, None, None, None)["sampling"] == {"num_inference_steps": 4}
    default = config_lib.from_dict(TrainConfig, {"run": str(tmp_path), "demo_fraction": 0.0})
    assert Builder(default, builder.policy).actor_args(0, None, None, None)["sampling"] is None  # the policy's own
    with pytest.raises(ConfigError, match="^acting_inference_steps: must be <= diffusion.num_train_timesteps"):
        config_lib.from_dict(TrainConfig, {"run": str(tmp_path), "demo_fraction": 0.0,
                                           "acting_inference_steps": 101}).validate()


def test_the_budget_line_names_every_budget_that_can_end_the_run():
    # The defaults hold an update budget, so a run given only --max-minutes may end before it.
    assert describe_budget(TrainConfig(run="r", max_minutes=60.0)).startswith(
        "stops at the first of 400 updates, 60 minutes (")
    only_steps = TrainConfig(run="r", max_updates=None, max_minutes=None, max_env_steps=65_000)
    assert describe_budget(only_steps).startswith("stops at 65000 env steps (")
