"""Orbax checkpoints of a run: the train state pytree plus a JSON `meta` record.

`meta` holds what is not an array: the run config (checked for compatibility on resume),
counters, and anything else a component wants back (curriculum state, replay checkpoint
path...). Orbax writes each step into a temporary directory and renames it when complete,
so a stop mid-save leaves the previous step intact; a step that is complete on disk but
unreadable (say, a truncated file) is skipped with a warning in favour of the one before.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(Exception):
    """No usable checkpoint, or one from an incompatible config; one line naming the field."""


class Checkpointer:
    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False,
                cleanup_tmp_directories=True),
            item_names=("state", "meta"),
        )

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> bool:
        """Save `step` (False if that step is already on disk, e.g. a final save after a periodic one)."""
        if int(step) in self._manager.all_steps():
            return False
        self._manager.save(
            int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))),
            force=True)
        self._manager.wait_until_finished()
        return True

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict, int]:
        """(state, meta, step) from `step`, or the newest readable step. `target` gives structure."""
        steps = [step] if step is not None else self.steps()[::-1]
        if not steps:
            raise CheckpointError(f"checkpoint: no checkpoint in {self.directory}")
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        errors = []
        for s in steps:
            try:
                restored = self._manager.restore(
                    s, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
                if s != steps[0]:
                    log.warning("checkpoint: fell back to step %d (newer ones unreadable: %s)", s, "; ".join(errors))
                # Arrays this process owns: restored arrays can share memory with buffers the
                # reader keeps, and a jitted step that donates its state (pretrain's, the
                # learner's) must not hand those to XLA to reuse (heap corruption, seen on resume).
                state = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), restored["state"])
                return state, dict(restored["meta"]), s
            except Exception as e:  # noqa: BLE001 - any failure to read means "try the previous step"
                msg = " ".join(str(e).split())[:200]
                errors.append(f"step {s}: {type(e).__name__}: {msg}")
                log.warning("checkpoint: step %d unreadable (%s: %s)", s, type(e).__name__, msg)
        raise CheckpointError(f"checkpoint: no readable checkpoint in {self.directory} ({errors[-1]})")

    def read_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"checkpoint: no checkpoint in {self.directory}")
        return dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def close(self):
        self._manager.close()


def check_compatible(saved: Mapping[str, Any], current: Mapping[str, Any], keys, prefix: str = "") -> None:
    """Raise `CheckpointError` naming the first field where two config dicts disagree."""
    for key in keys:
        if "." in key:  # a nested field, e.g. "curriculum.strategy"
            head, rest = key.split(".", 1)
            if head in saved:  # absent: a checkpoint from before the field existed
                check_compatible(saved[head] or {}, current.get(head) or {}, [rest], prefix + head + ".")
            continue
        if key not in saved:  # a field added since the checkpoint was made
            continue
        a, b = saved[key], current.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            check_compatible(a, b, sorted(set(a) | set(b)), prefix + key + ".")
        elif a != b:
            raise CheckpointError(
                f"{prefix}{key}: the checkpoint was made with {a!r}, this run asks for {b!r}; "
                "use a new run directory or the same setting")
