"""The kickstarting objective: the usual loss plus `weight x distance_to_teacher`.

    objective = Kickstarting(SuccessWeightedBC(), teacher_policy, target="noise")
    loss, metrics = objective(student_policy, student_variables,
                              with_teacher(batch, teacher_variables, weight), rng)

It has the learner's objective signature `(policy, variables, batch, rng) -> (loss, metrics)`,
so `make_train_step(functools.partial(objective, student_policy), ...)` trains with it
unchanged. The weight and the teacher's variables travel in the batch (`with_teacher`), as
traced arrays: a new weight every update does not recompile, and the teacher's weights are not
baked into the compiled step as constants. They are wrapped in `stop_gradient`, so the
teacher stays frozen whatever the optimiser is given.

Distances (mean squared error in normalised action units; teacher and student share the
normaliser, see `generations.init_student`):
- diffusion, target "noise": the two eps-predictions on the same noised chunk and timestep;
- diffusion, target "action": the chunks both denoise by DDIM (eta 0) from the same initial noise;
- transformer: the action chunks at every valid step (and chunk entry).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from ada_curriculum.policies import normalizer as norm
from ada_curriculum.policies.base import Batch, Policy, Variables
from ada_curriculum.policies.noise_schedule import add_noise, ddim_sample

WEIGHT_KEY = "distill_weight"
TEACHER_KEY = "distill_teacher"


def with_teacher(batch: Batch, teacher_variables: Variables, weight: float) -> Batch:
    """`batch` plus the kickstarting inputs (the weight as a float32 array, so it is traced)."""
    return {**batch, WEIGHT_KEY: np.asarray(weight, np.float32), TEACHER_KEY: teacher_variables}


def _check_pair(student: Policy, teacher: Policy) -> None:
    # Checked while tracing (Python values), so a mismatch fails once, with the field named.
    if student.kind != teacher.kind:
        raise ValueError(f"teacher: a {teacher.kind} teacher cannot kickstart a {student.kind} student")
    for name in ("obs_dim", "action_dim", "n_obs_steps", "n_action_steps"):
        if getattr(student, name) != getattr(teacher, name):
            raise ValueError(f"teacher.{name}: {getattr(teacher, name)} differs from the student's "
                             f"{getattr(student, name)}")
    if student.kind == "diffusion":
        for name in ("horizon", "num_train_timesteps"):
            a, b = getattr(student.config, name), getattr(teacher.config, name)
            if a != b:
                raise ValueError(f"teacher.{name}: {b} differs from the student's {a}")


def _diffusion_inputs(policy: Policy, batch: Batch) -> tuple[jax.Array, jax.Array]:
    # Replay windows may be longer than the policy's; cut them as `objectives.policy_inputs` does.
    obs = jnp.asarray(batch["obs"])[:, : policy.n_obs_steps]
    action = jnp.asarray(batch["action"], jnp.float32)[:, : policy.config.horizon]
    return obs, action


def _noise_distance(student, s_vars, teacher, t_vars, batch, rng) -> jax.Array:
    obs, action = _diffusion_inputs(student, batch)
    x0 = norm.normalize(s_vars["normalizer"]["action"], action)
    t_key, noise_key = jax.random.split(rng)
    t = jax.random.randint(t_key, (x0.shape[0],), 0, student.config.num_train_timesteps)
    noisy = add_noise(student.schedule(), x0, jax.random.normal(noise_key, x0.shape, jnp.float32), t)
    eps_student = student.noise_prediction(s_vars, noisy, t, obs)
    eps_teacher = teacher.noise_prediction(t_vars, noisy, t, obs)
    return jnp.mean(jnp.square(eps_student - eps_teacher))


def _denoised(policy, variables, obs, rng, steps: int) -> jax.Array:
    """Normalised chunk (B, horizon, A) by deterministic DDIM; differentiable in the params."""
    denoise = lambda x, t: policy.noise_prediction(variables, x, t, obs)  # noqa: E731
    shape = (obs.shape[0], policy.config.horizon, policy.action_dim)
    return ddim_sample(denoise, policy.schedule(), shape, rng, steps, eta=0.0)


def _action_distance(student, s_vars, teacher, t_vars, batch, rng, steps: int | None) -> jax.Array:
    obs, _ = _diffusion_inputs(student, batch)
    steps = student.config.num_inference_steps if steps is None else int(steps)
    # The same rng: both chains start from the same noise, so only the models differ.
    chunk_student = _denoised(student, s_vars, obs, rng, steps)
    chunk_teacher = _denoised(teacher, t_vars, obs, rng, steps)
    return jnp.mean(jnp.square(chunk_student - chunk_teacher))


def _sequence_distance(student, s_vars, teacher, t_vars, batch) -> jax.Array:
    # Deterministic forward passes (no dropout): the distance measures the models, not noise.
    pred_student = student.action_outputs(s_vars, batch)
    pred_teacher = teacher.action_outputs(t_vars, batch)
    m = batch["mask"].astype(bool)[:, :, None]
    if "action_mask" in batch:
        m = m & batch["action_mask"].astype(bool)
    m = jnp.broadcast_to(m, pred_student.shape[:3]).astype(jnp.float32)
    err = jnp.mean(jnp.square(pred_student - pred_teacher), axis=-1)
    return jnp.sum(m * err) / jnp.maximum(jnp.sum(m), 1.0)


def distance_to_teacher(student: Policy, student_variables: Variables, teacher: Policy,
                        teacher_variables: Variables, batch: Batch, rng: jax.Array,
                        target: Literal["noise", "action"] = "noise", denoise_steps: int | None = None) -> jax.Array:
    """Mean squared distance between student and teacher outputs on `batch` (a scalar).

    Unweighted over the batch: every window the student trains on is a state where the
    teacher's behaviour is informative, successful episode or not. The teacher's variables
    are behind `stop_gradient`.
    """
    _check_pair(student, teacher)
    teacher_variables = jax.lax.stop_gradient(teacher_variables)
    if student.kind == "transformer":
        return _sequence_distance(student, student_variables, teacher, teacher_variables, batch)
    if student.kind != "diffusion":
        raise ValueError(f"policy: no distillation distance for kind {student.kind!r}")
    if target == "noise":
        return _noise_distance(student, student_variables, teacher, teacher_variables, batch, rng)
    if target == "action":
        return _action_distance(student, student_variables, teacher, teacher_variables, batch, rng, denoise_steps)
    raise ValueError(f"target: expected 'noise' or 'action', got {target!r}")


def policy_loss(policy: Policy, variables: Variables, batch: Batch, rng: jax.Array):
    """The policy's own loss as an objective (pretraining-style batches)."""
    return policy.loss(variables, batch, rng)


@dataclasses.dataclass(frozen=True)
class Kickstarting:
    """`base(policy, variables, batch, rng)` + weight x distance to `teacher` (see module doc).

    The batch must carry `WEIGHT_KEY` and `TEACHER_KEY` (`with_teacher`); they are removed
    before the base objective sees it. While the weight is 0 the teacher is not run at all
    (`lax.cond`), and `distill/distance` reads 0 with `distill/active` 0.
    """

    base: Callable[..., Any]
    teacher: Policy
    target: Literal["noise", "action"] = "noise"
    denoise_steps: int | None = None

    def __call__(self, policy: Policy, variables: Variables, batch: Batch, rng: jax.Array):
        weight = jnp.asarray(batch[WEIGHT_KEY], jnp.float32)
        teacher_variables = batch[TEACHER_KEY]
        base_batch = {k: v for k, v in batch.items() if k not in (WEIGHT_KEY, TEACHER_KEY)}
        base_rng, distill_rng = jax.random.split(rng)
        base_loss, metrics = self.base(policy, variables, base_batch, base_rng)
        active = weight > 0
        distance = jax.lax.cond(
            active,
            lambda: distance_to_teacher(policy, variables, self.teacher, teacher_variables, base_batch,
                                        distill_rng, self.target, self.denoise_steps).astype(jnp.float32),
            lambda: jnp.zeros((), jnp.float32))
        loss = base_loss + weight * distance
        return loss, {**metrics, "loss": loss, "distill/base_loss": base_loss, "distill/weight": weight,
                      "distill/distance": distance, "distill/active": active.astype(jnp.float32)}
