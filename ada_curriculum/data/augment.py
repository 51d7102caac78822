"""Batch augmentation: the scene turned about the vertical axis.

In the relative observation frame (`policies.obs`) nothing fixes the scene's place or heading on
the table, so turning a demonstration about the vertical by any angle gives another valid one:
its horizontal observation vectors and its end-effector x/y actions turn together, heights,
gripper and the banana's heading from the hand stay. One angle per example, shared by all of
its steps. Demos of a single placement then teach every direction of approach and carry; the
arm's reach limits are the one thing the turned copy does not respect.

Works on both batch layouts of `policies.base` (diffusion windows and transformer sequences),
numpy in and out, before the batch goes to the device.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

import envs
from ada_curriculum.config import ConfigError
from ada_curriculum.policies.obs import PLANAR_PAIRS, geometry

AUGMENTATIONS = ("none", "rotate")
ACTION_KEYS = ("action", "prev_action")


def check(augment: str, obs_frame: str, env: str | None = None, env_kwargs: dict | None = None) -> None:
    """Raises ConfigError naming `augment` for a setting the observation frame (or env) cannot take."""
    if augment not in AUGMENTATIONS:
        raise ConfigError("augment", f"expected one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
    if augment == "rotate" and geometry(obs_frame) != "relative":
        raise ConfigError("augment", f"rotate needs the relative observation frame (--<policy>.obs-frame relative); "
                                     f"in the {obs_frame!r} frame a turned scene is not a valid one")
    if augment == "rotate" and env is not None and not envs.rotation_symmetric(env, env_kwargs):
        raise ConfigError("augment", f"rotate does not fit {env!r}: its plates sit along world x, so a turned "
                                     "scene is not one of its scenes")


def _turn(x: np.ndarray, pairs, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    x = np.array(x, np.float32, copy=True)
    c = cos.reshape(-1, *([1] * (x.ndim - 2)))
    s = sin.reshape(-1, *([1] * (x.ndim - 2)))
    for i, j in pairs:
        a, b = x[..., i], x[..., j]
        x[..., i], x[..., j] = c * a - s * b, s * a + c * b  # both sides computed before either is written
    return x


def rotate(batch: dict, angle: np.ndarray) -> dict:
    """`batch` with example n turned by `angle[n]` radians (counter-clockwise seen from above)."""
    angle = np.asarray(angle, np.float64)
    cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    out = dict(batch)
    out["obs"] = _turn(batch["obs"], PLANAR_PAIRS["relative"], cos, sin)
    for key in ACTION_KEYS:
        if key in batch:
            out[key] = _turn(batch[key], PLANAR_PAIRS["action"], cos, sin)
    return out


def random_rotation(batch: dict, rng: np.random.Generator) -> dict:
    return rotate(batch, rng.uniform(-np.pi, np.pi, len(batch["obs"])))


def rotation_symmetric(stats: dict) -> dict:
    """Normaliser statistics whose action x/y range is the same disc-covering interval, so a
    turned action stays inside what the policy's normaliser maps to [-1, 1]. (The relative
    frame's observation bounds already are; see `obs.workspace_bounds`.)"""
    action = {k: np.array(v, np.float32, copy=True) for k, v in stats["action"].items()}
    idx = [i for pair in PLANAR_PAIRS["action"] for i in pair]
    r = float(np.hypot(*np.maximum(np.abs(action["low"][idx]), np.abs(action["high"][idx]))))
    action["low"][idx], action["high"][idx] = -r, r
    return {**stats, "action": action}


class RotatedSampler:
    """A window sampler (`sample(rng, batch_size)`) whose batches are randomly turned."""

    def __init__(self, sampler):
        self._sampler = sampler

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict:
        return random_rotation(self._sampler.sample(rng, batch_size), rng)


def rotated_batches(batches: Iterable[dict], seed: int) -> Iterator[dict]:
    """A replay batch stream, each batch randomly turned (the learner's augmentation)."""
    rng = np.random.default_rng(seed)
    for batch in batches:
        yield random_rotation({k: np.asarray(v) for k, v in batch.items()}, rng)
