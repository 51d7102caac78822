"""The models of the generation chain: each generation's policy, a student's first variables,
and the frozen teacher snapshot on disk.

The teacher is saved once, at the switch, into its own directory (not into every learner
checkpoint): it never changes during its generation, and a large one would otherwise be
rewritten with every periodic checkpoint.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from ada_curriculum.checkpointing import Checkpointer, CheckpointError
from ada_curriculum.config import ConfigError
from ada_curriculum.distill.schedule import DistillConfig
from ada_curriculum.policies import make_policy
from ada_curriculum.policies import normalizer as normalizer_lib
from ada_curriculum.policies.base import Policy, Variables


def presets_of(kind: str) -> tuple[str, ...]:
    if kind == "diffusion":
        from ada_curriculum.policies.diffusion import PRESETS
    elif kind == "transformer":
        from ada_curriculum.policies.transformer import PRESETS
    else:
        raise ValueError(f"policy: unknown kind {kind!r}")
    return tuple(PRESETS)


def check_generations(cfg: DistillConfig, kind: str, policy_config: Any) -> None:
    """Raise ConfigError naming the field if `cfg.generations` does not fit this policy.

    The run's policy config must be the first generation's, and must not pin the model size
    some other way (diffusion `down_dims` overrides every preset, so the chain would not grow).
    """
    known = presets_of(kind)
    for g in cfg.generations:
        if g not in known:
            raise ConfigError("distill.generations", f"{g!r} is not a {kind} preset (presets: {', '.join(known)})")
    if getattr(policy_config, "down_dims", ()):
        raise ConfigError(f"{kind}.down_dims", "overrides every preset, so the generations would all be the same "
                                               "size; leave it empty with --distill.enabled")
    if policy_config.preset != cfg.generations[0]:
        raise ConfigError(f"{kind}.preset", f"the run starts at the first generation, "
                                            f"{cfg.generations[0]!r}; got {policy_config.preset!r}")


def generation_policy(kind: str, policy_config: Any, preset: str) -> Policy:
    """The run's policy with only the size changed: every generation shares horizon, obs and
    action layout, noise schedule, so teacher and student read the same batches."""
    return make_policy(kind, dataclasses.replace(policy_config, preset=preset))


def init_student(student_policy: Policy, teacher_variables: Variables, rng: jax.Array) -> Variables:
    """Fresh student variables that share the teacher's normaliser.

    Sharing it keeps both models in the same normalised units (so their outputs compare
    directly) and keeps the student's inputs as they were fitted on the demos. The arrays are
    copied: the learner donates its state's buffers each update, which would invalidate a
    normaliser shared with the teacher variables the loss still reads.
    """
    normalizer = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), teacher_variables["normalizer"])
    return student_policy.init(rng, normalizer)


def teacher_dir(run_dir: str | Path, state: Mapping) -> Path:
    """Where generation `state["generation"]`'s teacher snapshot lives in a run directory."""
    g = state["generation"]
    if g == 0:
        raise ValueError("generation: generation 0 has no teacher")
    return Path(run_dir) / "distill" / f"teacher-{g - 1}-{state['generations'][g - 1]}"


def save_teacher(path: str | Path, variables: Variables, meta: Mapping[str, Any]) -> Path:
    """Write the teacher snapshot (variables + JSON meta, e.g. preset and update), replacing
    any earlier one at `path`: a run resumed from before a switch redoes that switch, and the
    snapshot must then be the weights of the redone switch."""
    path = Path(path).absolute()
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ckpt = Checkpointer(tmp, max_to_keep=1)
    try:
        ckpt.save(0, jax.device_get(variables), dict(meta))
    finally:
        ckpt.close()
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)  # the snapshot appears complete or not at all
    return path


def load_teacher(path: str | Path, teacher_policy: Policy) -> tuple[Variables, dict]:
    """(variables, meta) of a teacher snapshot, checked to be `teacher_policy`'s size."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"distill.teacher: no teacher snapshot at {path}")
    template = jax.eval_shape(
        lambda rng: teacher_policy.init(rng, normalizer_lib.identity(teacher_policy.obs_dim,
                                                                     teacher_policy.action_dim)),
        jax.random.PRNGKey(0))
    saved_preset = None
    ckpt = Checkpointer(path, max_to_keep=1)
    try:
        saved_preset = ckpt.read_meta().get("preset")
        if saved_preset is not None and saved_preset != teacher_policy.config.preset:
            raise CheckpointError(f"distill.teacher: {path} holds a {saved_preset!r} teacher, expected "
                                  f"{teacher_policy.config.preset!r}")
        variables, meta, _ = ckpt.restore(template)
    finally:
        ckpt.close()
    # Orbax restores what was saved even when the template's shapes differ, so check here that
    # the snapshot is this policy's size (presets alone do not say: a config may override them).
    want = jax.tree_util.tree_map(lambda x: tuple(x.shape), template)
    got = jax.tree_util.tree_map(lambda x: tuple(x.shape), variables)
    if got != want:
        raise CheckpointError(f"distill.teacher: {path} holds parameters of another size than the "
                              f"{teacher_policy.config.preset!r} {teacher_policy.kind} teacher expected")
    return variables, meta
