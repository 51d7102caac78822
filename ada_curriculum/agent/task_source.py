"""Where actors get tasks, and where episode results go.

`TaskSource` is the scheduler seam: it holds one curriculum state (`ada_curriculum.curriculum`)
and replaces it with what the pure curriculum functions return. It is the only writer of that
state; results arrive in batches from many actors, tagged with the policy version that produced
them. Without a curriculum config it samples the fixed `tasks` distribution, drawing the same
tasks and env seeds as before the curriculum existed.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Sequence

import envs
from ada_curriculum import curriculum as curriculum_lib
from ada_curriculum.curriculum import CurriculumConfig
from ada_curriculum.curriculum.state import private_copy

# Keys of the state TaskSource saved before the curriculum (still read, for old checkpoints).
_LEGACY_KEYS = ("rng", "episodes", "successes", "dropped_stale", "latest_version")


def _as_space(tasks) -> envs.TaskSpace:
    resolved = envs.resolve_tasks(tasks)
    if isinstance(resolved, envs.TaskParams):  # one fixed task: the box holding only it
        return envs.FULL.with_bounds(**{n: (v, v) for n, v in resolved.to_dict().items()})
    return resolved


class TaskSource:
    """Tasks for actors from a curriculum over `tasks` (whatever `envs.resolve_tasks` takes).

    `curriculum` picks the strategy (default: none, the fixed distribution); `tasks` is the
    space it works in, so widening, band and plr want "full". `max_staleness`, when given,
    overrides `curriculum.max_staleness`.
    """

    def __init__(self, tasks="nominal", seed: int = 0, max_staleness: int | None = None,
                 curriculum: CurriculumConfig | None = None):
        cfg = curriculum if curriculum is not None else CurriculumConfig()
        if max_staleness is not None:
            cfg = dataclasses.replace(cfg, max_staleness=max_staleness)
        cfg.validate()
        self.tasks = tasks
        self.curriculum = cfg
        self._space = _as_space(tasks)
        if cfg.strategy != "none" and self._space.low.tolist() == self._space.high.tolist():
            raise ValueError(f"tasks: the {cfg.strategy} curriculum works inside the task space, and {tasks!r} "
                             "is a single task; use 'full'")
        self._state = curriculum_lib.init(self._space, seed, cfg)
        # Ray runs a threaded actor's calls concurrently: each read-modify-write of the state
        # must not interleave with another.
        self._lock = threading.Lock()

    @property
    def max_staleness(self) -> int | None:
        return self.curriculum.max_staleness

    # The counters TaskSource always had, as attributes.
    @property
    def episodes(self) -> int:
        return self._state["episodes"]

    @property
    def successes(self) -> int:
        return self._state["successes"]

    @property
    def dropped_stale(self) -> int:
        return self._state["dropped_stale"]

    @property
    def latest_version(self) -> int:
        return self._state["latest_version"]

    def __getstate__(self) -> dict:  # a lock does not pickle
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def sample(self, n: int) -> list[tuple[dict, int]]:
        """n (task params dict, env seed) pairs."""
        with self._lock:
            self._state, pairs = curriculum_lib.sample_episodes(self._state, n)
        return [(task.to_dict(), seed) for task, seed in pairs]

    def report(self, results: Sequence[dict], learner_version: int | None = None) -> int:
        """Record episode results ({task, success, steps, version}); returns how many were kept."""
        with self._lock:
            before = self._state["episodes"]
            self._state = curriculum_lib.update(self._state, results, learner_version)
            return self._state["episodes"] - before

    def done(self, held_out_success: float, target: float) -> bool:
        """The curriculum covers its whole space and held-out success reached `target`."""
        with self._lock:
            return curriculum_lib.done(self._state, held_out_success, target)

    def metrics(self) -> dict:
        with self._lock:
            s = self._state
            return {"task_source/episodes": s["episodes"], "task_source/successes": s["successes"],
                    "task_source/dropped_stale": s["dropped_stale"], **curriculum_lib.metrics(s)}

    def state(self) -> dict:
        """JSON-ready state for checkpoints (restored exactly by `restore`): the curriculum state
        (layout in curriculum/state.py; it holds rng, episodes, successes, dropped_stale and
        latest_version) plus `tasks`."""
        with self._lock:
            return {"tasks": self.tasks, **private_copy(self._state)}

    def restore(self, state: dict) -> None:
        if state.get("tasks") != self.tasks:
            raise ValueError(f"tasks: checkpointed task source used {state.get('tasks')!r}, this run {self.tasks!r}")
        saved = {k: v for k, v in state.items() if k != "tasks"}
        if "format" not in saved:
            saved = self._from_legacy(saved)
        new = curriculum_lib.restore(saved, self._space, self.curriculum)
        with self._lock:
            self._state = new

    def _from_legacy(self, saved: dict) -> dict:
        """A checkpoint from before the curriculum: the fixed distribution's RNG and counters."""
        if self.curriculum.strategy != "none":
            raise ValueError(f"strategy: the checkpointed task source had no curriculum; this run asks for "
                             f"{self.curriculum.strategy!r}")
        missing = [k for k in _LEGACY_KEYS if k not in saved]
        if missing:
            raise ValueError(f"{missing[0]}: missing from the checkpointed task source state")
        fresh = curriculum_lib.init(self._space, 0, self.curriculum)
        return {**fresh, **{k: saved[k] for k in _LEGACY_KEYS}}
