"""Per-dimension min-max normaliser to [-1, 1], fitted on demonstrations.

The statistics are a plain pytree of arrays (`{"obs": {"low", "high"}, "action": {...}}`) that
lives inside the policy's variables, so it is saved and restored with every checkpoint.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

# Dimensions that barely vary in the data (e.g. the fixed target of the nominal task) get this
# half-range, so they map near 0 instead of amplifying noise.
MIN_HALF_RANGE = 1e-2


def fit(obs: np.ndarray, action: np.ndarray, obs_bounds: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Statistics from (N, obs_dim) observations and (N, action_dim) actions.

    `obs_bounds` (low, high per obs entry, NaN where unknown) widens the observation range to
    what the task space can produce beyond the demos (see `obs.workspace_bounds`).
    """

    def stats(x, bounds=None):
        x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
        if not np.all(np.isfinite(x)):
            raise ValueError("normaliser: data holds NaN or inf")
        lo, hi = x.min(0), x.max(0)
        if bounds is not None:
            lo = np.where(np.isnan(bounds[0]), lo, np.fmin(lo, bounds[0]))
            hi = np.where(np.isnan(bounds[1]), hi, np.fmax(hi, bounds[1]))
        mid, half = (hi + lo) / 2, np.maximum((hi - lo) / 2, MIN_HALF_RANGE)
        return {"low": (mid - half).astype(np.float32), "high": (mid + half).astype(np.float32)}

    return {"obs": stats(obs, obs_bounds), "action": stats(action)}


def normalize(stats: dict, x):
    lo, hi = stats["low"], stats["high"]
    return 2.0 * (x - lo) / (hi - lo) - 1.0


def unnormalize(stats: dict, y):
    lo, hi = stats["low"], stats["high"]
    return (y + 1.0) / 2.0 * (hi - lo) + lo


def identity(obs_dim: int, action_dim: int) -> dict:
    """Statistics that leave [-1, 1] data unchanged (for tests and synthetic data)."""
    one = lambda n: {"low": -jnp.ones(n, jnp.float32), "high": jnp.ones(n, jnp.float32)}  # noqa: E731
    return {"obs": one(obs_dim), "action": one(action_dim)}
