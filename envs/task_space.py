"""The task space: named, bounded dimensions of the banana-placement task.

`TaskSpace` is a box over named `Dimension`s plus the constraints the scene needs (the
banana and the target must not overlap). `TaskParams` is one point in it. A curriculum
narrows or widens a `TaskSpace` with `with_bounds`; the full space is the outer limit and
every task is validated against it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Mapping

import numpy as np

from envs import scene


class TaskError(ValueError):
    """Malformed or out-of-bounds task parameters; the message names the field."""


@dataclasses.dataclass(frozen=True)
class Dimension:
    name: str
    low: float
    high: float
    integer: bool = False
    doc: str = ""

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise TaskError(f"{self.name}: bounds must be finite with low <= high, got [{self.low}, {self.high}]")


@dataclasses.dataclass(frozen=True)
class TaskParams:
    """One banana-placement task. Angles in radians, positions in metres on the table."""

    banana_x: float
    banana_y: float
    banana_yaw: float
    target_x: float
    target_y: float
    n_distractors: int
    friction_scale: float
    mass_scale: float
    arm_noise: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> "TaskParams":
        if not isinstance(values, Mapping):
            raise TaskError(f"task: expected a mapping of task fields, got {type(values).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise TaskError(f"{unknown[0]}: not a task field (fields: {', '.join(names)})")
        missing = [n for n in names if n not in values]
        if missing:
            raise TaskError(f"{missing[0]}: missing from task")
        out = {}
        for n in names:
            v = values[n]
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise TaskError(f"{n}: expected a number, got {v!r}")
            if not math.isfinite(float(v)):
                raise TaskError(f"{n}: expected a finite number, got {v!r}")
            if n == "n_distractors":
                if float(v) != int(v):
                    raise TaskError(f"n_distractors: expected an integer, got {v!r}")
                out[n] = int(v)
            else:
                out[n] = float(v)
        return cls(**out)

    def vector(self) -> np.ndarray:
        return np.array([getattr(self, f.name) for f in dataclasses.fields(self)], dtype=np.float64)


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TaskParams))

# Banana and target centres closer than this could start a banana end on the plate
# (half banana length ~0.1 m + plate radius 0.09 m + margin).
MIN_SEPARATION = 0.21

FULL_DIMENSIONS = (
    Dimension("banana_x", 0.38, 0.62, doc="banana centre x (m), forward from the arm base"),
    Dimension("banana_y", -0.28, 0.28, doc="banana centre y (m), left of the arm base"),
    Dimension("banana_yaw", -math.pi, math.pi, doc="banana heading (rad)"),
    Dimension("target_x", 0.38, 0.62, doc="target plate centre x (m)"),
    Dimension("target_y", -0.28, 0.28, doc="target plate centre y (m)"),
    Dimension("n_distractors", 0, scene.MAX_DISTRACTORS, integer=True, doc="number of distractor blocks"),
    Dimension("friction_scale", 0.6, 1.4, doc="scale on banana and table friction"),
    Dimension("mass_scale", 0.6, 1.8, doc="scale on banana mass"),
    Dimension("arm_noise", 0.0, 0.15, doc="std (rad) of the initial arm-joint noise"),
)

# Dimensions along which the task repeats, and the period: the parallel gripper takes the
# banana the same way turned by half a turn (bc-rel-rot's success near a heading of +-pi matches
# that near 0, bench/RESULTS.md), so a curriculum may count both as solved together.
PERIODS = {"banana_yaw": math.pi}

# The one demonstrated placement: banana on the right, plate on the left.
NOMINAL = TaskParams(
    banana_x=0.5, banana_y=-0.15, banana_yaw=0.0, target_x=0.5, target_y=0.15,
    n_distractors=0, friction_scale=1.0, mass_scale=1.0, arm_noise=0.03,
)


@dataclasses.dataclass(frozen=True)
class TaskSpace:
    """A box of task dimensions (a subset of the full space) with sampling and validation."""

    dimensions: tuple[Dimension, ...] = FULL_DIMENSIONS
    min_separation: float = MIN_SEPARATION

    def __post_init__(self):
        names = tuple(d.name for d in self.dimensions)
        if names != FIELD_NAMES:
            raise TaskError(f"dimensions: expected {FIELD_NAMES}, got {names}")
        for d, full in zip(self.dimensions, FULL_DIMENSIONS):
            if d.low < full.low - 1e-9 or d.high > full.high + 1e-9:
                raise TaskError(f"{d.name}: bounds [{d.low}, {d.high}] leave the full range [{full.low}, {full.high}]")

    @property
    def names(self) -> tuple[str, ...]:
        return FIELD_NAMES

    def __getitem__(self, name: str) -> Dimension:
        for d in self.dimensions:
            if d.name == name:
                return d
        raise TaskError(f"{name}: not a task dimension")

    @property
    def low(self) -> np.ndarray:
        return np.array([d.low for d in self.dimensions])

    @property
    def high(self) -> np.ndarray:
        return np.array([d.high for d in self.dimensions])

    def with_bounds(self, **bounds: tuple[float, float]) -> "TaskSpace":
        """A copy with some dimensions' bounds replaced, e.g. `banana_x=(0.45, 0.55)`."""
        dims = {d.name: d for d in self.dimensions}
        for name, (lo, hi) in bounds.items():
            if name not in dims:
                raise TaskError(f"{name}: not a task dimension")
            dims[name] = dataclasses.replace(dims[name], low=float(lo), high=float(hi))
        return dataclasses.replace(self, dimensions=tuple(dims[n] for n in FIELD_NAMES))

    def contains(self, task: TaskParams) -> bool:
        try:
            self.validate(task)
        except TaskError:
            return False
        return True

    def validate(self, task: TaskParams) -> TaskParams:
        """Return `task` if it lies in this space, else raise `TaskError` naming the field."""
        if not isinstance(task, TaskParams):
            raise TaskError(f"task: expected TaskParams, got {type(task).__name__}")
        for d in self.dimensions:
            v = getattr(task, d.name)
            if not math.isfinite(v):
                raise TaskError(f"{d.name}: expected a finite number, got {v}")
            if d.integer and v != int(v):
                raise TaskError(f"{d.name}: expected an integer, got {v}")
            if not d.low - 1e-9 <= v <= d.high + 1e-9:
                raise TaskError(f"{d.name}: {v} is outside [{d.low}, {d.high}]")
        sep = math.hypot(task.banana_x - task.target_x, task.banana_y - task.target_y)
        if sep < self.min_separation - 1e-9:
            raise TaskError(
                f"target_x/target_y: target is {sep:.3f} m from the banana, below the minimum {self.min_separation} m"
            )
        return task

    def sample(self, rng: np.random.Generator, n: int | None = None):
        """Uniform over the box, rejecting tasks that violate the separation constraint."""
        if n is not None:
            return [self.sample(rng) for _ in range(n)]
        for _ in range(1000):
            values = {}
            for d in self.dimensions:
                if d.integer:
                    values[d.name] = int(rng.integers(int(math.ceil(d.low)), int(math.floor(d.high)) + 1))
                else:
                    values[d.name] = float(rng.uniform(d.low, d.high))
            task = TaskParams(**values)
            if self.contains(task):
                return task
        raise TaskError("target_x/target_y: cannot sample a task whose banana and target are separated in these bounds")

    def fingerprint(self) -> str:
        """Stable hash of the bounds, saved with curriculum state to catch a changed space."""
        blob = json.dumps([dataclasses.asdict(d) for d in self.dimensions] + [self.min_separation], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {d.name: [d.low, d.high] for d in self.dimensions}


FULL = TaskSpace()


def nominal_space() -> TaskSpace:
    """The degenerate box holding only the nominal task (arm noise still varies per seed)."""
    return FULL.with_bounds(**{n: (getattr(NOMINAL, n), getattr(NOMINAL, n)) for n in FIELD_NAMES})


NEAR_FRACTION = 0.15


def near_space(fraction: float = NEAR_FRACTION) -> TaskSpace:
    """A small box around the nominal task: each continuous dimension spans `fraction` of its
    full range, centred on the nominal value (clipped to the full range); no distractors.

    The step just past the demonstration: the nominal policy solves part of it, so sparse
    reward already carries signal there (the overlap the curriculum keeps by design)."""
    if not 0.0 <= fraction <= 1.0:
        raise TaskError(f"fraction: expected a value in [0, 1], got {fraction}")
    bounds = {}
    for d in FULL_DIMENSIONS:
        centre = getattr(NOMINAL, d.name)
        if d.integer:
            bounds[d.name] = (centre, centre)
            continue
        half = fraction * (d.high - d.low) / 2
        bounds[d.name] = (max(d.low, centre - half), min(d.high, centre + half))
    return FULL.with_bounds(**bounds)
