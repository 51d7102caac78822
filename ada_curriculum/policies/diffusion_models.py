"""Flax modules for the diffusion policy: a conditional 1D temporal U-Net.

The U-Net convolves over the action horizon (channels = action dims), halving the length
between consecutive levels (len(down_dims) - 1 times) and restoring it on the way up, with a
skip connection at every level. Each residual block is FiLM-conditioned on [diffusion-step embedding,
global conditioning (the flattened, normalised observation history)].
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def mish(x: jax.Array) -> jax.Array:
    return x * jnp.tanh(jax.nn.softplus(x))


class TemporalConv(nn.Module):
    """1D "same" convolution over (B, L, C) as one matmul over stacked shifted copies.

    XLA's CPU convolution falls onto a slow path (~10x) when the kernel is longer than the
    sequence, which happens at the U-Net's bottom level (L = 4, kernel 5); a matmul does not.
    `stride` keeps every stride-th output position.
    """

    features: int
    kernel_size: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, length, channels = self.kernel_size, x.shape[1], x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, channels, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        left = (k - 1) // 2
        padded = jnp.pad(x, ((0, 0), (left, k - 1 - left), (0, 0)))
        cols = jnp.concatenate([padded[:, i:i + length] for i in range(k)], axis=-1)[:, ::self.stride]
        return cols @ kernel.reshape(k * channels, self.features) + bias


class Upsample(nn.Module):
    """Doubles L: a conv emits two output steps' features per input step (sub-pixel style)."""

    features: int
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, length, _ = x.shape
        y = TemporalConv(2 * self.features, self.kernel_size)(x)
        return y.reshape(b, length * 2, self.features)


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sin/cos features of a (B,) diffusion timestep."""

    dim: int

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        if self.dim % 2 or self.dim < 4:
            raise ValueError(f"step_embed_dim: must be even and >= 4, got {self.dim}")
        half = self.dim // 2
        freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
        args = t.astype(jnp.float32)[:, None] * freqs[None, :]
        return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class ConvNormMish(nn.Module):
    """Conv1D -> GroupNorm -> Mish over (B, L, C)."""

    features: int
    kernel_size: int
    n_groups: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = TemporalConv(self.features, self.kernel_size)(x)
        x = nn.GroupNorm(num_groups=self.n_groups)(x)
        return mish(x)


class FiLMResidualBlock(nn.Module):
    """Two conv blocks; the conditioning vector scales and shifts the features in between."""

    features: int
    kernel_size: int
    n_groups: int

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        h = ConvNormMish(self.features, self.kernel_size, self.n_groups)(x)
        film = nn.Dense(2 * self.features)(mish(cond))
        # Kept only when applied with mutable=["intermediates"] (`DiffusionPolicy.embed`).
        self.sow("intermediates", "film", film)
        scale, shift = jnp.split(film, 2, axis=-1)
        # (1 + scale) keeps the block close to unconditioned at init instead of zeroing it.
        h = h * (1.0 + scale[:, None, :]) + shift[:, None, :]
        h = ConvNormMish(self.features, self.kernel_size, self.n_groups)(h)
        if x.shape[-1] != self.features:
            x = nn.Dense(self.features)(x)  # 1x1 conv
        return h + x


class ConditionalUnet1D(nn.Module):
    """ε-predictor: (B, L, A) noisy actions, (B,) timesteps, (B, D) cond -> (B, L, A).

    L must be divisible by 2 ** (len(down_dims) - 1); every channel width by n_groups.
    """

    down_dims: Sequence[int] = (32, 64, 128)
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 64

    @nn.compact
    def __call__(self, sample: jax.Array, timestep: jax.Array, global_cond: jax.Array | None = None) -> jax.Array:
        batch, length, out_dim = sample.shape
        levels = len(self.down_dims)
        if length % (2 ** (levels - 1)):
            raise ValueError(f"horizon: must be divisible by {2 ** (levels - 1)}, got {length}")
        block = lambda f: FiLMResidualBlock(f, self.kernel_size, self.n_groups)  # noqa: E731

        t = jnp.broadcast_to(jnp.asarray(timestep), (batch,))
        cond = SinusoidalEmbedding(self.step_embed_dim)(t)
        cond = nn.Dense(4 * self.step_embed_dim)(cond)
        cond = nn.Dense(self.step_embed_dim)(mish(cond))
        if global_cond is not None:
            cond = jnp.concatenate([cond, global_cond.astype(cond.dtype)], axis=-1)

        x = sample
        skips = []
        for i, dim in enumerate(self.down_dims):
            x = block(dim)(x, cond)
            x = block(dim)(x, cond)
            skips.append(x)
            if i < levels - 1:
                x = TemporalConv(dim, 3, stride=2)(x)  # halves L

        x = block(self.down_dims[-1])(x, cond)
        x = block(self.down_dims[-1])(x, cond)

        for i in reversed(range(levels)):
            x = jnp.concatenate([x, skips[i]], axis=-1)
            x = block(self.down_dims[i])(x, cond)
            x = block(self.down_dims[i])(x, cond)
            if i > 0:
                x = Upsample(self.down_dims[i - 1])(x)

        x = ConvNormMish(self.down_dims[0], self.kernel_size, self.n_groups)(x)
        return nn.Dense(out_dim)(x)  # 1x1 conv
