"""Meta-learning across trials (issue 5, seed 003): multi-trial data from a degraded diffusion
policy, transformer pretraining on multi-trial sequences, and trial-indexed evaluation.

Real MuJoCo envs, real Orbax checkpoints written by `pretrain`, tiny models, and everything
in-process, so the jitted samplers compiled by one test are reused by the next.
"""

import json

import jax
import numpy as np
import pytest

import envs
from ada_curriculum import evaluate
from ada_curriculum.cli import main
from ada_curriculum.data import windows as windows_lib
from ada_curriculum.episode_store import EpisodeStore, trial_results
from ada_curriculum.policies import make_policy, normalizer
from ada_curriculum.policies.obs import ACTION_DIM, OBS_DIM
from ada_curriculum.policies.runner import PolicyRunner, degradation_schedule, degraded_sampling
from ada_curriculum.pretrain import load_policy

K = 3
# With 55 steps per trial the scripted demonstrator (trials of ~45-65 steps) finishes some
# trials and times out in others: a store with successful and failed trials side by side.
DEMO_ARGS = ["collect", "--env", "banana-place-multi", "--trials", str(K), "--time-limit", "55",
             "--episodes", "3", "--seed", "0"]
TINY_OPTIM = ["--log-every", "100", "--checkpoint-every", "1000", "--optim.warmup-steps", "10"]
# A one-level U-Net: half the compile time of two levels, and enough to fit the demos roughly.
DIFFUSION = ["--diffusion.down-dims", "16", "--diffusion.horizon", "8", "--diffusion.n-action-steps", "4",
             "--diffusion.num-inference-steps", "4", "--diffusion.degraded-min-steps", "1"]


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    out = tmp_path_factory.mktemp("meta") / "demos"
    assert main([*DEMO_ARGS, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def diffusion_run(demos, tmp_path_factory):
    """A tiny diffusion policy trained briefly (enough for full-quality samples to agree)."""
    run = tmp_path_factory.mktemp("meta") / "diffusion"
    assert main(["pretrain", "--policy", "diffusion", "--demos", str(demos), "--out", str(run), "--updates", "300",
                 "--batch-size", "32", "--optim.learning-rate", "5e-3", "--optim.decay-steps", "300",
                 *TINY_OPTIM, *DIFFUSION]) == 0
    return run


def test_multi_trial_store_records_each_trial(demos):
    store = EpisodeStore(demos)
    summary = json.loads((demos / "summary.json").read_text())
    assert len(store) == 3 and summary["trials"] == K
    all_trials = []
    for entry, episode in zip(store.manifest["episodes"], store):
        trial = episode.observations["trial_index"]
        assert trial[0] == 0 and np.all(np.diff(trial) >= 0) and trial[-1] == K - 1
        success, steps = trial_results(trial, episode.rewards)
        assert entry["meta"]["trial_success"] == success and entry["meta"]["trial_steps"] == steps
        assert sum(steps) == episode.length and all(0 < s <= 55 for s in steps)
        assert entry["success"] == success[-1]
        all_trials.append(success)
    flat = [s for t in all_trials for s in t]
    assert any(flat) and not all(flat)  # the fixture's premise: both outcomes present
    assert summary["success_per_trial"] == pytest.approx(np.mean(all_trials, axis=0).tolist())
    assert summary["last_vs_first_trial"] == pytest.approx(
        summary["success_per_trial"][-1] - summary["success_per_trial"][0])


def test_trial_weights_and_windows_keep_failed_trials_as_context(demos):
    store = EpisodeStore(demos)
    episodes = windows_lib.load_store(demos, only_successful=True)  # failed_trial_weight 0
    assert len(episodes) == 3  # every episode has a successful trial; failed trials are not cut out
    for arrays, episode in zip(episodes, store):
        success = episode.meta["trial_success"]
        trials = episode.observations["trial_index"][:-1]
        np.testing.assert_array_equal(arrays.action_weight, np.asarray(success, np.float32)[trials])
        assert arrays.length == episode.length  # the whole episode, failed trials included
    soft = windows_lib.load_store(demos, only_successful=True, failed_trial_weight=0.25)
    assert set(np.concatenate([e.action_weight for e in soft]).tolist()) == {0.25, 1.0}
    assert all(e.action_weight is None for e in windows_lib.load_store(demos, only_successful=False))

    policy = make_policy("transformer", {"preset": "tiny", "n_action_steps": 4})
    sampler = windows_lib.windows_for(policy, episodes)
    assert sampler.max_len == max(e.length for e in episodes)  # whole episodes fit in the context
    b = sampler.sample(np.random.default_rng(0), 64)
    saw_late_window = False
    for i in range(64):
        m = int(b["mask"][i].sum())
        trial = b["trial_index"][i, :m]
        assert trial[0] == 0 and np.all(np.diff(trial) >= 0)  # the window starts at trial 1
        if trial[-1] == K - 1:
            saw_late_window = True
            assert {0, 1, 2} <= set(trial.tolist())  # a late step sees every earlier attempt
        for t in range(m):
            for c in range(4):
                # A chunk never reaches into the next trial (the env resets the scene there).
                if t + c < m and trial[min(t + c, m - 1)] != trial[t]:
                    assert not b["action_mask"][i, t, c]
        weight = b["action_weight"][i, :m]
        assert np.all(weight[~b["action_mask"][i, :m]] == 0)
    assert saw_late_window
    assert 0 < (b["action_weight"] > 0).sum() < b["action_mask"].sum()  # failed trials weigh 0

    # Whole-episode windows: every step of the drawn episode, each episode equally often.
    whole = windows_lib.windows_for(policy, episodes, whole_episodes=True)
    b = whole.sample(np.random.default_rng(1), 300)
    lengths = sorted(e.length for e in episodes)
    counts = np.unique(b["mask"].sum(1), return_counts=True)
    assert sorted(counts[0].tolist()) == sorted(set(lengths)) and counts[1].min() > 60
    with pytest.raises(ValueError, match="whole_episodes"):
        windows_lib.SequenceWindows(episodes, lengths[-1] - 1, 4, whole_episodes=True)


def test_transformer_loss_uses_action_weights_and_marks_late_trials():
    policy = make_policy("transformer", {"preset": "tiny", "n_action_steps": 2, "max_len": 16, "max_trials": 3})
    variables = policy.init(jax.random.PRNGKey(0), normalizer.identity(OBS_DIM, ACTION_DIM))
    rng = np.random.default_rng(0)
    B, T, k = 2, 8, 2
    batch = {"obs": rng.normal(size=(B, T, OBS_DIM)).astype(np.float32),
             "prev_action": rng.normal(size=(B, T, ACTION_DIM)).astype(np.float32),
             "trial_index": np.repeat(np.arange(4), 2)[None].repeat(B, 0).astype(np.int32),
             "mask": np.ones((B, T), bool), "action": rng.normal(size=(B, T, k, ACTION_DIM)).astype(np.float32),
             "action_mask": np.ones((B, T, k), bool)}
    batch["action_weight"] = (rng.random((B, T, k)) > 0.5).astype(np.float32)
    loss_fn = jax.jit(lambda b: policy.loss(variables, b, jax.random.PRNGKey(1))[0])
    loss = lambda b: float(loss_fn(b))  # noqa: E731
    base = loss(batch)
    zero = batch["action_weight"] == 0
    moved = dict(batch, action=np.where(zero[..., None], batch["action"] + 5.0, batch["action"]))
    assert loss(moved) == pytest.approx(base, rel=1e-5)  # zero-weight targets do not count
    moved = dict(batch, action=np.where(zero[..., None], batch["action"], batch["action"] + 5.0))
    assert loss(moved) > base + 1.0
    # Trials past max_trials share its last embedding but still get a trial-start marker.
    same_embedding = dict(batch, trial_index=np.minimum(batch["trial_index"], 2))
    outputs = jax.jit(lambda b: policy.action_outputs(variables, b))
    out, out_clipped = np.asarray(outputs(batch)), np.asarray(outputs(same_embedding))
    np.testing.assert_allclose(out[:, :6], out_clipped[:, :6], atol=1e-6)
    assert np.abs(out[:, 6:] - out_clipped[:, 6:]).max() > 1e-4


def test_degraded_collection_writes_multi_trial_store(diffusion_run, tmp_path, capsys):
    out = tmp_path / "meta-store"
    k = 2  # levels 1 and 0 (DDIM steps 1 and 4): the two samplers the next test reuses
    assert main(["collect", "--policy-run", str(diffusion_run), "--env", "banana-place-multi", "--trials", str(k),
                 "--time-limit", "8", "--episodes", "3", "--num-envs", "2", "--tasks", "full",
                 "--degradation-start", "1", "--degradation-end", "0", "--eta", "0.5", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    levels = [d["level"] for d in summary["degradation_per_trial"]]
    assert levels == [1.0, 0.0]
    assert [(d["num_inference_steps"], d["temperature"], d["eta"]) for d in summary["degradation_per_trial"]] == [
        (1, 2.5, 0.5), (4, 1.0, 0.5)]
    assert len(summary["success_per_trial"]) == k and "last_vs_first_trial" in summary
    store = EpisodeStore(out)
    assert len(store) == 3 and store.env_kwargs["trials"] == k
    plan = evaluate.episode_plan("full", 3, seed=0)  # what `eval --seeds 0` would face
    eval_tasks = {json.dumps(t.to_dict(), sort_keys=True) for t, _ in plan}
    for entry, episode in zip(store.manifest["episodes"], store):
        trial = episode.observations["trial_index"]
        assert trial[0] == 0 and np.all(np.diff(trial) >= 0) and trial[-1] == k - 1
        assert entry["trials"] == k and entry["meta"]["degradation"] == levels
        success, trial_steps = trial_results(trial, episode.rewards)
        assert entry["meta"]["trial_success"] == success and entry["meta"]["trial_steps"] == trial_steps
        assert trial_steps == [8] * k  # the time limit; nothing is placed in 8 steps
        assert json.dumps(entry["task"], sort_keys=True) not in eval_tasks  # held-out from eval
        # Each trial keeps its own task: the same one, reset.
        assert episode.observations["target_pos"][0] == pytest.approx(episode.observations["target_pos"][-1])

    # Bad combinations are one-line errors before anything is written.
    capsys.readouterr()
    assert main(["collect", "--degradation-start", "0.5", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: degradation_start: only applies with --policy-run")
    assert main(["collect", "--eta", "1", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: eta: only applies with --policy-run")
    assert main(["collect", "--policy-run", str(diffusion_run), "--play", "--out", str(tmp_path / "y")]) == 2
    assert capsys.readouterr().err.startswith("error: play:")
    assert main(["collect", "--policy-run", str(diffusion_run), "--degradation-end", "1.5",
                 "--out", str(tmp_path / "z")]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_schedule_degrades_first_trial_more_than_last(diffusion_run):
    policy, variables, _, _ = load_policy(diffusion_run)
    levels = degradation_schedule(1.0, 0.0, K)
    runner = PolicyRunner(policy, variables, 2, seed=0, trial_sampling=degraded_sampling(policy, levels))
    assert runner.sampling_for_trial(0) == {"num_inference_steps": 1, "temperature": 2.5}
    assert runner.sampling_for_trial(K - 1) == runner.sampling_for_trial(K + 3) == {
        "num_inference_steps": 4, "temperature": 1.0}

    obs = envs.make("banana-place-multi", tasks="nominal", seed=0).reset().observation
    lo = np.asarray(variables["normalizer"]["action"]["low"])
    hi = np.asarray(variables["normalizer"]["action"]["high"])
    chunks = {0: [], K - 1: []}
    for _ in range(16):  # identical observations; only the trial index differs between the rows
        runner.reset()
        first = runner.act([dict(obs, trial_index=np.array(t, np.int32)) for t in chunks])
        for j, t in enumerate(chunks):
            chunk = np.concatenate([first[j][None], np.stack(list(runner._queue[j]))])
            chunks[t].append((chunk - lo) / (hi - lo) * 2 - 1)  # normalised action units
    first_trial, last_trial = np.stack(chunks[0]), np.stack(chunks[K - 1])
    reference = last_trial[:8].mean(0)  # full quality, from draws not scored below
    dev_first = np.abs(first_trial[8:] - reference).mean()
    dev_last = np.abs(last_trial[8:] - reference).mean()
    assert dev_first > 1.3 * dev_last, (dev_first, dev_last)

    # The queued rest of a chunk is dropped when a new trial starts: the env replans at once.
    runner.reset()
    row = dict(obs, trial_index=np.array(0, np.int32))
    runner.act([row, row])
    runner.act([row, row])
    assert len(runner._queue[0]) == policy.n_action_steps - 2
    runner.act([dict(obs, trial_index=np.array(K - 1, np.int32)), row])
    assert len(runner._queue[0]) == policy.n_action_steps - 1  # replanned in the new trial
    assert len(runner._queue[1]) == policy.n_action_steps - 3  # still trial 1: kept its plan


def test_trial_memory_keeps_the_trial_index_but_drops_earlier_trials():
    """memory="trial" (the context ablation): at a new trial, the policy sees that trial's index
    and nothing of the earlier attempt, exactly as an episode that starts in that trial; with
    memory="episode" the earlier trial stays in the context and changes the plan."""
    from ada_curriculum.policies.transformer import TransformerConfig, TransformerPolicy

    policy = TransformerPolicy(TransformerConfig(preset="tiny", max_trials=K))
    variables = policy.init(jax.random.PRNGKey(0), normalizer.identity(OBS_DIM, ACTION_DIM))
    env = envs.make("banana-place-multi", tasks="nominal", seed=0, trials=K)
    ts = env.reset()
    first_trial = []
    for _ in range(policy.n_action_steps + 3):  # replans once, mid-trial
        first_trial.append(ts.observation)
        ts = env.step(np.zeros(ACTION_DIM))
    new_trial = dict(ts.observation, trial_index=np.array(1, np.int32))

    def plan(memory, observations):
        runner = PolicyRunner(policy, variables, 1, seed=0, memory=memory)
        for obs in observations:
            action = runner.act([obs])[0]
        return np.concatenate([action[None], np.stack(list(runner._queue[0]))])

    fresh = plan("episode", [new_trial])  # an episode that starts in trial 1
    np.testing.assert_allclose(plan("trial", [*first_trial, new_trial]), fresh, atol=1e-6)
    assert not np.allclose(plan("episode", [*first_trial, new_trial]), fresh, atol=1e-4)
    with pytest.raises(ValueError, match="^memory"):
        PolicyRunner(policy, variables, 1, memory="none")


def test_transformer_pretrains_on_multi_trial_store_and_evaluates_per_trial(demos, tmp_path, capsys):
    run = tmp_path / "transformer"
    assert main(["pretrain", "--policy", "transformer", "--demos", str(demos), "--out", str(run), "--updates", "4",
                 "--batch-size", "4", "--log-every", "2", "--optim.warmup-steps", "2", "--transformer.preset", "tiny",
                 "--transformer.max-trials", str(K)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["demo_trials"] == K and summary["demo_episodes"] == 3
    assert summary["window"] == summary["demo_max_episode_steps"]  # every trial in context
    assert summary["sequence_windows"] == "episodes"  # auto: a multi-trial store that fits
    assert 0 < summary["demo_weighted_action_fraction"] < 1  # failed trials: context, not targets
    assert np.isfinite(summary["final_loss"])
    assert "warning" not in capsys.readouterr().err

    # ADA-style evaluation, one trial beyond the trained k.
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(run), "--env", "banana-place-multi", "--trials", str(K + 1),
                 "--tasks", "full", "--episodes", "2", "--seeds", "0", "--num-envs", "2", "--time-limit", "3",
                 "--out", str(out)]) == 0
    assert "success per trial:" in capsys.readouterr().out
    result = json.loads((out / "summary.json").read_text())
    assert result["policy"] == "transformer" and result["env"] == "banana-place-multi"
    per_trial = result["success_per_trial"]
    assert len(per_trial) == K + 1 and len(result["success_per_trial_ci95"]) == K + 1
    assert result["last_vs_first_trial"] == pytest.approx(per_trial[-1] - per_trial[0])
    assert result["last_vs_first_trial_counts"]["episodes"] == 2 and result["memory"] == "episode"
    # The context ablation runs through the same command and says so in its summary.
    assert main(["eval", "--checkpoint", str(run), "--env", "banana-place-multi", "--trials", str(K),
                 "--tasks", "full", "--episodes", "2", "--seeds", "0", "--num-envs", "2", "--time-limit", "3",
                 "--memory", "trial"]) == 0
    ablation = json.loads((run / f"eval-full-banana-place-multi-k{K}-trial-memory" / "summary.json").read_text())
    assert ablation["memory"] == "trial" and len(ablation["success_per_trial"]) == K

    # Degraded collection needs a diffusion policy.
    assert main(["collect", "--policy-run", str(run), "--out", str(tmp_path / "m")]) == 2
    assert "needs a diffusion policy" in capsys.readouterr().err


def test_per_trial_summary_reads_off_last_vs_first():
    improving = [[False, False, True]] * 6 + [[True, True, True]] * 3 + [[True, False, False]]
    s = evaluate.per_trial_summary(improving)
    assert s["success_per_trial"] == pytest.approx([0.4, 0.3, 0.9])
    assert s["last_vs_first_trial"] == pytest.approx(0.5)
    assert s["last_vs_first_trial_counts"] == {"episodes": 10, "improved": 6, "worsened": 1}
    lo, hi = s["last_vs_first_trial_ci95"]
    assert 0 < lo < 0.5 < hi <= 1
    flat = evaluate.per_trial_summary([[True, True]] * 5)
    lo, hi = flat["last_vs_first_trial_ci95"]
    assert flat["last_vs_first_trial"] == 0 and lo < 0 < hi  # no discordant pair is no certainty
    single = evaluate.per_trial_summary([[True], [False]])
    assert single["success_per_trial"] == [0.5] and single["last_vs_first_trial"] is None
    assert degradation_schedule(1.0, 0.0, 5) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert degradation_schedule(0.8, 0.2, 1) == [0.8]
    with pytest.raises(ValueError, match="start"):
        degradation_schedule(1.5, 0.0, 3)
