"""The policy interface shared by every policy family (diffusion, transformer, ...).

A policy object is a frozen description (config + sizes); all state lives in `variables`, a
pytree `{"params": ..., "normalizer": ...}`: `params` are trained, `normalizer` holds the
fitted statistics (see `normalizer.py`) and is saved inside every checkpoint with them.
Everything here is a pure function of its arguments, so `loss` and `predict_action` jit.

Batches are dicts of arrays in raw (unnormalised) units; the policy normalises inside.

Diffusion-style batches (`kind == "diffusion"`), windows of one episode:
    obs     (B, n_obs_steps, obs_dim)
    action  (B, horizon, action_dim)       action[:, n_obs_steps - 1] is taken at obs[:, -1]
    weight  (B,) optional per-example loss weight (success weighting, demo/online mixing)

Sequence batches (`kind == "transformer"`), left-aligned windows of one episode:
    obs          (B, T, obs_dim)
    prev_action  (B, T, action_dim)        the action taken before step t (zeros at t = 0)
    trial_index  (B, T) int32              trial within a multi-trial episode
    mask         (B, T) bool               valid steps
    action       (B, T, n_action_steps, action_dim)   the chunk a_t .. a_{t+k-1}
    action_mask  (B, T, n_action_steps) bool           chunk entries inside the episode and trial
    action_weight (B, T, n_action_steps) optional      per-entry loss weight (e.g. trial success)
    weight       (B,) optional

`predict_action(variables, batch, rng, **sampling)` takes the same keys minus the targets and
returns raw actions (B, n_action_steps, action_dim): for diffusion the steps to execute from
the current observation, for the transformer the chunk at each row's last valid step.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import jax

Variables = dict  # {"params": pytree, "normalizer": {"obs": {...}, "action": {...}}}
Batch = dict[str, Any]


class Policy(abc.ABC):
    kind: ClassVar[str]
    # A success critic beside the policy (policies/critic.py), trained by the learner and used
    # when acting; only diffusion policies can have one.
    has_critic: ClassVar[bool] = False
    obs_dim: int
    action_dim: int
    n_obs_steps: int
    n_action_steps: int
    config: Any

    @abc.abstractmethod
    def init(self, rng: jax.Array, normalizer: dict) -> Variables:
        """Fresh variables with the given normaliser statistics."""

    @abc.abstractmethod
    def loss(self, variables: Variables, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
        """Scalar training loss (weighted mean over the batch) and a dict of scalar metrics."""

    @abc.abstractmethod
    def predict_action(self, variables: Variables, batch: Batch, rng: jax.Array, **sampling) -> jax.Array:
        """Raw action chunk (B, n_action_steps, action_dim)."""

    @property
    def obs_frame(self) -> str:
        """How observations are flattened for this policy (`policies.obs.FRAMES`)."""
        return getattr(self.config, "obs_frame", "world")

    def param_count(self, variables: Variables) -> int:
        return sum(x.size for x in jax.tree_util.tree_leaves(variables["params"]))
