"""A success baseline over task space: how likely the current policy is to solve a task.

With binary reward, `success - baseline(task)` is an advantage estimate: a success on a task the
policy rarely solves is worth more than one on a task it already solves. `SuccessBaseline` is a
Nadaraya-Watson estimate over the actor's recent episodes (Gaussian kernel on the task dimensions
that change how hard a placement is), shrunk toward the recent mean success when few neighbours
are near. Distances are in units of each dimension's spread over the recent episodes, so one
bandwidth suits a narrow box (`near`) and the whole table alike (a rule-of-thumb bandwidth of
about half a standard deviation per dimension for a few hundred points in five dimensions).
It lives in the actor and is not checkpointed: it is a variance-reduction device that warms up
again within a few dozen episodes.
"""

from __future__ import annotations

import collections

import numpy as np

import envs
from envs.task_space import FIELD_NAMES

# Where the banana and the plate are and how the banana lies: what moves success most.
DEFAULT_DIMS = ("banana_x", "banana_y", "banana_yaw", "target_x", "target_y")


class SuccessBaseline:
    def __init__(self, dims: tuple[str, ...] = DEFAULT_DIMS, bandwidth: float = 0.5, window: int = 256,
                 prior: float = 2.0):
        unknown = [d for d in dims if d not in FIELD_NAMES]
        if unknown:
            raise ValueError(f"dims: {unknown[0]!r} is not a task field")
        if not bandwidth > 0:
            raise ValueError(f"bandwidth: expected > 0, got {bandwidth!r}")
        self._index = np.array([FIELD_NAMES.index(d) for d in dims])
        # Spread floor: a dimension that does not vary (a fixed task) adds no distance.
        full = envs.FULL
        self._floor = 1e-6 * np.array([full[d].high - full[d].low for d in dims])
        self.bandwidth, self.prior = float(bandwidth), float(prior)
        self._points: collections.deque = collections.deque(maxlen=window)
        self._successes: collections.deque = collections.deque(maxlen=window)

    def _point(self, task: envs.TaskParams) -> np.ndarray:
        return task.vector()[self._index]

    def estimate(self, task: envs.TaskParams) -> float:
        """P(success | task) from the recent episodes; 0.5 before any."""
        if not self._points:
            return 0.5
        s = np.asarray(self._successes, np.float64)
        points = np.asarray(self._points)
        spread = points.std(axis=0)
        scale = np.where(spread > self._floor, spread, np.inf)
        d2 = (((points - self._point(task)) / scale) ** 2).sum(axis=1)
        k = np.exp(-0.5 * d2 / self.bandwidth ** 2)
        # Shrinkage toward the recent mean: with few near neighbours, the kernel sum is small.
        return float((k @ s + self.prior * s.mean()) / (k.sum() + self.prior))

    def record(self, task: envs.TaskParams, success: bool) -> None:
        self._points.append(self._point(task))
        self._successes.append(float(success))

    def advantage(self, task: envs.TaskParams, success: bool) -> float:
        """success - baseline(task), then the result is recorded."""
        a = float(success) - self.estimate(task)
        self.record(task, success)
        return a

    def weight(self, task: envs.TaskParams, success: bool) -> float:
        """The episode's training weight, max(success - baseline, 0), then the result is recorded."""
        return max(self.advantage(task, success), 0.0)
