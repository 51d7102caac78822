"""A grid of bins over some task dimensions, and per-bin success counts.

Band and PLR treat each bin as a "level": they choose a bin, then a task uniformly inside it.
Every strategy keeps the per-bin counts, so the dashboard can draw success over banana x/y.
The grid is a pure function of (space, dims, per_dim), so only the counts live in the state.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ada_curriculum.curriculum import constraints
from envs.task_space import TaskParams, TaskSpace


def _intervals(space: TaskSpace, name: str, per_dim: int) -> list[tuple[float, float]]:
    d = space[name]
    if d.integer:
        values = np.arange(int(math.ceil(d.low)), int(math.floor(d.high)) + 1)
        groups = np.array_split(values, min(per_dim, len(values)))
        return [(float(g[0]), float(g[-1])) for g in groups]
    if d.high <= d.low:  # a fixed dimension is one bin, whatever per_dim says
        return [(d.low, d.high)]
    edges = np.linspace(d.low, d.high, per_dim + 1)
    edges[-1] = d.high  # exact, so the last bin ends on the space's bound
    return [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:])]


@dataclasses.dataclass(frozen=True)
class BinGrid:
    space: TaskSpace
    dims: tuple[str, ...]
    intervals: tuple[tuple[tuple[float, float], ...], ...]  # per dim, its bins' (low, high)

    @classmethod
    def make(cls, space: TaskSpace, dims: tuple[str, ...], per_dim: int) -> "BinGrid":
        return cls(space, tuple(dims), tuple(tuple(_intervals(space, n, per_dim)) for n in dims))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(iv) for iv in self.intervals)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def bounds(self, i: int) -> dict[str, tuple[float, float]]:
        idx = np.unravel_index(i, self.shape)
        return {n: self.intervals[k][int(j)] for k, (n, j) in enumerate(zip(self.dims, idx))}

    def subspace(self, i: int) -> TaskSpace:
        return self.space.with_bounds(**self.bounds(i))

    def index(self, task: TaskParams) -> int | None:
        """The bin holding `task`, or None when it lies outside the grid's space."""
        if not self.space.contains(task):
            return None
        idx = []
        for name, ivs in zip(self.dims, self.intervals):
            v = getattr(task, name)
            # Bins share their edges: a value on an edge goes to the higher bin.
            lows = np.array([lo for lo, _ in ivs])
            idx.append(int(np.clip(np.searchsorted(lows, v, side="right") - 1, 0, len(ivs) - 1)))
        return int(np.ravel_multi_index(idx, self.shape))

    def feasible(self) -> list[bool]:
        """Bins that hold enough valid tasks to sample from (banana and plate apart)."""
        return [constraints.samplable(self.subspace(i)) for i in range(self.size)]


def init_stats(grid: BinGrid) -> dict:
    n = grid.size
    return {"shape": list(grid.shape), "feasible": grid.feasible(), "episodes": [0] * n, "successes": [0] * n,
            "recent": [[] for _ in range(n)]}


def record(stats: dict, i: int, success: bool, window: int) -> None:
    """Count one outcome in bin i (mutates `stats`; callers hold a private copy)."""
    stats["episodes"][i] += 1
    stats["successes"][i] += int(success)
    recent = stats["recent"][i]
    recent.append(int(success))
    del recent[:-window]


def recent_counts(stats: dict) -> tuple[np.ndarray, np.ndarray]:
    """(episodes, successes) per bin over each bin's recent window."""
    n = np.array([len(r) for r in stats["recent"]], dtype=np.int64)
    s = np.array([sum(r) for r in stats["recent"]], dtype=np.int64)
    return n, s
