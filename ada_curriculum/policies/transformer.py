"""Causal transformer policy over sequence batches (see `base.py` for the batch format).

Every step of a window becomes one token (obs, previous action, trial index, trial-start
marker, position); the model predicts the action chunk a_t .. a_{t+k-1} at every step, so a
whole window trains in one pass and acting reads the chunk at the last valid step. Context
that spans several trials of one episode is what the later in-context (ADA-style) learning
relies on, hence the explicit trial embeddings.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp

from ada_curriculum.config import ConfigError
from ada_curriculum.policies import normalizer as norm_lib
from ada_curriculum.policies.base import Batch, Policy, Variables
from ada_curriculum.policies.obs import ACTION_DIM, OBS_DIM, binarize_gripper, check_frame
from ada_curriculum.policies.transformer_models import CausalTransformer


@dataclasses.dataclass(frozen=True)
class ModelSize:
    d_model: int
    n_layers: int
    n_heads: int
    mlp_ratio: int = 4


PRESETS: dict[str, ModelSize] = {
    "tiny": ModelSize(d_model=32, n_layers=1, n_heads=2),  # for tests and smoke runs
    "small": ModelSize(d_model=64, n_layers=2, n_heads=4),
    "base": ModelSize(d_model=128, n_layers=4, n_heads=4),
    "large": ModelSize(d_model=256, n_layers=6, n_heads=8),
}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    preset: Literal["tiny", "small", "base", "large"] = dataclasses.field(
        default="small", metadata={"help": "model size: small (64x2), base (128x4), large (256x6)"})
    # 512 steps hold ~4-8 trials of 60-150 steps. It is only a cap (a position table): compute
    # scales with the window length the data pipeline actually feeds, quadratically in attention.
    max_len: int = dataclasses.field(
        default=512, metadata={"help": "longest context window in steps (learned positions)"})
    n_obs_steps: int = dataclasses.field(
        default=1, metadata={"help": "must be 1: the transformer sees history through its context"})
    n_action_steps: int = dataclasses.field(
        default=8, metadata={"help": "length of the predicted action chunk"})
    max_trials: int = dataclasses.field(
        default=8, metadata={"help": "trial embeddings; larger trial indices share the last one"})
    dropout: float = dataclasses.field(default=0.0, metadata={"help": "dropout rate in [0, 1)"})
    binary_gripper: bool = dataclasses.field(default=True, metadata={
        "help": "snap the predicted gripper command to open/closed (see policies.obs.binarize_gripper)"})
    obs_frame: Literal["world", "relative", "world+reward", "relative+reward"] = dataclasses.field(
        default="world", metadata={
            "help": "observation frame: world (positions on the table) or relative (the scene seen from the hand); "
                    "+reward appends what the previous trial earned, for memory across trials (see policies.obs)"})

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError("preset", f"expected one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.max_len < 1:
            raise ConfigError("max_len", f"must be >= 1, got {self.max_len}")
        if self.n_obs_steps != 1:
            raise ConfigError("n_obs_steps", f"must be 1 for the transformer, got {self.n_obs_steps}")
        if self.n_action_steps < 1:
            raise ConfigError("n_action_steps", f"must be >= 1, got {self.n_action_steps}")
        if self.max_trials < 1:
            raise ConfigError("max_trials", f"must be >= 1, got {self.max_trials}")
        check_frame(self.obs_frame)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout}")


@dataclasses.dataclass(frozen=True)
class TransformerPolicy(Policy):
    """Frozen and hashable, so it can be closed over or passed as a static jit argument."""

    kind = "transformer"
    config: TransformerConfig = TransformerConfig()
    obs_dim: int = OBS_DIM
    action_dim: int = ACTION_DIM

    def __post_init__(self):
        self.config.validate()
        if self.obs_dim < 1 or self.action_dim < 1:
            raise ValueError(f"obs_dim/action_dim: must be >= 1, got {self.obs_dim}/{self.action_dim}")

    @property
    def n_obs_steps(self) -> int:
        return self.config.n_obs_steps

    @property
    def n_action_steps(self) -> int:
        return self.config.n_action_steps

    @functools.cached_property
    def model(self) -> CausalTransformer:
        size = PRESETS[self.config.preset]
        return CausalTransformer(
            d_model=size.d_model, n_layers=size.n_layers, n_heads=size.n_heads, mlp_ratio=size.mlp_ratio,
            max_len=self.config.max_len, max_trials=self.config.max_trials,
            n_action_steps=self.config.n_action_steps, action_dim=self.action_dim, dropout=self.config.dropout)

    def init(self, rng: jax.Array, normalizer: dict) -> Variables:
        for key, dim in (("obs", self.obs_dim), ("action", self.action_dim)):
            for side in ("low", "high"):
                if tuple(jnp.shape(normalizer[key][side])) != (dim,):
                    raise ValueError(f"normalizer: {key}.{side} must have shape ({dim},), "
                                     f"got {tuple(jnp.shape(normalizer[key][side]))}")
        # Parameter shapes do not depend on T (positions are a max_len table), so one step will do.
        obs = jnp.zeros((1, 1, self.obs_dim), jnp.float32)
        act = jnp.zeros((1, 1, self.action_dim), jnp.float32)
        params = self.model.init(rng, obs, act, jnp.zeros((1, 1), jnp.int32),
                                 jnp.ones((1, 1), bool))["params"]
        return {"params": params, "normalizer": normalizer}

    def _forward(self, variables: Variables, batch: Batch, dropout_rng: jax.Array | None):
        stats = variables["normalizer"]
        mask = batch["mask"].astype(bool)
        # Zero padded steps so garbage (even NaN) there cannot leak through 0-weight attention.
        valid = mask[..., None]
        obs = jnp.where(valid, norm_lib.normalize(stats["obs"], batch["obs"]), 0.0)
        prev = jnp.where(valid, norm_lib.normalize(stats["action"], batch["prev_action"]), 0.0)
        deterministic = dropout_rng is None
        return self.model.apply(
            {"params": variables["params"]}, obs, prev, batch["trial_index"], mask,
            deterministic=deterministic, rngs=None if deterministic else {"dropout": dropout_rng})

    def action_outputs(self, variables: Variables, batch: Batch) -> jax.Array:
        """Normalised chunks at every position, (B, T, n_action_steps, action_dim), no dropout."""
        return self._forward(variables, batch, None)

    def loss(self, variables: Variables, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
        """Masked MSE in normalised action units.

        Every valid (step, chunk entry) counts once, scaled by its example's weight and, if the
        batch has one, by its per-entry `action_weight (B, T, k)` (e.g. 0 for actions of failed
        trials, which then only serve as context), so "loss" is the weight-averaged per-entry
        MSE; "mse" is the same without weights.
        """
        pred = self._forward(variables, batch, rng)
        m = batch["mask"].astype(bool)[:, :, None] & batch["action_mask"].astype(bool)  # (B, T, k)
        target = norm_lib.normalize(variables["normalizer"]["action"], batch["action"])
        # Padded targets may be anything; keep them out of both the value and the gradient.
        target = jnp.where(m[..., None], target, jax.lax.stop_gradient(pred))
        err = jnp.mean(jnp.square(pred - target), axis=-1)  # (B, T, k)

        m = m.astype(jnp.float32)
        weight = batch.get("weight")
        w = jnp.ones(m.shape[0], jnp.float32) if weight is None else jnp.asarray(weight, jnp.float32)
        wm = m * w[:, None, None]
        action_weight = batch.get("action_weight")
        if action_weight is not None:
            wm = wm * jnp.asarray(action_weight, jnp.float32)
        loss = jnp.sum(wm * err) / jnp.maximum(jnp.sum(wm), 1e-8)
        mse = jnp.sum(m * err) / jnp.maximum(jnp.sum(m), 1.0)
        return loss, {"loss": loss, "mse": mse}

    def predict_action(self, variables: Variables, batch: Batch, rng: jax.Array,
                       temperature: float | jax.Array = 0.0) -> jax.Array:
        """Raw chunk (B, n_action_steps, action_dim) at each row's last valid step.

        `temperature` scales Gaussian noise added in normalised units (0 = deterministic); the
        result is clipped to the normaliser's range [-1, 1] before unnormalising.
        """
        chunks = self.action_outputs(variables, batch)
        last = jnp.maximum(jnp.sum(batch["mask"].astype(jnp.int32), axis=1) - 1, 0)
        chunk = jnp.take_along_axis(chunks, last[:, None, None, None], axis=1)[:, 0]
        chunk = chunk + temperature * jax.random.normal(rng, chunk.shape, chunk.dtype)
        chunk = norm_lib.unnormalize(variables["normalizer"]["action"], jnp.clip(chunk, -1.0, 1.0))
        return binarize_gripper(chunk) if self.config.binary_gripper else chunk
