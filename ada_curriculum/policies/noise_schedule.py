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


def _ddim_coefficients(schedule: dict, num_inference_steps: int):
    """(timesteps, ᾱ at each, ᾱ at the step each one lands on) of a DDIM pass; ᾱ_prev = 1 after t = 0."""
    ab = jnp.asarray(schedule["alphas_cumprod"])
    ts = ddim_timesteps(ab.shape[0], num_inference_steps)
    prev = np.append(ts[1:], -1)
    return ts, ab[ts], jnp.where(jnp.asarray(prev) >= 0, ab[np.maximum(prev, 0)], 1.0)


def _ddim_mean(denoise_fn, x, t, a_t, a_prev, eta, clip):
    """The mean of one DDIM step from x at timestep t, and its posterior std (before temperature)."""
    eps = denoise_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
    x0 = jnp.clip((x - jnp.sqrt(1.0 - a_t) * eps) / jnp.sqrt(a_t), -clip, clip)
    # Re-derive ε from the clipped x_0 so the next x_t stays consistent with it.
    eps = (x - jnp.sqrt(a_t) * x0) / jnp.sqrt(1.0 - a_t)
    sigma = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
    direction = jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma**2, 0.0)) * eps
    return jnp.sqrt(a_prev) * x0 + direction, sigma


def _step_std(sigma, temperature, min_std):
    # A floor on the injected noise (DPPO's minimum std): every step, the last one included,
    # explores, and no step's likelihood is so sharp that a small change of the mean breaks it.
    return jnp.maximum(sigma * temperature, min_std)


def ddim_sample(
    denoise_fn: Callable[[jax.Array, jax.Array], jax.Array],
    schedule: dict,
    shape: tuple[int, ...],
    rng: jax.Array,
    num_inference_steps: int,
    temperature: float | jax.Array = 1.0,
    eta: float | jax.Array = 0.0,
    clip: float = 1.0,
    min_std: float | jax.Array = 0.0,
) -> jax.Array:
    """DDIM sampling from x_T ~ N(0, temperature² I); returns x_0 of `shape`.

    denoise_fn(x_t, t) predicts ε, with t an int32 (B,) array (B = shape[0]).
    `num_inference_steps` must be a Python int (it fixes the loop length); `temperature`,
    `eta` and `min_std` may be traced. eta = 0 is deterministic DDIM, eta = 1 has DDPM's
    posterior variance; `temperature` scales the initial noise and the noise injected when
    eta > 0; `min_std` is a floor on each step's injected noise.
    """
    return _ddim(denoise_fn, schedule, shape, rng, num_inference_steps, temperature, eta, clip, min_std, False)[0]


def ddim_chain(denoise_fn, schedule: dict, shape: tuple[int, ...], rng: jax.Array, num_inference_steps: int,
               temperature: float | jax.Array = 1.0, eta: float | jax.Array = 0.0, clip: float = 1.0,
               min_std: float | jax.Array = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`ddim_sample`, also returning the chain x_T .. x_0 (B, S + 1, ...) and each step's
    Gaussian log-likelihood (B, S) (0 for a deterministic step): what a policy gradient through
    the denoising steps (DPPO) needs. The same arguments give the same x_0 as `ddim_sample`."""
    return _ddim(denoise_fn, schedule, shape, rng, num_inference_steps, temperature, eta, clip, min_std, True)


def _ddim(denoise_fn, schedule, shape, rng, num_inference_steps, temperature, eta, clip, min_std, record: bool):
    # `record` False keeps plain sampling (the actors' hot path) free of the chain and its likelihoods.
    ts, ab_t, ab_prev = _ddim_coefficients(schedule, num_inference_steps)
    temperature = jnp.asarray(temperature, jnp.float32)
    eta = jnp.asarray(eta, jnp.float32)
    min_std = jnp.asarray(min_std, jnp.float32)

    init_key, loop_key = jax.random.split(rng)
    x = temperature * jax.random.normal(init_key, shape, jnp.float32)
    step_keys = jax.random.split(loop_key, num_inference_steps)

    def step(x, inputs):
        t, a_t, a_prev, key = inputs
        mean, sigma = _ddim_mean(denoise_fn, x, t, a_t, a_prev, eta, clip)
        std = _step_std(sigma, temperature, min_std)
        noise = jax.random.normal(key, shape, jnp.float32)
        x_next = mean + std * noise
        return x_next, (x_next, _gaussian_log_prob(x_next, mean, std)) if record else None

    x_last, out = jax.lax.scan(step, x, (jnp.asarray(ts), ab_t, ab_prev, step_keys))
    if not record:
        return x_last, None, None
    xs, logp = out
    chain = jnp.concatenate([x[None], xs], axis=0)
    return x_last, jnp.moveaxis(chain, 0, 1), jnp.moveaxis(logp, 0, 1)


def _gaussian_log_prob(x, mean, std):
    """log N(x; mean, std² I) per example, summed over the sample's dims; 0 where std is 0."""
    d = float(np.prod(x.shape[1:]))
    safe = jnp.where(std > 0, std, 1.0)
    sq = jnp.sum(jnp.square((x - mean) / safe).reshape(x.shape[0], -1), axis=1)
    logp = -0.5 * sq - d * jnp.log(safe) - 0.5 * d * math.log(2 * math.pi)
    return jnp.where(std > 0, logp, 0.0)


def chain_log_prob(denoise_fn, schedule: dict, chain: jax.Array, num_inference_steps: int,
                   temperature: float | jax.Array = 1.0, eta: float | jax.Array = 0.0, clip: float = 1.0,
                   min_std: float | jax.Array = 0.0, first_step: int = 0) -> jax.Array:
    """Each step's log-likelihood (B, S - first_step) of a stored chain (B, S + 1, ...) under
    `denoise_fn`, for steps first_step .. S - 1 (DPPO may fine-tune the last steps only)."""
    ts, ab_t, ab_prev = _ddim_coefficients(schedule, num_inference_steps)
    if chain.shape[1] != num_inference_steps + 1:
        raise ValueError(f"chain: expected {num_inference_steps + 1} states per chain, got {chain.shape[1]}")
    if not 0 <= first_step < num_inference_steps:
        raise ValueError(f"first_step: expected 0 <= first_step < {num_inference_steps}, got {first_step}")
    temperature = jnp.asarray(temperature, jnp.float32)
    eta = jnp.asarray(eta, jnp.float32)
    min_std = jnp.asarray(min_std, jnp.float32)
    xs = jnp.moveaxis(chain, 1, 0)

    def step(_, inputs):
        t, a_t, a_prev, x, x_next = inputs
        mean, sigma = _ddim_mean(denoise_fn, x, t, a_t, a_prev, eta, clip)
        return None, _gaussian_log_prob(x_next, mean, _step_std(sigma, temperature, min_std))

    k = slice(first_step, num_inference_steps)
    _, logp = jax.lax.scan(step, None, (jnp.asarray(ts[k]), ab_t[k], ab_prev[k], xs[:-1][k], xs[1:][k]))
    return jnp.moveaxis(logp, 0, 1)
