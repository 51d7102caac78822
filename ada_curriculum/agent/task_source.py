"""Where actors get tasks, and where episode results go.

`TaskSource` is the scheduler seam: a fixed distribution for now; the curriculum plugs in here
with the same `sample` / `report` / `state` methods. It is the only writer of its state;
results arrive in batches from many actors, tagged with the policy version that produced them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

import envs


class TaskSource:
    def __init__(self, tasks: str = "nominal", seed: int = 0, max_staleness: int | None = None):
        self.tasks = tasks
        self._space = envs.resolve_tasks(tasks)
        self._rng = np.random.default_rng(seed)
        self.max_staleness = max_staleness
        self.episodes = 0
        self.successes = 0
        self.dropped_stale = 0
        self.latest_version = -1

    def sample(self, n: int) -> list[tuple[dict, int]]:
        """n (task params dict, env seed) pairs."""
        out = []
        for _ in range(n):
            task = self._space if isinstance(self._space, envs.TaskParams) else self._space.sample(self._rng)
            out.append((task.to_dict(), int(self._rng.integers(2**31 - 1))))
        return out

    def report(self, results: Sequence[dict], learner_version: int | None = None) -> int:
        """Record episode results ({task, success, steps, version}); returns how many were kept."""
        if learner_version is not None:
            self.latest_version = max(self.latest_version, learner_version)
        kept = 0
        for r in results:
            if self.max_staleness is not None and self.latest_version - r["version"] > self.max_staleness:
                self.dropped_stale += 1
                continue
            self.episodes += 1
            self.successes += int(r["success"])
            kept += 1
        return kept

    def metrics(self) -> dict:
        return {"task_source/episodes": self.episodes, "task_source/successes": self.successes,
                "task_source/dropped_stale": self.dropped_stale}

    def state(self) -> dict:
        """JSON-ready state for checkpoints (restored exactly by `restore`)."""
        return {"tasks": self.tasks, "rng": self._rng.bit_generator.state, "episodes": self.episodes,
                "successes": self.successes, "dropped_stale": self.dropped_stale,
                "latest_version": self.latest_version}

    def restore(self, state: dict) -> None:
        if state.get("tasks") != self.tasks:
            raise ValueError(f"tasks: checkpointed task source used {state.get('tasks')!r}, this run {self.tasks!r}")
        self._rng.bit_generator.state = state["rng"]
        self.episodes, self.successes = state["episodes"], state["successes"]
        self.dropped_stale, self.latest_version = state["dropped_stale"], state["latest_version"]
