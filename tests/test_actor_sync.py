"""Aligned chunk boundaries: envs whose episodes or trials end at different times share one
policy call per chunk (`PolicyRunner.act_aligned`, `Actor(align_chunks=True)`); a held env is
not stepped, and what the actor records is still each episode's real obs/action sequence.

Real MuJoCo envs, real (tiny, untrained) policies, a real Reverb server. Episodes are
desynchronised by giving the envs different time limits.
"""

import jax
import numpy as np
import pytest

import envs
from ada_curriculum import replay as replay_lib
from ada_curriculum.agent.actor import Actor
from ada_curriculum.agent.task_source import TaskSource
from ada_curriculum.agent.variable_source import VariableSource
from ada_curriculum.policies import make_policy, normalizer
from ada_curriculum.policies.obs import ACTION_DIM, OBS_DIM, flatten_obs
from ada_curriculum.policies.runner import PolicyRunner

CHUNK = 8  # n_action_steps of both tiny policies


def tiny_policy(kind: str):
    if kind == "diffusion":
        policy = make_policy("diffusion", down_dims=(16, 32), num_inference_steps=2, n_action_steps=CHUNK)
    else:
        policy = make_policy("transformer", preset="tiny", max_len=64, n_action_steps=CHUNK)
    return policy, policy.init(jax.random.PRNGKey(0), normalizer.identity(OBS_DIM, ACTION_DIM))


def drive(runner, pool, iterations: int, aligned: bool):
    """The actor's loop over `pool` (restarting finished episodes): per iteration, which envs
    stepped, and each env's trial index at the steps it took."""
    timesteps = [env.reset(seed=j) for j, env in enumerate(pool)]
    stepped_log, trials = [], [[] for _ in pool]
    for _ in range(iterations):
        obs = [ts.observation for ts in timesteps]
        if aligned:
            actions, stepped = runner.act_aligned(obs)
        else:
            actions, stepped = runner.act(obs), np.ones(len(pool), bool)
        stepped_log.append(stepped.copy())
        for j, env in enumerate(pool):
            if stepped[j]:
                trials[j].append(int(timesteps[j].observation["trial_index"]))
                timesteps[j] = env.step(actions[j])
                if timesteps[j].last():
                    timesteps[j] = env.reset(seed=j)
                    runner.reset(j)
    return np.array(stepped_log), trials


def held_pattern(limit: int, iterations: int) -> np.ndarray:
    """Expected `stepped` column of an env with episodes of `limit` steps when every replan is
    common: it steps until its episode ends, then waits for the next chunk boundary."""
    out, left = [], limit
    for it in range(iterations):
        if it % CHUNK == 0 and left == 0:
            left = limit  # its new episode starts at the common replan
        take = left > 0
        out.append(take)
        left -= int(take)
    return np.array(out)


@pytest.mark.parametrize("kind", ["diffusion", "transformer"])
def test_aligned_runner_makes_one_call_per_chunk_for_desynchronised_envs(kind):
    policy, variables = tiny_policy(kind)
    limits, iterations = (5, 1000, 11), 40
    pool = [envs.make("banana-place", tasks="nominal", seed=j, time_limit=t) for j, t in enumerate(limits)]

    runner = PolicyRunner(policy, variables, len(pool), seed=0)
    stepped, _ = drive(runner, pool, iterations, aligned=True)
    assert runner.policy_calls == iterations // CHUNK  # one full-batch call per chunk, all envs served
    for j, limit in enumerate(limits):  # an env that started mid-chunk is held, not stepped
        np.testing.assert_array_equal(stepped[:, j], held_pattern(limit, iterations), err_msg=f"env {j}")
    # A held env's context does not grow while it waits: one entry per step of its episode (plus
    # the observation it waits on). Env 1 never finished an episode.
    if kind == "transformer":
        assert len(runner._obs[1]) == iterations
    for j, env in enumerate(pool):
        assert len(runner._trial[j]) == min(env._t + int(runner._held[j]), runner._history)

    # The same envs replanned one by one: a call whenever any env's queue runs dry.
    unaligned = PolicyRunner(policy, variables, len(pool), seed=0)
    stepped, _ = drive(unaligned, pool, iterations, aligned=False)
    assert stepped.all()
    replans = set()
    for limit in limits:
        t = 0
        while t < iterations:
            replans.update(range(t, min(t + limit, iterations), CHUNK))
            t += limit
    assert unaligned.policy_calls == len(replans) > 2 * runner.policy_calls


def test_aligned_runner_holds_an_env_at_a_new_trial_and_keeps_per_trial_sampling():
    policy, variables = tiny_policy("diffusion")
    trial_limit, iterations = 5, 24
    pool = [envs.make("banana-place-multi", tasks="nominal", seed=0, time_limit=trial_limit),
            envs.make("banana-place-multi", tasks="nominal", seed=1, time_limit=1000)]
    sampling = [{"num_inference_steps": 1}, {"num_inference_steps": 2}]  # trial 0, trials 1+
    runner = PolicyRunner(policy, variables, 2, seed=0, trial_sampling=sampling)
    stepped, trials = drive(runner, pool, iterations, aligned=True)

    # Env 0's trials end after 5 steps; it waits for env 1's chunk, then replans in its new trial.
    np.testing.assert_array_equal(stepped[:, 0], held_pattern(trial_limit, iterations))
    assert stepped[:, 1].all()
    assert trials[0] == [0] * 5 + [1] * 5 + [2] * 5  # then the episode (3 trials) ended
    assert trials[1] == [0] * iterations
    # Boundaries at steps 0, 8, 16; from 8 on the envs sit in trials with different sampling,
    # so those replans take one call per setting: 1 + 2 + 2.
    assert runner.policy_calls == 5


def make_actor(server, policy, variables, limits, env_name="banana-place", align=True):
    source = VariableSource()
    source.publish(variables, 1)
    client = replay_lib.ReplayClient(server.address, window=policy.config.horizon, n_obs_steps=policy.n_obs_steps)
    actor = Actor(0, policy, client, source, TaskSource("nominal", seed=0), env_name=env_name,
                  num_envs=len(limits), seed=0, env_kwargs={"time_limit": max(limits)}, align_chunks=align)
    for env, limit in zip(actor.envs, limits):
        env.time_limit = limit  # desynchronised episodes (read at every step)
    return actor


@pytest.fixture
def server(tmp_path):
    policy, _ = tiny_policy("diffusion")
    s = replay_lib.ReplayServer(replay_lib.ReplayConfig(min_size_to_sample=1), obs_dim=OBS_DIM,
                                action_dim=ACTION_DIM, task_dim=9, window=policy.config.horizon)
    yield s
    s.stop()


def replayed_obs(env, actions) -> np.ndarray:
    """The observations an episode with these actions sees, re-simulated from its task and seed."""
    fresh = envs.make("banana-place", tasks="full", seed=0, time_limit=env.time_limit)
    ts = fresh.reset(task=env.task, seed=env.episode_seed)
    out = []
    for a in actions:
        out.append(flatten_obs(ts.observation))
        ts = fresh.step(a)
    fresh.close()
    return np.stack(out)


def test_actor_with_desynchronised_envs_steps_its_budget_with_aligned_calls(server):
    policy, variables = tiny_policy("diffusion")
    actor = make_actor(server, policy, variables, limits=(5, 1000))
    try:
        out = actor.run(24)
        # 48 env steps in 29 lockstep iterations: env 0 steps 5 of every 8 (then waits, unstepped),
        # env 1 all of them; the last iteration steps only env 0 to land on the budget.
        assert out["env_steps"] == 48
        assert actor.runner.policy_calls == 4  # at iterations 0, 8, 16, 24
        assert out["episodes"] == 4 and [r["steps"] for r in out["results"]] == [5] * 4
        assert server.info()["online"]["num_inserts"] == 20  # one window per recorded step

        # Env 1 was stepped exactly as often as the actor recorded: held means not stepped.
        ep = actor._episodes[1]
        assert len(ep["obs"]) == len(ep["action"]) == len(ep["trial"]) == actor.envs[1]._t == 28
        # Row t is the observation action t was taken on.
        np.testing.assert_allclose(np.stack(ep["obs"]), replayed_obs(actor.envs[1], ep["action"]), atol=1e-6)

        # The next call resumes mid-chunk: env 1 finishes its chunk while env 0 waits, then every
        # replan is common again.
        out = actor.run(24)
        assert out["env_steps"] == 48 and actor.runner.policy_calls == 8
        ep = actor._episodes[0]
        assert len(ep["action"]) == actor.envs[0]._t
        np.testing.assert_allclose(np.stack(ep["obs"]), replayed_obs(actor.envs[0], ep["action"]), atol=1e-6)
    finally:
        actor.close()


def test_unaligned_actor_replans_each_env_on_its_own(server):
    policy, variables = tiny_policy("diffusion")
    actor = make_actor(server, policy, variables, limits=(5, 1000), align=False)
    try:
        out = actor.run(24)
        assert out["env_steps"] == 48 and out["episodes"] == 4
        # Env 0 replans at its episode starts (0, 5, 10, 15, 20), env 1 at 0, 8, 16.
        assert actor.runner.policy_calls == len({0, 5, 10, 15, 20} | {0, 8, 16})
        ep = actor._episodes[1]
        assert len(ep["action"]) == actor.envs[1]._t == 24
    finally:
        actor.close()


def test_back_to_back_episodes_keep_their_own_per_episode_fields(server):
    """The writer stores an episode's constants (weight, success, version, task) once and every
    window references them: the next episode's windows must reference its own."""
    policy, _ = tiny_policy("diffusion")
    client = replay_lib.ReplayClient(server.address, window=policy.config.horizon, n_obs_steps=policy.n_obs_steps)
    rs = np.random.RandomState(0)
    episodes = []
    for version, T in enumerate((7, 12, 3)):
        ep = {"obs": rs.randn(T + 1, OBS_DIM).astype(np.float32), "action": rs.randn(T, ACTION_DIM).astype(np.float32),
              "weight": float(version % 2), "success": bool(version % 2), "version": version,
              "task": rs.randn(9).astype(np.float32), "trial_index": np.arange(T, dtype=np.int32) // 4}
        assert client.add_episode("online", **ep) == T
        episodes.append(ep)
    assert server.info()["online"]["size"] == 7 + 12 + 3
    batch = client.sample("online", 300)
    seen = set()
    for i in range(300):
        ep = episodes[int(batch["version"][i])]
        assert batch["weight"][i] == ep["weight"] and batch["success"][i] == float(ep["success"])
        np.testing.assert_array_equal(batch["task"][i], ep["task"])
        # The window's real step (its last observation slot) fixes its trial index.
        t = int(np.flatnonzero((ep["obs"][:-1] == batch["obs"][i, policy.n_obs_steps - 1]).all(1))[0])
        assert batch["trial"][i] == ep["trial_index"][t]
        seen.add((int(batch["version"][i]), t))
    assert len(seen) > 15  # windows from every episode, most steps
    client.close()
