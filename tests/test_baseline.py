"""SuccessBaseline: a kernel estimate of P(success | task) and the advantage weights it gives."""

import dataclasses

import numpy as np
import pytest

import envs
from ada_curriculum.agent.baseline import SuccessBaseline


def _task(**kw):
    return dataclasses.replace(envs.NOMINAL, **kw)


def test_estimate_is_half_before_any_episode():
    assert SuccessBaseline().estimate(envs.NOMINAL) == 0.5


def test_estimate_follows_local_success_not_the_global_mean():
    b = SuccessBaseline(prior=1.0)
    easy, hard = _task(banana_yaw=0.0), _task(banana_yaw=2.0)
    for _ in range(20):
        b.record(easy, True)
        b.record(hard, False)
    assert b.estimate(easy) > 0.9
    assert b.estimate(hard) < 0.1
    # Far from every recorded task, the estimate falls back to the recent mean.
    assert b.estimate(_task(banana_yaw=-2.5)) == pytest.approx(0.5, abs=0.01)


def test_estimate_matches_the_formula():
    b = SuccessBaseline(dims=("banana_yaw", "banana_x"), bandwidth=0.5, prior=2.0)
    yaws, wins = [0.0, 0.3, -0.4], [1, 0, 1]
    for y, w in zip(yaws, wins):
        b.record(_task(banana_yaw=y), bool(w))
    q = 0.2
    # Distances in units of the recorded spread; banana_x never varied, so it adds nothing.
    z = (np.array(yaws) - q) / np.std(yaws)
    k = np.exp(-0.5 * (z / 0.5) ** 2)
    want = (k @ np.array(wins) + 2.0 * np.mean(wins)) / (k.sum() + 2.0)
    assert b.estimate(_task(banana_yaw=q, banana_x=0.6)) == pytest.approx(want, rel=1e-9)


def test_weight_is_the_clipped_advantage_and_records_the_result():
    b = SuccessBaseline(prior=1.0)
    task = envs.NOMINAL
    assert b.weight(task, False) == 0.0  # a failure never gets a negative weight
    # After one failure here (and a recent mean of 0), a success is worth the whole 1.
    assert b.weight(task, True) == pytest.approx(1.0)
    for _ in range(30):
        b.record(task, True)
    # A task the policy now solves every time: its successes carry almost no weight.
    assert b.weight(task, True) < 0.1


def test_window_forgets_old_episodes():
    b = SuccessBaseline(window=10, prior=0.0)
    for _ in range(10):
        b.record(envs.NOMINAL, False)
    for _ in range(10):
        b.record(envs.NOMINAL, True)
    assert b.estimate(envs.NOMINAL) == pytest.approx(1.0)


def test_bad_dims_name_the_field():
    with pytest.raises(ValueError, match="dims: 'banana_z'"):
        SuccessBaseline(dims=("banana_z",))


def test_actor_writes_advantage_weights_to_replay(make_actor):
    """`Actor(weighting="advantage")` writes max(success - baseline, 0) as each online episode's
    weight (real MuJoCo env, real Reverb): the first success on a task is worth 1 - 0.5, the next
    one on the same task ~0 (the baseline has seen it solved), a failure 0."""
    import jax

    from ada_curriculum.policies import make_policy, normalizer
    from ada_curriculum.policies.obs import ACTION_DIM, OBS_DIM

    policy = make_policy("diffusion", down_dims=(16, 32), num_inference_steps=2, n_action_steps=8)
    variables = policy.init(jax.random.PRNGKey(0), normalizer.identity(OBS_DIM, ACTION_DIM))
    actor, client, _ = make_actor(policy, variables, env_kwargs={"time_limit": 5}, weighting="advantage")
    weights = []
    for success in (True, True, False):
        actor.run(3)  # a few steps of a fresh episode (the 5-step limit is not reached)
        ts = actor._timesteps[0]
        ts.info["success"] = success  # the outcome under test; the episode's data is real
        result = actor._finish(0, ts)
        actor._start(0)
        assert result["success"] is success
        weights.append(actor._baseline.estimate(actor.envs[0].task))
    batch = client.sample("online", 200)
    written = sorted({round(float(w), 6) for w in batch["weight"]})
    assert written == [0.0, 0.5]
    assert weights[0] == pytest.approx(1.0)  # after one success, the baseline says "solved"

    with pytest.raises(ValueError, match="weighting"):
        make_actor(policy, variables, weighting="reward")


def test_train_rejects_advantage_weighting_for_the_transformer(tmp_path):
    from ada_curriculum.config import ConfigError
    from ada_curriculum.train import TrainConfig

    with pytest.raises(ConfigError, match="^online_weighting: "):
        TrainConfig(run=str(tmp_path / "r"), policy="transformer", online_weighting="advantage").validate()
