"""DPPO (`train --objective ppo`): PPO's clipped ratio through the stochastic denoising steps."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ada_curriculum.agent.objectives import DiffusionPPO, PPOConfig
from ada_curriculum.policies import normalizer
from ada_curriculum.policies.diffusion import DiffusionConfig, DiffusionPolicy
from ada_curriculum.train import TrainConfig, train
from test_train import tiny

PPO_DIFFUSION = {"down_dims": [16, 32], "num_inference_steps": 2, "eta": 1.0, "min_step_std": 0.1}


def decisions(policy, variables, n, seed=0):
    rng = np.random.default_rng(seed)
    obs = jnp.asarray(rng.uniform(-1, 1, (n, policy.n_obs_steps, policy.obs_dim)), jnp.float32)
    _, chain, logp = policy.sample_chain(variables, {"obs": obs}, jax.random.PRNGKey(seed))
    return {"ppo/obs": obs, "ppo/chain": chain, "ppo/logp": logp, "ppo/success": jnp.zeros(n)}


def test_ppo_raises_the_likelihood_of_chains_with_positive_advantage_and_lowers_the_others():
    policy = DiffusionPolicy(DiffusionConfig(down_dims=(16, 32), num_inference_steps=3, eta=1.0, min_step_std=0.1),
                             obs_dim=3, action_dim=2)
    variables = policy.init(jax.random.PRNGKey(0), normalizer.identity(3, 2))
    batch = decisions(policy, variables, 8)
    batch["ppo/advantage"] = jnp.asarray([1.0] * 4 + [-1.0] * 4)
    objective = DiffusionPPO(PPOConfig(clip=0.2, normalize_advantage=False), demo_weight=0.0)
    stats = variables["normalizer"]

    loss, metrics = objective(policy, variables, batch, jax.random.PRNGKey(1))
    # The acting weights themselves: every ratio is 1, nothing is clipped, and the loss is
    # minus the mean advantage (0 here).
    assert float(metrics["ppo/ratio"]) == pytest.approx(1.0, abs=1e-3)
    assert float(metrics["ppo/clip_fraction"]) == 0.0 and float(metrics["ppo/approx_kl"]) == pytest.approx(0, abs=1e-4)
    assert float(loss) == pytest.approx(0.0, abs=1e-3)

    opt = optax.adam(1e-4)  # a step likelihood over 32 dims at std 0.1 moves fast: larger rates overshoot

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(lambda p: objective(policy, {"params": p, "normalizer": stats}, batch,
                                             jax.random.PRNGKey(1))[0])(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params, opt_state = variables["params"], opt.init(variables["params"])
    for _ in range(20):
        params, opt_state = step(params, opt_state)
    logp = policy.chain_log_prob({"params": params, "normalizer": stats}, batch["ppo/obs"], batch["ppo/chain"])
    gain = np.asarray((logp - batch["ppo/logp"]).sum(axis=1))
    assert np.all(gain[:4] > 0) and np.all(gain[4:] < 0), gain
    _, metrics = objective(policy, {"params": params, "normalizer": stats}, batch, jax.random.PRNGKey(1))
    assert float(metrics["ppo/clip_fraction"]) > 0  # the trust region was reached and held


def test_ppo_config_needs_a_stochastic_chain_and_acting_with_the_trained_weights():
    base = dict(run="r", demos="d", objective="ppo", optim={"ema_decay": 0.0}, diffusion=PPO_DIFFUSION)
    from ada_curriculum.config import from_dict

    from_dict(TrainConfig, base).validate()
    for override, field in (({"diffusion": {**PPO_DIFFUSION, "min_step_std": 0.0}}, "diffusion.min_step_std"),
                            ({"optim": {}}, "optim.ema_decay"),
                            ({"diffusion": {**PPO_DIFFUSION, "critic_hidden": 8}}, "diffusion.critic_hidden"),
                            ({"ppo": {"clip": 1.5}}, "ppo.clip"),
                            ({"ppo": {"first_step": 2}}, "ppo.first_step"),
                            ({"trials": 3}, "trials"),
                            ({"augment": "rotate", "demo_fraction": 0.0,
                              "diffusion": {**PPO_DIFFUSION, "obs_frame": "relative"}}, "augment")):
        with pytest.raises(ValueError, match=rf"^{field}: "):
            from_dict(TrainConfig, {**base, **override}).validate()


def test_an_in_process_ppo_run_trains_on_the_actors_chains_and_resumes(demos, tmp_path):
    run = tmp_path / "run"
    kw = dict(distributed=False, objective="ppo", diffusion=PPO_DIFFUSION,
              optim={"warmup_steps": 2, "ema_decay": 0.0})
    summary = train(tiny(run, demos, **kw))
    assert summary["stopped_by"] == "max_updates"
    online = summary["replay"]["online"]
    # One decision per planned chunk (8 steps each, episodes of 15 steps: 2 per episode).
    assert online["num_inserts"] == 2 * summary["episodes"] and online["num_samples"] > 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    learned = [r for r in rows if "ppo/ratio" in r]
    assert learned and all(np.isfinite(r["ppo/ratio"]) and np.isfinite(r["bc_loss"]) for r in learned)
    resumed = train(tiny(run, demos, max_updates=20, **kw))
    assert resumed["updates"] >= 20 and resumed["replay"]["online"]["num_inserts"] > online["num_inserts"]
    with pytest.raises(Exception, match="^objective: the checkpoint was made with 'ppo'"):
        train(tiny(run, demos, distributed=False, max_updates=24, diffusion=PPO_DIFFUSION,
                   optim={"warmup_steps": 2, "ema_decay": 0.0}))
