"""RL objectives for the learner, as loss functions over mixed demo / online batches.

An objective maps `(policy, variables, batch, rng) -> (loss, metrics)`. The first one is the
seed 003 argument made concrete: with binary reward, the policy gradient through a diffusion
policy's denoising surrogate weights each online window by its episode's success, and the
demos keep a BC anchor. A DPPO-style objective (PPO over the last denoising steps with a value
critic) fits the same signature: it needs the per-window log-prob terms and returns, which
the window format carries room for (`version`, `success`, `task`).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SuccessWeightedBC:
    """Success-weighted denoising loss on online windows plus BC on demo windows."""

    demo_weight: float = 1.0
    online_weight: float = 1.0

    def __call__(self, policy, variables, batch, rng):
        is_demo = batch["is_demo"].astype(jnp.float32)
        weight = is_demo * self.demo_weight + (1 - is_demo) * self.online_weight * batch["success"]
        loss, metrics = policy.loss(variables, {**policy_inputs(policy, batch), "weight": weight}, rng)
        online = jnp.maximum((1 - is_demo).sum(), 1.0)
        return loss, {**metrics, "online_success_fraction": ((1 - is_demo) * batch["success"]).sum() / online,
                      "demo_fraction": is_demo.mean()}


def policy_inputs(policy, batch) -> dict:
    """Cut a replay window batch down to the policy's diffusion-style batch."""
    return {"obs": batch["obs"][:, : policy.n_obs_steps], "action": batch["action"][:, : policy.config.horizon]}
