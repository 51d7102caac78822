"""`train --trials k`: RL fine-tuning in multi-trial episodes (transformer sequence replay, per-trial
success from the actors, per-trial held-out evaluation). Real Reverb, MuJoCo, Orbax; tiny models."""

import json

import numpy as np
import pytest

from ada_curriculum import config as config_lib
from ada_curriculum.train import TrainConfig, train

TRANSFORMER = {"preset": "tiny", "max_trials": 2}


@pytest.fixture(scope="module")
def multi_demos(tmp_path_factory):
    """Two scripted 2-trial episodes of the nominal task (each about 2 x 57 steps)."""
    from ada_curriculum.cli import main

    out = tmp_path_factory.mktemp("multi") / "store"
    assert main(["collect", "--env", "banana-place-multi", "--trials", "2", "--tasks", "nominal", "--episodes", "2",
                 "--out", str(out)]) == 0
    return str(out)


@pytest.fixture(scope="module")
def pretrained(multi_demos, tmp_path_factory):
    """A tiny transformer BC run on the 2-trial demos (a few updates: the plumbing is under test)."""
    from ada_curriculum.cli import main

    out = tmp_path_factory.mktemp("bc") / "run"
    assert main(["pretrain", "--policy", "transformer", "--demos", multi_demos, "--out", str(out),
                 "--transformer.preset", "tiny", "--transformer.max-trials", "2", "--updates", "2",
                 "--batch-size", "2", "--log-every", "1"]) == 0
    return str(out)


def tiny_transformer(run, demos, init=None, **kw) -> TrainConfig:
    base = {
        "run": str(run), "demos": demos, "init": init, "policy": "transformer", "distributed": False, "trials": 2, "time_limit": 12,
        "num_actors": 1, "envs_per_actor": 2, "actor_steps_per_call": 12, "variable_update_period": 2,
        "batch_size": 4, "updates_per_call": 4, "publish_every": 2, "max_updates": 8, "max_minutes": 5.0,
        "checkpoint_every": 8, "stall_timeout": 60.0, "replay": {"min_size_to_sample": 2, "samples_per_insert": 64.0},
        "transformer": TRANSFORMER, "optim": {"warmup_steps": 2}, "dashboard": False, "embedding_every": 0,
    }
    base.update(kw)
    return config_lib.from_dict(TrainConfig, base)


def rows_all(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class _Picks:
    """A stand-in numpy Generator whose `integers` returns fixed sample indices, so
    `SequenceWindows.sample` cuts the windows ending at chosen steps."""

    def __init__(self, picks):
        self.picks = np.asarray(picks)

    def integers(self, low, high, size):
        return self.picks


@pytest.mark.parametrize("window", [30, 256])
def test_replay_sequence_windows_match_sequence_windows(multi_demos, window):
    """The replay's sequence items of an episode are exactly `SequenceWindows`'s windows of it:
    full windows ending at every step past `window - 1`, or (an episode that fits) the whole
    episode padded at the end. Weights: trial 0's actions 1, trial 1's 0 (failed-trial context)."""
    from ada_curriculum import replay as replay_lib
    from ada_curriculum.data.windows import SequenceWindows, episode_arrays
    from ada_curriculum.episode_store import EpisodeStore
    from ada_curriculum.policies.obs import ACTION_DIM, OBS_DIM

    ep = next(iter(EpisodeStore(multi_demos)))
    arrays = episode_arrays(ep)
    n, chunk = arrays.length, 8
    trial = arrays.trial_index[:n]
    assert set(trial.tolist()) == {0, 1}
    arrays.action_weight = np.where(trial == 0, 1.0, 0.0).astype(np.float32)

    server = replay_lib.ReplayServer(replay_lib.ReplayConfig(min_size_to_sample=1), OBS_DIM, ACTION_DIM, 9, window,
                                     layout="sequence", chunk=chunk)
    try:
        client = replay_lib.ReplayClient(server.address, window=window, n_obs_steps=1)
        assert client.layout == "sequence"
        items = client.add_episode("demo", arrays.obs, arrays.action, weight=1.0, success=True, version=-1,
                                   task=np.zeros(9, np.float32), trial_index=arrays.trial_index,
                                   action_weight=arrays.action_weight)
        assert items == (1 if n <= window else n - window + 1) == client.info()["demo"]["size"]
        got = client.sample("demo", 48)
    finally:
        server.stop()

    windows = SequenceWindows([arrays], window, chunk)
    ends = []
    for b in range(48):
        valid = got["mask"][b]
        if n <= window:
            ends.append(n - 1)
            continue
        assert valid.all()
        # A full window: find where it starts from its first observation.
        start = int(np.flatnonzero((arrays.obs[:n] == got["obs"][b, 0]).all(axis=1))[0])
        ends.append(start + window - 1)
    want = windows.sample(_Picks(ends), len(ends))
    for key in ("obs", "prev_action", "trial_index", "mask", "action", "action_mask", "action_weight"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    np.testing.assert_array_equal(got["weight"], want["weight"])
    np.testing.assert_array_equal(got["trial"], [trial[e] for e in ends])
    # Both trials' actions are there; the failed one is context only, and no chunk crosses the boundary.
    assert got["action_weight"][got["trial_index"] == 1].max() == 0.0
    assert got["action_weight"].max() == 1.0


def test_trial_action_weights():
    from ada_curriculum.agent.actor import trial_action_weights, trial_spans

    trial = np.array([0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(trial_action_weights(trial, [False, True, True]), [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(trial_action_weights(trial, [True, False]), [1, 1, 1, 0, 0, 0])  # unfinished: 0
    assert trial_spans(trial) == [(0, 0, 3), (1, 3, 5), (2, 5, 6)]


def test_actor_writes_multi_trial_episodes_with_trial_success(tmp_path):
    """A transformer actor in the 2-trial env: results carry each trial's success, and replay
    holds whole episodes whose per-action weights are those successes."""
    import jax

    from ada_curriculum import replay as replay_lib
    from ada_curriculum.agent.actor import Actor
    from ada_curriculum.agent.task_source import TaskSource
    from ada_curriculum.agent.variable_source import VariableSource
    from ada_curriculum.policies import make_policy, normalizer
    from ada_curriculum.policies.obs import ACTION_DIM, OBS_DIM

    policy = make_policy("transformer", TRANSFORMER)
    variables = policy.init(jax.random.PRNGKey(0), normalizer.identity(OBS_DIM, ACTION_DIM))
    source = VariableSource()
    source.publish(variables, 3, policy)
    limit = 6
    server = replay_lib.ReplayServer(replay_lib.ReplayConfig(min_size_to_sample=1), OBS_DIM, ACTION_DIM, 9,
                                     2 * limit, layout="sequence", chunk=policy.n_action_steps)
    try:
        client = replay_lib.ReplayClient(server.address, window=2 * limit, n_obs_steps=1)
        actor = Actor(0, policy, client, source, TaskSource("nominal"), env_name="banana-place-multi",
                      num_envs=2, env_kwargs={"trials": 2, "time_limit": limit})
        out = actor.run(2 * limit)
        actor.close()
        assert out["episodes"] == 2
        for r in out["results"]:
            assert len(r["trial_successes"]) == 2 and r["steps"] == 2 * limit  # a random policy never succeeds
        assert client.info()["online"]["size"] == 2  # one whole-episode window each
        batch = client.sample("online", 4)
    finally:
        server.stop()
    assert batch["mask"].all() and (batch["version"] == 3).all()
    np.testing.assert_array_equal(batch["trial_index"][0], [0] * limit + [1] * limit)
    # A chunk planned in trial 0 stops at the trial boundary.
    assert not batch["action_mask"][0, limit - 1, 1:].any() and batch["action_mask"][0, limit - 1, 0]
    want = np.array([out["results"][0]["trial_successes"][t] for t in batch["trial_index"][0]], np.float32)
    np.testing.assert_array_equal(batch["action_weight"][0].max(axis=1), want)


def test_transformer_train_with_trials_learns_evaluates_per_trial_and_resumes(multi_demos, pretrained, tmp_path):
    from ada_curriculum.checkpointing import Checkpointer, CheckpointError
    from ada_curriculum.metrics_store import MetricsReader

    run = tmp_path / "run"
    summary = train(tiny_transformer(run, multi_demos, pretrained, eval_every=8, eval_episodes=2))
    assert summary["stopped_by"] == "max_updates" and summary["version"] >= 8
    assert summary["trials"] == 2 and len(summary["recent_success_per_trial"]) == 2
    online = summary["replay"]["online"]
    assert online["size"] > 0 and online["num_samples"] > 0  # actors' sequence windows reached the learner
    assert summary["replay"]["demo"]["size"] == summary["demo_items"] > 0
    rows = [r for r in rows_all(run) if r.get("kind") != "eval"]
    assert rows[-1]["updates"] == summary["updates"] and np.isfinite(rows[-1]["loss"])
    assert "online_weighted_entry_fraction" in rows[-1] and rows[-1]["demo_fraction"] == pytest.approx(0.5)

    # Held-out evaluation in the 2-trial env, success per trial index, in summary.json and the store.
    assert summary["eval"]["episodes"] == 2 and len(summary["eval"]["success_per_trial"]) == 2
    assert json.loads((run / "summary.json").read_text())["eval"]["success_per_trial"] == \
        summary["eval"]["success_per_trial"]
    evals = MetricsReader(run).evaluations()
    assert evals and all(len(e["success_per_trial"]) == 2 for e in evals)

    ckpt = Checkpointer(run / "checkpoints")
    meta = ckpt.read_meta()
    ckpt.close()
    assert meta["config"]["policy"] == "transformer" and meta["config"]["trials"] == 2
    assert meta["replay_layout"] == {"layout": "sequence", "window": 24}  # 2 trials x 12 steps

    resumed = train(tiny_transformer(run, multi_demos, pretrained, max_updates=12))
    assert resumed["updates"] >= 12 and resumed["env_steps"] > summary["env_steps"]
    assert resumed["replay"]["demo"]["size"] == summary["replay"]["demo"]["size"]  # restored, not reloaded
    from ada_curriculum.pretrain import load_policy

    policy, _, _, step = load_policy(run)  # what `eval --checkpoint RUN` and `--init RUN` load
    assert policy.kind == "transformer" and policy.config.preset == "tiny" and step == resumed["updates"]

    # Incompatible configs are refused with one line naming the field, before anything is written.
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    for change, field in (({"trials": 3}, "trials"), ({"transformer": {**TRANSFORMER, "preset": "small"}},
                                                      "transformer.preset"),
                          ({"time_limit": 20}, "sequence_length"), ({"policy": "diffusion", "init": None}, "policy")):
        with pytest.raises(CheckpointError, match=f"^{field}: the checkpoint"):
            train(tiny_transformer(run, multi_demos, **{"init": pretrained, "max_updates": 16, **change}))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_diffusion_with_trials_writes_each_trial_and_evaluates_per_trial(demos, tmp_path):
    from test_train import tiny

    run = tmp_path / "run"
    summary = train(tiny(run, demos, distributed=False, trials=2, time_limit=6, max_updates=4,
                         eval_every=4, eval_episodes=1))
    assert summary["trials"] == 2 and len(summary["eval"]["success_per_trial"]) == 2
    # One diffusion window per step: each trial was written as an episode of its own.
    assert summary["replay"]["online"]["num_inserts"] % 6 == 0 and summary["replay"]["online"]["num_samples"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--trials", "0"], "error: trials: expected a positive int, got '0'"),
    (["--policy", "transformer", "--sequence-length", "600"], "error: sequence_length: 600 exceeds transformer.max_len"),
    (["--sequence-length", "20"], "error: sequence_length: only applies to --policy transformer"),
    (["--policy", "transformer", "--acting-inference-steps", "2"], "error: acting_inference_steps: DDIM steps"),
])
def test_bad_trial_options_are_one_line_errors(tmp_path, capsys, argv, message):
    from conftest import train_cli_error

    assert train_cli_error(tmp_path, capsys, argv).startswith(message)


def test_init_of_another_policy_kind_is_refused(demos, pretrained, tmp_path):
    from ada_curriculum.checkpointing import CheckpointError

    with pytest.raises(CheckpointError, match="^init: .* holds a transformer policy; this run trains a diffusion"):
        from test_train import tiny

        train(tiny(tmp_path / "run", demos, distributed=False, init=pretrained))


def test_transformer_trials_on_local_ray(multi_demos, pretrained, tmp_path):
    ray = pytest.importorskip("ray")
    run = tmp_path / "run"
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        summary = train(tiny_transformer(run, multi_demos, pretrained, distributed=True, max_updates=8))
    finally:
        ray.shutdown()
    assert summary["stopped_by"] == "max_updates" and summary["version"] >= 8
    assert summary["replay"]["online"]["size"] > 0 and summary["episodes"] > 0
