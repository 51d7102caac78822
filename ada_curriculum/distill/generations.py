"""The models of the generation chain: each generation's policy, a student's first variables,
and the frozen teacher snapshot on disk.

The teacher is saved once, at the switch, into its own directory (not into every learner
checkpoint): it never changes during its generation, and a large one would otherwise be
rewritten with every periodic checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from ada_curriculum.checkpointing import Checkpointer, CheckpointError
from ada_curriculum.config import ConfigError
from ada_curriculum.distill.schedule import DistillConfig, kickstart_ends, kickstart_weight
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
    some other way (diffusion `down_dims` overrides every preset, so the chain would not grow)
    unless `cfg.down_dims` gives every generation its own widths.
    """
    known = presets_of(kind)
    for g in cfg.generations:
        if g not in known:
            raise ConfigError("distill.generations", f"{g!r} is not a {kind} preset (presets: {', '.join(known)})")
    if cfg.down_dims:
        if kind != "diffusion":
            raise ConfigError("distill.down_dims", f"sets U-Net widths; a {kind} policy has none")
        first = cfg.widths(0)
        if getattr(policy_config, "down_dims", ()) not in ((), first):
            raise ConfigError(f"{kind}.down_dims", f"the run starts at the first generation's widths, "
                                                   f"{cfg.down_dims[0]}; got {policy_config.down_dims}")
        for g in range(len(cfg.generations)):
            try:
                generation_config(cfg, policy_config, g).validate()
            except ConfigError as e:
                raise ConfigError("distill.down_dims", f"generation {g} ({cfg.down_dims[g]}): {e}") from None
    elif getattr(policy_config, "down_dims", ()):
        raise ConfigError(f"{kind}.down_dims", "overrides every preset, so the generations would all be the same "
                                               "size; leave it empty with --distill.enabled (or set --distill.down-dims)")
    if policy_config.preset != cfg.generations[0]:
        raise ConfigError(f"{kind}.preset", f"the run starts at the first generation, "
                                            f"{cfg.generations[0]!r}; got {policy_config.preset!r}")


def generation_policy(kind: str, policy_config: Any, preset: str, down_dims: tuple[int, ...] = ()) -> Policy:
    """The run's policy with only the size changed: every generation shares horizon, obs and
    action layout, noise schedule, so teacher and student read the same batches."""
    changes = {"preset": preset}
    if down_dims:
        changes["down_dims"] = tuple(down_dims)
    return make_policy(kind, dataclasses.replace(policy_config, **changes))


def generation_config(cfg: DistillConfig, policy_config: Any, g: int) -> Any:
    """Generation g's policy config: the run's, at preset `generations[g]` (and `down_dims[g]`)."""
    changes = {"preset": cfg.generations[g]}
    if cfg.down_dims:
        changes["down_dims"] = cfg.widths(g)
    elif hasattr(policy_config, "down_dims"):
        changes["down_dims"] = ()
    return dataclasses.replace(policy_config, **changes)


def policy_at(cfg: DistillConfig, kind: str, policy_config: Any, g: int) -> Policy:
    """Generation g's policy."""
    return make_policy(kind, generation_config(cfg, policy_config, g))


def param_count(policy: Policy) -> int:
    """Parameters of `policy`'s model, counted from shapes (nothing is allocated)."""
    shapes = jax.eval_shape(lambda rng: policy.init(rng, normalizer_lib.identity(policy.obs_dim, policy.action_dim)),
                            jax.random.PRNGKey(0))
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes["params"])))


@dataclasses.dataclass(frozen=True)
class Generation:
    """What the learner trains in one generation and how the teacher enters its loss.

    Frozen and picklable (it crosses to a Ray learner). `policy` is the student; from
    generation 1 on, `teacher_policy` is the frozen previous generation, whose snapshot lives
    at `teacher_path`, and the kickstarting weight is a function of the run's update count
    (`weight(updates)`), so nothing about the schedule has to be checkpointed.
    """

    index: int
    policy: Policy
    cfg: DistillConfig
    switch_updates: int = 0
    teacher_policy: Optional[Policy] = None
    teacher_path: Optional[str] = None
    acting: str = "student"  # who the published acting weights are: "student" or "teacher"

    def weight(self, updates: int) -> float:
        if self.teacher_policy is None:
            return 0.0
        return kickstart_weight(self.cfg, max(int(updates) - self.switch_updates, 0))

    def kickstarting(self, updates: int) -> bool:
        """Whether the teacher is still in the loss (once False, for good in this generation)."""
        return self.teacher_policy is not None and int(updates) - self.switch_updates < kickstart_ends(self.cfg)

    @classmethod
    def of(cls, state: Mapping, cfg: DistillConfig, kind: str, policy_config: Any, run_dir) -> "Generation":
        """The generation a stage state (`stage.py`) is in."""
        g = state["generation"]
        if g == 0:
            return cls(0, policy_at(cfg, kind, policy_config, 0), cfg, int(state["switch_updates"]))
        return cls(g, policy_at(cfg, kind, policy_config, g), cfg, int(state["switch_updates"]),
                   policy_at(cfg, kind, policy_config, g - 1), str(teacher_dir(run_dir, state).absolute()),
                   state["acting"])


def init_student(student_policy: Policy, teacher_variables: Variables, rng: jax.Array) -> Variables:
    """Fresh student variables that share the teacher's normaliser, and its success critic.

    Sharing the normaliser keeps both models in the same normalised units (so their outputs
    compare directly) and keeps the student's inputs as they were fitted on the demos. A success
    critic (policies/critic.py) does not depend on the denoiser's size, and what it learned
    (which chunks succeed on which tasks) holds for the student's samples too, so the student
    starts with it rather than with one that ranks candidates at random. The arrays are copied:
    the learner donates its state's buffers each update, which would invalidate arrays shared
    with the teacher variables the loss still reads.
    """
    copy = lambda tree: jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), tree)  # noqa: E731
    variables = student_policy.init(rng, copy(teacher_variables["normalizer"]))
    if student_policy.has_critic:
        teacher_critic = teacher_variables["params"].get("critic")
        if teacher_critic is None:
            raise ValueError("teacher: the student has a success critic and the teacher none; both come from the "
                             "run's diffusion config, so they should match")
        variables = {**variables, "params": {**variables["params"], "critic": copy(teacher_critic)}}
    return variables


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
