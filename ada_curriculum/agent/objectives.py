"""RL objectives for the learner, as loss functions over mixed demo / online batches.

An objective maps `(policy, variables, batch, rng) -> (loss, metrics)`. The first one is the
seed 003 argument made concrete: with binary reward, the policy gradient through a diffusion
policy's denoising surrogate weights each online window by its episode's success, and the
demos keep a BC anchor. The second, `DiffusionPPO`, is DPPO's (Ren et al. 2024, "Diffusion
Policy Policy Optimization"): each denoising step of an acted chunk is an action of its own,
with a Gaussian likelihood (stochastic DDIM, `diffusion.eta` > 0 and a noise floor
`diffusion.min_step_std`), trained by PPO's clipped ratio against the acting weights'
likelihood, so the gradient has zero mean for an unchanged policy and moves the denoiser
itself rather than re-weighting its samples.

A diffusion policy with a success critic (`diffusion.critic_hidden`) also learns the critic
here, from the online windows' episode success; acting then picks the critic's best of several
sampled chunks (policies/critic.py). That is where the policy improves beyond its samples: the
success weighting only re-weights chunks the policy already draws.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ada_curriculum.config import ConfigError
from ada_curriculum.replay import CHAIN_PREFIX


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


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """`train --objective ppo`: DPPO's clipped policy gradient through the denoising steps."""

    clip: float = dataclasses.field(default=0.1, metadata={"help": "PPO's ratio clip, per denoising step"})
    first_step: int = dataclasses.field(default=0, metadata={
        "min": 0, "help": "denoising steps before this one are taken as given (DPPO fine-tunes the last steps; "
                          "0: all of them)"})
    normalize_advantage: bool = dataclasses.field(default=True, metadata={
        "help": "standardise the advantages over each batch"})

    def validate(self) -> None:
        if not (0.0 < self.clip < 1.0):
            raise ConfigError("clip", f"expected a number in (0, 1), got {self.clip!r}")
        if isinstance(self.first_step, bool) or not isinstance(self.first_step, int) or self.first_step < 0:
            raise ConfigError("first_step", f"expected an int >= 0, got {self.first_step!r}")


@dataclasses.dataclass(frozen=True)
class DiffusionPPO:
    """PPO-clip over the denoising steps of acted chunks (the `ppo/` decisions of a chain batch)
    plus the denoising loss on demo windows, weighted `demo_weight` (the BC anchor).

    A decision's advantage (success - the actor's baseline for its task) is shared by all its
    steps, normalised over the batch when `ppo.normalize_advantage`; steps before
    `ppo.first_step` are treated as given (only the later steps' likelihoods are trained, as
    DPPO fine-tunes the last denoising steps)."""

    ppo: PPOConfig = PPOConfig()
    demo_weight: float = 1.0

    def __call__(self, policy, variables, batch, rng):
        p, first, clip = CHAIN_PREFIX, self.ppo.first_step, self.ppo.clip
        logp = policy.chain_log_prob(variables, batch[p + "obs"], batch[p + "chain"], first)
        old = batch[p + "logp"][:, first:]
        adv = batch[p + "advantage"]
        if self.ppo.normalize_advantage:
            adv = (adv - adv.mean()) / (adv.std() + 1e-6)
        log_ratio = logp - old
        ratio = jnp.exp(log_ratio)
        a = adv[:, None]
        pg = -jnp.mean(jnp.minimum(ratio * a, jnp.clip(ratio, 1 - clip, 1 + clip) * a))
        metrics = {
            "ppo/policy_loss": pg,
            "ppo/ratio": ratio.mean(),
            "ppo/clip_fraction": jnp.mean((jnp.abs(ratio - 1) > clip).astype(jnp.float32)),
            "ppo/approx_kl": jnp.mean((ratio - 1) - log_ratio),  # Schulman's low-variance estimator
            "ppo/advantage": batch[p + "advantage"].mean(),
            "online_success_fraction": batch[p + "success"].mean(),
        }
        loss = pg
        if "obs" in batch and self.demo_weight > 0:
            bc, bc_metrics = policy.loss(variables, policy_inputs(policy, batch), jax.random.fold_in(rng, 1))
            loss = loss + self.demo_weight * bc
            metrics.update({"bc_loss": bc, "mse": bc_metrics["mse"]})
        return loss, {"loss": loss, **metrics}


SEQUENCE_KEYS = ("obs", "prev_action", "trial_index", "mask", "action", "action_mask", "action_weight")


def policy_inputs(policy, batch) -> dict:
    """Cut a replay window batch down to the policy's batch: diffusion-style windows, or the
    sequence keys of `policies/base.py` for a transformer (replay's sequence layout holds them)."""
    if policy.kind == "transformer":
        return {k: batch[k] for k in SEQUENCE_KEYS}
    return {"obs": batch["obs"][:, : policy.n_obs_steps], "action": batch["action"][:, : policy.config.horizon]}
