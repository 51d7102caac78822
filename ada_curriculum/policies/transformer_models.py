"""Flax modules for the transformer policy: a causal, pre-LayerNorm (GPT-style) transformer
over per-step tokens of a (possibly multi-trial) episode window.

Everything here works in normalised units; `transformer.py` owns normalisation, losses and
sampling.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class Block(nn.Module):
    """Pre-LN block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    d_model: int
    n_heads: int
    mlp_ratio: int = 4
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, attn_mask, deterministic: bool = True):
        h = nn.LayerNorm(name="ln_attn")(x)
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.n_heads, qkv_features=self.d_model, out_features=self.d_model,
            dropout_rate=self.dropout, deterministic=deterministic, name="attn",
        )(h, h, mask=attn_mask)
        x = x + nn.Dropout(self.dropout)(h, deterministic=deterministic)

        h = nn.LayerNorm(name="ln_mlp")(x)
        h = nn.Dense(self.mlp_ratio * self.d_model, name="mlp_in")(h)
        h = nn.gelu(h)
        h = nn.Dense(self.d_model, name="mlp_out")(h)
        return x + nn.Dropout(self.dropout)(h, deterministic=deterministic)


class CausalTransformer(nn.Module):
    """Maps a window of steps to one action chunk per step.

    Inputs (normalised): obs (B, T, obs_dim), prev_action (B, T, action_dim),
    trial_index (B, T) int, mask (B, T) bool. Output: (B, T, n_action_steps, action_dim).
    """

    d_model: int
    n_layers: int
    n_heads: int
    max_len: int
    max_trials: int
    n_action_steps: int
    action_dim: int
    mlp_ratio: int = 4
    dropout: float = 0.0

    @nn.compact
    def __call__(self, obs, prev_action, trial_index, mask, deterministic: bool = True):
        B, T = obs.shape[:2]
        if T > self.max_len:
            raise ValueError(f"max_len: window of {T} steps exceeds max_len={self.max_len}")

        # A trial boundary is where trial_index changes; t = 0 always starts a segment, so the
        # model is told explicitly where each trial's context begins. Found before clipping, so
        # trials past max_trials (which share the last embedding) are still separated.
        trial_index = trial_index.astype(jnp.int32)
        change = trial_index[:, 1:] != trial_index[:, :-1]
        start = jnp.concatenate([jnp.ones((B, 1), bool), change], axis=1)
        trial_index = jnp.clip(trial_index, 0, self.max_trials - 1)

        x = (nn.Dense(self.d_model, name="obs_embed")(obs)
             + nn.Dense(self.d_model, name="prev_action_embed")(prev_action)
             + nn.Embed(self.max_trials, self.d_model, name="trial_embed")(trial_index)
             + nn.Embed(2, self.d_model, name="trial_start_embed")(start.astype(jnp.int32))
             + nn.Embed(self.max_len, self.d_model, name="pos_embed")(jnp.arange(T))[None])
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)

        # Causal AND valid keys; the diagonal is always allowed so padded query rows still have
        # one key (their outputs are ignored, but an all-masked row would be degenerate).
        causal = jnp.tril(jnp.ones((T, T), bool))
        attn_mask = (causal[None] & mask[:, None, :].astype(bool)) | jnp.eye(T, dtype=bool)[None]
        attn_mask = attn_mask[:, None]  # (B, 1 head-broadcast, T, T)

        for i in range(self.n_layers):
            x = Block(self.d_model, self.n_heads, self.mlp_ratio, self.dropout, name=f"block_{i}")(
                x, attn_mask, deterministic)
        x = nn.LayerNorm(name="ln_out")(x)
        out = nn.Dense(self.n_action_steps * self.action_dim, name="head")(x)
        return out.reshape(B, T, self.n_action_steps, self.action_dim)
