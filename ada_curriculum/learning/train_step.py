"""`train_step(state, batch) -> (state, metrics)`: one update, as a pure (jittable) function.

The loss comes from the policy (`policy.loss(variables, batch, rng)`), optionally plus extra
terms (`extra_loss(params, batch, rng)`, e.g. distillation); the step adds what a long run
needs to stay healthy: dynamic gradient clipping on norm jumps, per-module gradient norms,
skipping of non-finite updates, and an EMA of the parameters for acting.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from ada_curriculum.learning.train_state import OptimConfig, TrainState


def module_grad_norms(grads: dict) -> dict:
    """Gradient norm per top-level module (e.g. `grad_norm/encoder`), for per-module plots."""
    while isinstance(grads, dict) and len(grads) == 1 and "params" in grads:
        grads = grads["params"]
    if not isinstance(grads, dict):
        return {}
    return {f"grad_norm/{name}": optax.global_norm(sub) for name, sub in grads.items()}


def make_train_step(policy_or_loss, optimizer: optax.GradientTransformation, cfg: OptimConfig,
                    extra_loss: Callable | None = None) -> Callable:
    """`policy_or_loss`: a policy (its `loss` is used) or any `loss(variables, batch, rng)`."""
    base_loss = getattr(policy_or_loss, "loss", policy_or_loss)

    def loss_fn(params, normalizer, batch, rng):
        loss, metrics = base_loss({"params": params, "normalizer": normalizer}, batch, rng)
        if extra_loss is not None:
            extra, extra_metrics = extra_loss(params, normalizer, batch, rng)
            loss = loss + extra
            metrics = {**metrics, **extra_metrics}
        return loss, metrics

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng, step_rng = jax.random.split(state.rng)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.normalizer, batch, step_rng)
        norm = optax.global_norm(grads)
        per_module = module_grad_norms(grads)  # before clipping: the spike is what we want to see
        finite = jnp.isfinite(loss) & jnp.isfinite(norm)

        # Clip back to clip_factor x the running norm when the norm jumps; before any history
        # exists (first update) only the absolute ceiling applies.
        reference = jnp.where(state.grad_norm_avg > 0, cfg.clip_factor * state.grad_norm_avg, cfg.max_grad_norm)
        limit = jnp.minimum(reference, cfg.max_grad_norm)
        clipped = norm > limit
        scale = jnp.where(clipped, limit / jnp.maximum(norm, 1e-12), 1.0)
        grads = jax.tree_util.tree_map(lambda g: jnp.where(finite, g * scale, 0.0), grads)

        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        step = state.step + 1
        decay = jnp.asarray(cfg.ema_decay, jnp.float32)
        if cfg.ema_warmup:
            decay = jnp.minimum(decay, 1.0 - (1.0 + step.astype(jnp.float32)) ** -0.75)
        ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)

        # A non-finite loss or gradient leaves every part of the state as it was (but the rng
        # and the skip counter), so one bad batch cannot poison params or optimiser moments.
        keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        applied_norm = jnp.minimum(norm, limit)
        new_avg = jnp.where(state.grad_norm_avg > 0,
                            cfg.clip_norm_decay * state.grad_norm_avg + (1 - cfg.clip_norm_decay) * applied_norm,
                            applied_norm)
        new_state = state.replace(
            step=jnp.where(finite, step, state.step),
            params=keep(params, state.params),
            ema_params=keep(ema, state.ema_params),
            opt_state=keep(opt_state, state.opt_state),
            rng=rng,
            grad_norm_avg=jnp.where(finite, new_avg, state.grad_norm_avg),
            clip_count=state.clip_count + (finite & clipped).astype(jnp.int32),
            skip_count=state.skip_count + (~finite).astype(jnp.int32),
        )
        metrics = {
            **metrics, "grad_norm": norm, "grad_norm_limit": limit, "clipped": clipped.astype(jnp.float32),
            "skipped": (~finite).astype(jnp.float32), "ema_decay": decay,
            **per_module,
        }
        return new_state, metrics

    return train_step
