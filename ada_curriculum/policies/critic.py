"""A success critic over (observation history, executed action chunk), for value-guided acting.

With a binary task reward and no discounting inside an episode, an action chunk's value under
the acting policy is the probability that the episode it starts in succeeds. `ChunkCritic`
learns its logit by cross-entropy on the actors' own windows, each labelled with its episode's
success (a Monte-Carlo target: no bootstrapping, so no target network to keep). Acting then
samples several chunks from the diffusion policy and executes the one the critic rates best,
which is a policy-improvement step over the sampling policy (Nakamoto et al., "Steering Your
Generalists", 2024); the next actors' episodes re-label the critic under the improved policy.

The critic sees what the actor executed (binarised gripper, `n_action_steps` actions from the
current one), in the policy's normalised units, so its inputs are the same at training and
acting time.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ada_curriculum.policies import normalizer as norm


def _mlp(x: jax.Array, hidden: int, layers: int) -> jax.Array:
    for _ in range(layers):
        # LayerNorm keeps the logits of off-distribution candidates from running away.
        x = nn.relu(nn.LayerNorm()(nn.Dense(hidden)(x)))
    # A zero output layer rates every candidate alike until the critic has learned: argmax
    # then executes the first, a plain sample. A randomly initialised head instead prefers
    # arbitrary (often outlying) chunks, which cut the BC start's success from 0.39 to 0.10-0.18.
    return nn.Dense(1, kernel_init=nn.initializers.zeros)(x)[..., 0]


class _Head(nn.Module):
    hidden: int
    layers: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _mlp(x, self.hidden, self.layers)


class ChunkCritic(nn.Module):
    """Logit of success from normalised observations (B, n_obs, D) and a chunk (B, n_action, A):
    (B,) for one network, (ensemble, B) for an ensemble of independently initialised ones."""

    hidden: int = 256
    layers: int = 3
    ensemble: int = 1

    @nn.compact
    def __call__(self, obs: jax.Array, chunk: jax.Array) -> jax.Array:
        x = jnp.concatenate([obs.reshape(obs.shape[0], -1), chunk.reshape(chunk.shape[0], -1)], axis=-1)
        if self.ensemble == 1:
            return _mlp(x, self.hidden, self.layers)  # the single critic's param names, as before ensembles
        heads = nn.vmap(_Head, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None,
                        out_axes=0, axis_size=self.ensemble)
        return heads(self.hidden, self.layers, name="heads")(x)


def critic_head_logits(critic: ChunkCritic, params, normalizer: dict, obs: jax.Array, chunk: jax.Array) -> jax.Array:
    """(ensemble, B) success logits, one row per critic network (one row without an ensemble),
    for raw observations (B, n_obs, D) and raw executed chunks (B, n, A)."""
    logits = critic.apply({"params": params}, norm.normalize(normalizer["obs"], obs.astype(jnp.float32)),
                          norm.normalize(normalizer["action"], chunk.astype(jnp.float32)))
    return logits[None] if logits.ndim == 1 else logits


def critic_logits(critic: ChunkCritic, params, normalizer: dict, obs: jax.Array, chunk: jax.Array) -> jax.Array:
    """(B,) success logits: the ensemble's mean."""
    return critic_head_logits(critic, params, normalizer, obs, chunk).mean(axis=0)


def critic_score(critic: ChunkCritic, params, normalizer: dict, obs: jax.Array, chunk: jax.Array,
                 pessimism: float = 0.0) -> jax.Array:
    """(B,) what acting ranks candidates by: the ensemble's mean logit minus `pessimism` times
    its spread, a lower confidence bound against argmax seeking out a critic's extrapolation
    errors. Measured (bench/RESULTS.md, session 13), it does not remove the early dip in RL:
    the young critic is confidently wrong about a correlate (the gripper), not unsure."""
    logits = critic_head_logits(critic, params, normalizer, obs, chunk)
    if pessimism == 0.0 or logits.shape[0] == 1:
        return logits.mean(axis=0)
    return logits.mean(axis=0) - pessimism * logits.std(axis=0)


def critic_loss(critic: ChunkCritic, params, normalizer: dict, obs, chunk, label, mask) -> tuple[jax.Array, dict]:
    """Masked binary cross-entropy of every network's success logit against the episode's
    success (summed over an ensemble's networks, so each learns at the single critic's rate)."""
    heads = critic_head_logits(critic, params, normalizer, obs, chunk)
    logits = heads.mean(axis=0)
    label, mask = jnp.asarray(label, jnp.float32), jnp.asarray(mask, jnp.float32)
    count = jnp.maximum(mask.sum(), 1.0)
    bce = (optax.sigmoid_binary_cross_entropy(heads, label[None]) * mask[None]).sum() / count
    accuracy = (((logits > 0) == (label > 0.5)) * mask).sum() / count
    metrics = {"critic_bce": bce / heads.shape[0], "critic_accuracy": accuracy,
               "critic_mean_prob": (jax.nn.sigmoid(logits) * mask).sum() / count}
    if heads.shape[0] > 1:
        metrics["critic_spread"] = (heads.std(axis=0) * mask).sum() / count
    return bce, metrics


def select_best(chunks: jax.Array, logits: jax.Array, batch: int) -> jax.Array:
    """Each row's best-rated candidate (B, n, A) from chunks (B * N, n, A) and logits (B * N,),
    grouped as N consecutive candidates per row."""
    n = chunks.shape[0] // batch
    best = jnp.argmax(logits.reshape(batch, n), axis=1)
    return chunks.reshape(batch, n, *chunks.shape[1:])[jnp.arange(batch), best]
