"""Optimiser configuration and the train state it runs on."""

from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    decay_steps: int = 5000  # cosine decay to `end_lr_fraction * learning_rate` over this many updates
    end_lr_fraction: float = 0.05
    weight_decay: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    # Seed 000's dynamic clipping: when the global gradient norm jumps above `clip_factor` times
    # the running norm, scale the update back to `clip_factor` times that norm.
    clip_factor: float = 4.0
    clip_norm_decay: float = 0.9  # smoothing of the running norm the jump is measured against
    max_grad_norm: float = 100.0  # absolute ceiling, also for the first updates
    ema_decay: float = 0.999  # EMA of params for acting; warmed up as 1 - (1 + step)^-0.75 capped here
    # The warm-up suits training from scratch, whose first params are worthless. Fine-tuning
    # starts from good (EMA) weights: warming up there makes the EMA track the raw params of the
    # first updates (reset optimiser moments, small batches), and acting gets worse for hundreds
    # of updates. Off, the EMA averages at `ema_decay` from the first update.
    ema_warmup: bool = True
    # A policy's success critic (policies/critic.py) starts untrained when its denoiser is
    # fine-tuned at a small rate, so it gets its own (constant, after warm-up) rate.
    critic_learning_rate: float = 3e-4

    def from_scratch(self) -> "OptimConfig":
        """This config for weights that start untrained: the EMA warms up whatever `ema_warmup`
        says (off is for fine-tuning pretrained weights)."""
        return dataclasses.replace(self, ema_warmup=True)

    def validate(self):
        for name in ("learning_rate", "clip_factor", "max_grad_norm", "critic_learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.decay_steps < 1:
            raise ValueError("decay_steps: must be >= 1 (and warmup_steps >= 0)")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay: must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.clip_norm_decay < 1:
            raise ValueError(f"clip_norm_decay: must be in [0, 1), got {self.clip_norm_decay}")


def make_optimizer(cfg: OptimConfig, critic: bool = False) -> optax.GradientTransformation:
    """AdamW on a warm-up + cosine schedule. `critic`: the params are `{"denoiser", "critic"}`
    (a policy with a success critic) and the critic gets `critic_learning_rate`."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=max(cfg.warmup_steps, 1),
        decay_steps=max(cfg.decay_steps, cfg.warmup_steps + 1), end_value=cfg.learning_rate * cfg.end_lr_fraction)
    policy = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    if not critic:
        return policy
    critic_schedule = optax.linear_schedule(0.0, cfg.critic_learning_rate, max(cfg.warmup_steps, 1))
    return optax.multi_transform(
        {"denoiser": policy, "critic": optax.adamw(critic_schedule, b1=cfg.b1, b2=cfg.b2,
                                                   weight_decay=cfg.weight_decay)},
        {"denoiser": "denoiser", "critic": "critic"})


@flax.struct.dataclass
class TrainState:
    """Everything an update needs and a checkpoint must hold (besides config and counters)."""

    step: jax.Array  # updates applied (skipped NaN updates do not count)
    params: dict
    ema_params: dict
    normalizer: dict
    opt_state: optax.OptState
    rng: jax.Array
    grad_norm_avg: jax.Array  # running global grad norm, the reference for dynamic clipping
    clip_count: jax.Array
    skip_count: jax.Array

    @property
    def variables(self) -> dict:
        return {"params": self.params, "normalizer": self.normalizer}

    @property
    def ema_variables(self) -> dict:
        return {"params": self.ema_params, "normalizer": self.normalizer}


def create_train_state(variables: dict, optimizer: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree_util.tree_map(jnp.copy, params),
        normalizer=variables["normalizer"], opt_state=optimizer.init(params), rng=rng,
        grad_norm_avg=jnp.zeros((), jnp.float32), clip_count=jnp.zeros((), jnp.int32),
        skip_count=jnp.zeros((), jnp.int32),
    )
