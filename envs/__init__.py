"""Task side of ada-curriculum: MuJoCo banana pick-and-place behind dm_env.

`make(name, **kwargs)` builds a registered environment; `names()` lists them.
"""

import ctypes.util
import os

# Offscreen rendering on a headless CPU machine goes through OSMesa; MuJoCo reads MUJOCO_GL
# once, at import, and fails to import if the library is named but missing.
if not os.environ.get("DISPLAY") and "MUJOCO_GL" not in os.environ and ctypes.util.find_library("OSMesa"):
    os.environ["MUJOCO_GL"] = "osmesa"
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

from envs.banana_place import BananaPlace, TimeStep, resolve_tasks  # noqa: E402
from envs.demonstrator import ScriptedDemonstrator  # noqa: E402
from envs.task_space import (  # noqa: E402
    FULL, NOMINAL, Dimension, TaskError, TaskParams, TaskSpace, near_space, nominal_space,
)

_REGISTRY = {
    "banana-place": dict(trials=1),
    "banana-place-multi": dict(trials=3),
    # Two look-alike plates, one rewarded per episode: what only memory of earlier trials solves.
    "banana-place-hidden": dict(trials=3, hidden_plate=True),
}


def names() -> list[str]:
    return sorted(_REGISTRY)


def rotation_symmetric(name: str, env_kwargs: dict | None = None) -> bool:
    """Whether a scene of env `name` turned about the vertical is another valid scene of it.

    Not for the hidden plates: they sit along world x, so a turned window carries the banana to
    where no plate is.
    """
    return not {**_REGISTRY.get(name, {}), **(env_kwargs or {})}.get("hidden_plate", False)


def make(name: str, **kwargs) -> BananaPlace:
    """Build environment `name`; keyword arguments override its defaults (see `BananaPlace`)."""
    if name not in _REGISTRY:
        raise TaskError(f"env: unknown environment {name!r} (known: {', '.join(names())})")
    return BananaPlace(**{**_REGISTRY[name], **kwargs})


__all__ = [
    "BananaPlace", "Dimension", "FULL", "NOMINAL", "ScriptedDemonstrator", "TaskError", "TaskParams",
    "TaskSpace", "TimeStep", "make", "names", "near_space", "nominal_space", "resolve_tasks", "rotation_symmetric",
]
