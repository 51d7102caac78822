"""DDPM noise schedule and a DDIM sampler, as pure functions.

A schedule is a plain dict of float32 arrays indexed by the training timestep t in
[0, num_train_timesteps): `betas`, `alphas` and `alphas_cumprod` (written ᾱ_t below), with
x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε. Samples live in the normalised action space [-1, 1].
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Nichol & Dhariwal's offset keeps β_0 from being vanishingly small; the cap keeps the last
# step from hitting ᾱ = 0 exactly (x_0 would become unrecoverable).
COSINE_OFFSET = 0.008
MAX_BETA = 0.999


def make_schedule(num_train_timesteps: int = 100, max_beta: float = MAX_BETA) -> dict:
    """Squared-cosine ("cosine") β schedule."""
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps: must be >= 1, got {num_train_timesteps}")
    # Built in float64 NumPy (the schedule depends only on ints) so ᾱ is accurate.
    s = np.arange(num_train_timesteps + 1, dtype=np.float64) / num_train_timesteps
    f = np.cos((s + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
    betas = np.minimum(1.0 - f[1:] / f[:-1], max_beta)
    alphas = 1.0 - betas
    return {
        "betas": jnp.asarray(betas, jnp.float32),
        "alphas": jnp.asarray(alphas, jnp.float32),
        "alphas_cumprod": jnp.asarray(np.cumprod(alphas), jnp.float32),
    }


def _per_example(v: jax.Array, ndim: int) -> jax.Array:
    """(B,) -> (B, 1, ..., 1) so it broadcasts against a (B, ...) sample."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def add_noise(schedule: dict, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """Forward process q(x_t | x_0) for integer timesteps t of shape (B,) (or a scalar)."""
    ab = _per_example(jnp.asarray(schedule["alphas_cumprod"])[t], x0.ndim)
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * noise


def ddim_timesteps(num_train_timesteps: int, num_inference_steps: int) -> np.ndarray:
    """Descending timesteps with an even (possibly fractional) stride T / n, ending at t = 0.

    The first is one stride below T ("leading" spacing), and the initial noise is treated as
    the sample there. Starting at t = T - 1 instead would hurt: the cosine schedule puts ᾱ at
    ~1e-7 there, so an ε-model's x_0 estimate is its error amplified ~2000x, and a coarse
    DDIM step then carries that garbage forward with weight sqrt(ᾱ_next).
    """
    T, n = int(num_train_timesteps), int(num_inference_steps)
    if not 1 <= n <= T:
        raise ValueError(f"num_inference_steps: must be in 1..{T}, got {n}")
    # Stride T/n >= 1, so the floored steps are distinct.
    return np.floor(np.arange(n - 1, -1, -1) * (T / n)).astype(np.int32)


def ddim_sample(
    denoise_fn: Callable[[jax.Array, jax.Array], jax.Array],
    schedule: dict,
    shape: tuple[int, ...],
    rng: jax.Array,
    num_inference_steps: int,
    temperature: float | jax.Array = 1.0,
    eta: float | jax.Array = 0.0,
    clip: float = 1.0,
) -> jax.Array:
    """DDIM sampling from x_T ~ N(0, temperature² I); returns x_0 of `shape`.

    denoise_fn(x_t, t) predicts ε, with t an int32 (B,) array (B = shape[0]).
    `num_inference_steps` must be a Python int (it fixes the loop length); `temperature` and
    `eta` may be traced. eta = 0 is deterministic DDIM, eta = 1 has DDPM's posterior variance;
    `temperature` scales the initial noise and the noise injected when eta > 0.
    """
    ab = jnp.asarray(schedule["alphas_cumprod"])
    ts = ddim_timesteps(ab.shape[0], num_inference_steps)
    prev = np.append(ts[1:], -1)
    ab_t = ab[ts]
    # The step after the last one lands on the clean sample: ᾱ_prev = 1.
    ab_prev = jnp.where(jnp.asarray(prev) >= 0, ab[np.maximum(prev, 0)], 1.0)
    temperature = jnp.asarray(temperature, jnp.float32)
    eta = jnp.asarray(eta, jnp.float32)

    init_key, loop_key = jax.random.split(rng)
    x = temperature * jax.random.normal(init_key, shape, jnp.float32)
    step_keys = jax.random.split(loop_key, num_inference_steps)
    t_batch = lambda t: jnp.full((shape[0],), t, jnp.int32)  # noqa: E731

    def step(x, inputs):
        t, a_t, a_prev, key = inputs
        eps = denoise_fn(x, t_batch(t))
        x0 = jnp.clip((x - jnp.sqrt(1.0 - a_t) * eps) / jnp.sqrt(a_t), -clip, clip)
        # Re-derive ε from the clipped x_0 so the next x_t stays consistent with it.
        eps = (x - jnp.sqrt(a_t) * x0) / jnp.sqrt(1.0 - a_t)
        sigma = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
        direction = jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma**2, 0.0)) * eps
        noise = jax.random.normal(key, shape, jnp.float32)
        x = jnp.sqrt(a_prev) * x0 + direction + sigma * temperature * noise
        return x, None

    x, _ = jax.lax.scan(step, x, (jnp.asarray(ts), ab_t, ab_prev, step_keys))
    return x
