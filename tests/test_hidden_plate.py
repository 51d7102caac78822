"""The hidden-plate task (issue 5's test of learning across trials): two look-alike plates, one
rewarded per episode, the outcome of each trial held in the next trial's observations, and
policies that see it through a "+reward" observation frame.

Real MuJoCo and the real scripted demonstrator; tiny transformers through the real CLI.
"""

import dataclasses
import json
import re

import jax
import numpy as np
import pytest

import envs
from ada_curriculum.cli import main
from ada_curriculum.data import windows as windows_lib
from ada_curriculum.episode_store import EpisodeRecorder, EpisodeStore
from ada_curriculum.policies import normalizer
from ada_curriculum.policies.obs import ACTION_DIM, OBS_DIM, flatten_obs, obs_dim, with_trial_reward, workspace_bounds
from ada_curriculum.policies.runner import PolicyRunner
from envs.banana_place import HIDDEN_PLATE_OFFSET
from envs.task_space import NOMINAL, TaskError

K = 3


def play(env, demo, seed):
    """One episode: (per-trial (success, wrong_plate), the recorded Episode, rewarded plate)."""
    ts = env.reset(seed=seed)
    demo.reset()
    recorder = EpisodeRecorder()
    recorder.start(ts)
    trials = []
    while not ts.last():
        action = demo.act(ts.observation)
        ts = env.step(action)
        recorder.step(action, ts)
        if ts.info.get("trial_ended") or ts.last():
            trials.append((bool(ts.info["success"]), bool(ts.info["wrong_plate"])))
    episode = recorder.finish(env.task.to_dict(), env.episode_seed, bool(ts.info["success"]), env.trials)
    return trials, episode, env.rewarded_plate


@pytest.fixture(scope="module")
def played():
    env = envs.make("banana-place-hidden", tasks="nominal", seed=0, time_limit=80)
    demo = envs.ScriptedDemonstrator(seed=0, plate_offsets=env.plate_offsets)
    return [play(env, demo, seed) for seed in range(8)], env


def test_one_plate_pays_and_the_outcome_reaches_the_next_trial(played):
    episodes, env = played
    assert env.trials == K and env.plate_offsets == ((-HIDDEN_PLATE_OFFSET, 0.0), (HIDDEN_PLATE_OFFSET, 0.0))
    assert {plate for _, _, plate in episodes} == {0, 1}  # drawn per episode
    for trials, episode, plate in episodes:
        assert len(trials) == K
        # The demonstrator tries plate 0 first: it pays exactly when plate 0 is the rewarded one,
        # and a placement on the other plate ends the trial unpaid.
        assert trials[0] == ((True, False) if plate == 0 else (False, True))
        assert all(success for success, _ in trials[1:])  # lose-shift, win-stay
        # Every observation of trial k > 0 holds what trial k-1 earned; trial 0's hold 0.
        index, held = episode.observations["trial_index"], episode.observations["trial_reward"]
        earned = [float(s) for s, _ in trials]
        np.testing.assert_array_equal(held, np.where(index > 0, np.take(earned, np.maximum(index - 1, 0)), 0.0))
        # A store that predates the entry gets the same values from its rewards.
        stored = {k: v for k, v in episode.observations.items() if k != "trial_reward"}
        np.testing.assert_array_equal(with_trial_reward(stored, episode.rewards)["trial_reward"], held)


def test_a_placement_on_the_wrong_plate_is_terminal():
    # In a one-trial episode the demonstrator tries plate 0, so when plate 1 pays it ends the
    # episode on the wrong plate: a terminal step (discount 0), not a truncation.
    env = envs.make("banana-place-hidden", tasks="nominal", seed=0, time_limit=80, trials=1)
    demo = envs.ScriptedDemonstrator(seed=0, plate_offsets=env.plate_offsets)
    ends = {}
    for seed in range(8):
        ts = env.reset(seed=seed)
        demo.reset()
        while not ts.last():
            ts = env.step(demo.act(ts.observation))
        ends[env.rewarded_plate] = (ts.reward, ts.discount, ts.info["success"], ts.info["wrong_plate"])
    assert ends[0] == (1.0, 0.0, True, False)
    assert ends[1] == (0.0, 0.0, False, True)


def test_nothing_in_the_observation_tells_the_plates_apart():
    """The same task and seed with either plate rewarded: the observations (until an outcome)
    are identical, and `target_pos` is the pair's centre."""
    env = envs.make("banana-place-hidden", tasks="nominal", seed=0, time_limit=80)
    starts = {}
    for seed in range(20):
        ts = env.reset(task=NOMINAL, seed=seed)
        starts.setdefault(env.rewarded_plate, (seed, ts.observation))
        if len(starts) == 2:
            break
    assert set(starts) == {0, 1}
    first = [obs for _, obs in starts.values()]
    np.testing.assert_allclose(first[0]["target_pos"][:2], [NOMINAL.target_x, NOMINAL.target_y])
    m = env.physics.model
    plates = sorted(m.body_pos[m.body(name).id, 0] for name in ("target", "other_plate"))
    np.testing.assert_allclose(plates, [NOMINAL.target_x - HIDDEN_PLATE_OFFSET, NOMINAL.target_x + HIDDEN_PLATE_OFFSET])
    for key in ("target_pos", "trial_reward", "trial_index"):
        np.testing.assert_array_equal(first[0][key], first[1][key])


def test_a_banana_that_starts_on_a_plate_is_refused_or_redrawn():
    env = envs.make("banana-place-hidden", tasks="full", seed=0)
    # 0.22 m from the target (fine for one plate), 0.10 m from the nearer hidden plate.
    on_plate = dataclasses.replace(NOMINAL, target_x=0.6, target_y=0.15, banana_x=0.38, banana_y=0.15)
    with pytest.raises(TaskError, match="^target_x/target_y: with hidden_plate"):
        env.reset(task=on_plate)
    envs.make("banana-place", tasks="full").reset(task=on_plate)  # fine with one plate
    for seed in range(30):  # drawn tasks are redrawn until both plates are clear of the banana
        env.reset(seed=seed)
        banana = np.array([env.task.banana_x, env.task.banana_y])
        assert min(np.hypot(*(banana - c)) for c in env.plate_centres()) >= 0.14 - 1e-9


def test_reward_frames_append_the_trial_reward(played):
    episodes, _ = played
    _, episode, _ = episodes[0]
    world = flatten_obs(episode.observations, "world")
    with_reward = flatten_obs(episode.observations, "world+reward")
    assert obs_dim("world+reward") == OBS_DIM + 1 == with_reward.shape[1]
    np.testing.assert_array_equal(with_reward[:, :-1], world)
    np.testing.assert_array_equal(with_reward[:, -1], episode.observations["trial_reward"])
    assert flatten_obs(episode.observations, "relative+reward").shape[1] == obs_dim("relative") + 1
    low, high = workspace_bounds("relative+reward")
    assert (low[-1], high[-1]) == (0.0, 1.0) and len(low) == obs_dim("relative") + 1
    without = {k: v for k, v in episode.observations.items() if k != "trial_reward"}
    with pytest.raises(ValueError, match="trial_reward"):
        flatten_obs(without, "world+reward")


def test_trial_memory_also_hides_the_last_outcome():
    """The context ablation starts a trial as an episode would: no earlier steps and no reward
    seen, so the policy cannot read the last outcome from the new trial's observations either."""
    from ada_curriculum.policies.transformer import TransformerConfig, TransformerPolicy

    policy = TransformerPolicy(TransformerConfig(preset="tiny", max_trials=K, obs_frame="world+reward"),
                               obs_dim=OBS_DIM + 1)
    variables = policy.init(jax.random.PRNGKey(0), normalizer.identity(OBS_DIM + 1, ACTION_DIM))
    obs = envs.make("banana-place-hidden", tasks="nominal", seed=0).reset().observation
    paid = dict(obs, trial_index=np.array(1, np.int32), trial_reward=np.array(1.0, np.float32))
    unpaid = dict(paid, trial_reward=np.array(0.0, np.float32))

    def plan(memory, new_trial):
        runner = PolicyRunner(policy, variables, 1, seed=0, memory=memory)
        runner.act([obs])
        runner.act([new_trial])
        return runner.observed(0)[0][-1], np.stack(list(runner._queue[0]))

    assert plan("episode", paid)[0] == 1.0 and plan("trial", paid)[0] == 0.0
    np.testing.assert_allclose(plan("trial", paid)[1], plan("trial", unpaid)[1], atol=1e-6)
    assert not np.allclose(plan("episode", paid)[1], plan("episode", unpaid)[1], atol=1e-4)


def test_collect_pretrain_and_evaluate_on_the_hidden_plate_task(tmp_path, capsys):
    demos, run = tmp_path / "demos", tmp_path / "tf"
    assert main(["collect", "--env", "banana-place-hidden", "--trials", str(K), "--time-limit", "80",
                 "--episodes", "2", "--seed", "0", "--out", str(demos)]) == 0
    store = EpisodeStore(demos)
    assert all("trial_reward" in ep.observations for ep in store)
    assert json.loads((demos / "summary.json").read_text())["success_per_trial"][1:] == [1.0, 1.0]
    arrays = windows_lib.load_store(demos, frame="world+reward")
    assert arrays[0].obs.shape[1] == OBS_DIM + 1
    assert main(["pretrain", "--policy", "transformer", "--demos", str(demos), "--out", str(run), "--updates", "4",
                 "--batch-size", "2", "--log-every", "2", "--optim.warmup-steps", "2", "--transformer.preset", "tiny",
                 "--transformer.max-trials", str(K), "--transformer.obs-frame", "world+reward",
                 "--no-only-successful", "--eval-episodes", "0"]) == 0
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(run), "--env", "banana-place-hidden", "--trials", str(K + 1),
                 "--tasks", "nominal", "--episodes", "2", "--seeds", "0", "--num-envs", "2", "--time-limit", "3",
                 "--out", str(out)]) == 0
    result = json.loads((out / "summary.json").read_text())
    assert result["env"] == "banana-place-hidden" and len(result["success_per_trial"]) == K + 1
    assert len(result["placed_per_trial"]) == len(result["right_plate_per_trial"]) == K + 1
    assert "right plate per placement" in capsys.readouterr().out
    # An unknown frame is refused by name.
    assert main(["pretrain", "--policy", "transformer", "--demos", str(demos), "--out", str(tmp_path / "bad"),
                 "--transformer.obs-frame", "world+rewards"]) == 2
    assert re.search(r"obs[-_]frame", capsys.readouterr().err)
    # Rotation would carry the banana to where no plate is: refused by name, before anything is written.
    bad = tmp_path / "rotated"
    assert main(["pretrain", "--policy", "transformer", "--demos", str(demos), "--out", str(bad),
                 "--transformer.obs-frame", "relative+reward", "--augment", "rotate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: augment: rotate does not fit 'banana-place-hidden'") and err.count("\n") == 1
    assert not bad.exists()
    assert main(["train", "--run", str(bad), "--policy", "transformer", "--env", "banana-place-hidden",
                 "--transformer.obs-frame", "relative+reward", "--augment", "rotate"]) == 2
    assert capsys.readouterr().err.startswith("error: augment: rotate does not fit") and not bad.exists()


def test_plate_choice_summary_separates_the_choice_from_the_skill():
    from ada_curriculum.evaluate import EpisodeResult, plate_choice_summary

    def result(success, wrong):
        return EpisodeResult(task=NOMINAL, seed=0, success=success[-1], steps=1, trial_successes=success,
                             unstable=False, trial_wrong_plate=wrong)

    results = [result([False, True], [True, False]), result([True, False], [False, False]),
               result([False, True], [False, False]), result([False, False], [True, True])]
    s = plate_choice_summary(results)
    assert s["placed_per_trial"] == [0.75, 0.75]  # trial 1: three placed (one right), one timed out
    assert s["right_plate_per_trial"] == pytest.approx([1 / 3, 2 / 3])
    assert plate_choice_summary([result([False], [False])])["right_plate_per_trial"] == [None]
    assert plate_choice_summary([dataclasses.replace(results[0], trial_wrong_plate=None)]) == {}


def test_transformer_rl_in_the_hidden_plate_env(tmp_path, capsys):
    """`train --env banana-place-hidden --trials K` with a '+reward' transformer, in process: the
    actors' windows carry the trial reward (replay sized for it), and held-out evaluation reports
    the plate choice per trial."""
    from ada_curriculum import config as config_lib
    from ada_curriculum.train import TrainConfig, train

    demos, bc = tmp_path / "demos", tmp_path / "bc"
    assert main(["collect", "--env", "banana-place-hidden", "--trials", "2", "--time-limit", "80",
                 "--episodes", "2", "--seed", "1", "--out", str(demos)]) == 0
    transformer = ["--transformer.preset", "tiny", "--transformer.max-trials", "2",
                   "--transformer.obs-frame", "world+reward"]
    assert main(["pretrain", "--policy", "transformer", "--demos", str(demos), "--out", str(bc), "--updates", "2",
                 "--batch-size", "2", "--log-every", "1", "--eval-episodes", "0", *transformer]) == 0
    cfg = config_lib.from_dict(TrainConfig, {
        "run": str(tmp_path / "run"), "demos": str(demos), "init": str(bc), "policy": "transformer",
        "env": "banana-place-hidden", "distributed": False, "trials": 2, "time_limit": 12, "num_actors": 1,
        "envs_per_actor": 2, "actor_steps_per_call": 12, "variable_update_period": 2, "batch_size": 4,
        "updates_per_call": 4, "publish_every": 2, "max_updates": 8, "max_minutes": 5.0, "checkpoint_every": 8,
        "stall_timeout": 60.0, "replay": {"min_size_to_sample": 2, "samples_per_insert": 64.0},
        "transformer": {"preset": "tiny", "max_trials": 2, "obs_frame": "world+reward"},
        "optim": {"warmup_steps": 2}, "dashboard": False, "embedding_every": 0, "eval_every": 8, "eval_episodes": 2})
    summary = train(cfg)
    assert summary["stopped_by"] == "max_updates" and summary["replay"]["online"]["size"] > 0
    assert summary["trials"] == 2 and len(summary["eval"]["right_plate_per_trial"]) == 2
    # A '+reward' run does not fine-tune from a run without the reward entry.
    assert main(["train", "--run", str(tmp_path / "bad"), "--init", str(bc), "--demos", str(demos), "--policy", "transformer",
                 "--env", "banana-place-hidden", "--trials", "2", "--no-distributed",
                 "--transformer.preset", "tiny", "--transformer.max-trials", "2"]) != 0
    assert "transformer.obs_frame: the --init run sees observations in the 'world+reward' frame" in \
        capsys.readouterr().err
