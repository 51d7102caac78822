"""RL objectives for the learner, as loss functions over mixed demo / online batches.

An objective maps `(policy, variables, batch, rng) -> (loss, metrics)`. The first one is the
seed 003 argument made concrete: with binary reward, the policy gradient through a diffusion
policy's denoising surrogate weights each online window by its episode's success, and the
demos keep a BC anchor. A DPPO-style objective (PPO over the last denoising steps with a value
critic) fits the same signature: it needs the per-window log-prob terms and returns, which
the window format carries room for (`version`, `success`, `task`).

A diffusion policy with a success critic (`diffusion.critic_hidden`) also learns the critic
here, from the online windows' episode success; acting then picks the critic's best of several
sampled chunks (policies/critic.py). That is where the policy improves beyond its samples: the
success weighting only re-weights chunks the policy already draws.
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
        if policy.kind == "transformer":
            return self._sequences(policy, variables, batch, rng)
        is_demo = batch["is_demo"].astype(jnp.float32)
        # An online window's "weight" is what the actor wrote: its episode's success, or with
        # advantage weighting max(success - baseline(task), 0) (agent/baseline.py).
        weight = is_demo * self.demo_weight + (1 - is_demo) * self.online_weight * batch["weight"]
        inputs = {**policy_inputs(policy, batch), "weight": weight}
        if policy.has_critic:
            # The critic estimates success under the acting policy, so it learns from the actors'
            # windows only (the scripted demos are another policy), each labelled with its
            # episode's success whatever the online weighting.
            inputs.update(critic_label=batch["success"], critic_mask=1 - is_demo)
        loss, metrics = policy.loss(variables, inputs, rng)
        online = jnp.maximum((1 - is_demo).sum(), 1.0)
        return loss, {**metrics, "online_success_fraction": ((1 - is_demo) * batch["success"]).sum() / online,
                      "online_mean_weight": ((1 - is_demo) * batch["weight"]).sum() / online,
                      "demo_fraction": is_demo.mean()}

    def _sequences(self, policy, variables, batch, rng):
        """Sequence windows of multi-trial episodes: success-weighted BC over trials. Each chunk
        entry's weight is its window's `demo_weight` / `online_weight` times the entry's
        `action_weight`, which replay holds as the success of the trial the action belongs to
        (demo windows: the same, so a demo store's failed trials are context only), so failed
        trials stay in the context and only actions of successful trials are imitated."""
        is_demo = batch["is_demo"].astype(jnp.float32)
        weight = is_demo * self.demo_weight + (1 - is_demo) * self.online_weight
        loss, metrics = policy.loss(variables, {**policy_inputs(policy, batch), "weight": weight}, rng)
        online = jnp.maximum((1 - is_demo).sum(), 1.0)
        entries = (batch["mask"][:, :, None] & batch["action_mask"]).astype(jnp.float32)  # (B, T, k)
        online_entries = entries * (1 - is_demo)[:, None, None]
        return loss, {**metrics, "online_success_fraction": ((1 - is_demo) * batch["success"]).sum() / online,
                      "online_weighted_entry_fraction": (online_entries * batch["action_weight"]).sum()
                      / jnp.maximum(online_entries.sum(), 1.0),
                      "demo_fraction": is_demo.mean()}


SEQUENCE_KEYS = ("obs", "prev_action", "trial_index", "mask", "action", "action_mask", "action_weight")


def policy_inputs(policy, batch) -> dict:
    """Cut a replay window batch down to the policy's batch: diffusion-style windows, or the
    sequence keys of `policies/base.py` for a transformer (replay's sequence layout holds them)."""
    if policy.kind == "transformer":
        return {k: batch[k] for k in SEQUENCE_KEYS}
    return {"obs": batch["obs"][:, : policy.n_obs_steps], "action": batch["action"][:, : policy.config.horizon]}
