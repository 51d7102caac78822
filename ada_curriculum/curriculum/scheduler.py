"""The curriculum as pure functions over a JSON-ready state (layout: `curriculum.state`).

    state = init(space, seed, config)
    state, tasks = sample(state, n)                       # or sample_episodes: (task, env seed) pairs
    state = update(state, results, learner_version)       # results: {task, success, steps, version}
    metrics(state); done(state, held_out_success, target)

No function mutates its argument: each returns a new state, with the RNG inside it, so a state
saved with ``json.dumps`` and loaded back gives the same samples as the original. The caller
(`TaskSource`) is the only writer and swaps in each returned state.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from ada_curriculum.curriculum import band, plr, widening
from ada_curriculum.curriculum import bins as bins_lib
from ada_curriculum.curriculum import state as state_lib
from ada_curriculum.curriculum.config import CurriculumConfig
from envs.task_space import TaskError, TaskParams, TaskSpace

_SEED_HIGH = 2**31 - 1  # env seeds, as TaskSource always drew them


@dataclasses.dataclass(frozen=True)
class _Context:
    """What a state implies, rebuilt per call so the state alone is the truth."""

    cfg: CurriculumConfig
    space: TaskSpace
    grid: bins_lib.BinGrid

    @classmethod
    def of(cls, state: Mapping) -> "_Context":
        cfg = state_lib.config_of(state)
        space = state_lib.space_of(state)
        return cls(cfg, space, bins_lib.BinGrid.make(space, cfg.bins.dims, cfg.bins.per_dim))


def init(space: TaskSpace, seed: int, config: CurriculumConfig | None = None) -> dict:
    """A fresh state over `space` (the outer limit: widening starts at the nominal task inside it)."""
    cfg = config if config is not None else CurriculumConfig()
    cfg.validate()
    state = {
        "format": state_lib.FORMAT, "version": state_lib.VERSION, "strategy": cfg.strategy,
        "config": state_lib.config_dict(cfg), "space": state_lib.plain(space.to_dict()),
        "min_separation": space.min_separation, "space_hash": space.fingerprint(),
        "rng": np.random.default_rng(seed).bit_generator.state,
        **{k: 0 for k in state_lib.COUNTERS}, "latest_version": -1,
    }
    if state_lib.space_of(state).fingerprint() != state["space_hash"]:
        raise ValueError("space: only spaces derived from envs.FULL (with_bounds, min_separation) can be saved")
    grid = bins_lib.BinGrid.make(space, cfg.bins.dims, cfg.bins.per_dim)
    state["bins"] = bins_lib.init_stats(grid)
    if cfg.strategy == "widening":
        state["widening"] = widening.init(space, cfg.widening)
    if cfg.strategy == "plr":
        state["plr"] = plr.init(grid.size)
    return state


def restore(state: Mapping, space: TaskSpace, config: CurriculumConfig | None = None) -> dict:
    """A saved state (e.g. from a checkpoint), checked to continue over `space` (see state.check)."""
    return state_lib.check(state, space, config)


def _draw(new: dict, ctx: _Context, rng: np.random.Generator) -> TaskParams:
    strategy = ctx.cfg.strategy
    if strategy == "none":
        return ctx.space.sample(rng)
    if strategy == "widening":
        return widening.draw(new["widening"], ctx.space, ctx.cfg.widening, rng)
    if strategy == "band":
        i = band.draw_bin(new["bins"], ctx.cfg.band, rng)
    else:
        i = plr.draw_bin(new["plr"], new["bins"], new["sampled"], ctx.cfg.plr, rng)
    return ctx.grid.subspace(i).sample(rng)


def _draw_many(state: Mapping, n: int, seeds: bool) -> tuple[dict, list]:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n: expected an int >= 0, got {n!r}")
    new = state_lib.private_copy(state)
    ctx, rng = _Context.of(new), state_lib.rng_of(new)
    out = []
    for _ in range(int(n)):
        task = _draw(new, ctx, rng)
        new["sampled"] += 1
        out.append((task, int(rng.integers(_SEED_HIGH))) if seeds else task)
    new["rng"] = rng.bit_generator.state
    return new, out


def sample(state: Mapping, n: int) -> tuple[dict, list[TaskParams]]:
    """n tasks from the curriculum, and the state after drawing them."""
    return _draw_many(state, n, seeds=False)


def sample_episodes(state: Mapping, n: int) -> tuple[dict, list[tuple[TaskParams, int]]]:
    """n (task, env seed) pairs; with strategy "none" the same stream TaskSource always drew."""
    return _draw_many(state, n, seeds=True)


def _parse(k: int, r) -> tuple[TaskParams, bool, int | None]:
    """One result, checked before anything changes (a bad batch leaves the state as it was)."""
    if not isinstance(r, Mapping):
        raise ValueError(f"results[{k}]: expected a mapping, got {type(r).__name__}")
    if "task" not in r:
        raise ValueError(f"results[{k}].task: missing")
    try:
        task = r["task"] if isinstance(r["task"], TaskParams) else TaskParams.from_dict(r["task"])
    except TaskError as e:
        raise ValueError(f"results[{k}].task.{e}") from None
    success = r.get("success")
    if not isinstance(success, (bool, np.bool_)) and success not in (0, 1):
        raise ValueError(f"results[{k}].success: expected a bool, got {success!r}")
    version = r.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, (int, np.integer))):
        raise ValueError(f"results[{k}].version: expected an int or None, got {version!r}")
    return task, bool(success), None if version is None else int(version)


def update(state: Mapping, results: Sequence[Mapping], learner_version: int | None = None) -> dict:
    """The state after a batch of episode results ({task, success, steps, version}).

    The newest known version is the largest of the saved one, `learner_version` and the
    results' versions (a result of version v proves the learner reached v). A result more than
    `max_staleness` versions behind it is dropped and counted in `dropped_stale`; a result
    without a version is never stale.
    """
    if learner_version is not None and (isinstance(learner_version, bool)
                                        or not isinstance(learner_version, (int, np.integer))):
        raise ValueError(f"learner_version: expected an int or None, got {learner_version!r}")
    parsed = [_parse(k, r) for k, r in enumerate(results)]
    new = state_lib.private_copy(state)
    ctx = _Context.of(new)
    versions = [v for _, _, v in parsed if v is not None]
    if learner_version is not None:
        versions.append(int(learner_version))
    new["latest_version"] = max([new["latest_version"], *versions])
    limit = ctx.cfg.max_staleness
    for task, success, version in parsed:
        if limit is not None and version is not None and new["latest_version"] - version > limit:
            new["dropped_stale"] += 1
            continue
        new["episodes"] += 1
        new["successes"] += int(success)
        i = ctx.grid.index(task)
        if i is None:
            new["off_space"] += 1
            continue
        bins_lib.record(new["bins"], i, success, ctx.cfg.bins.window)
        if ctx.cfg.strategy == "widening":
            widening.record(new["widening"], ctx.space, ctx.cfg.widening, task, success)
    return new


def bin_weights(state: Mapping) -> np.ndarray | None:
    """The next draw's probability per bin (band, plr); None for strategies that do not pick bins."""
    cfg = state_lib.config_of(state)
    if cfg.strategy == "band":
        return band.weights(state["bins"], cfg.band)
    if cfg.strategy == "plr":
        return plr.current_weights(state["plr"], state["bins"], state["sampled"], cfg.plr)
    return None


def sampling_space(state: Mapping) -> TaskSpace:
    """The box tasks come from now: the widening box, else the whole space."""
    space = state_lib.space_of(state)
    if state["strategy"] == "widening":
        return widening.box(state["widening"], space)
    return space


def coverage(state: Mapping) -> float:
    """How much of its space the curriculum has reached, in [0, 1].

    widening: mean share of each widened dimension's range in the box; others: share of the
    bins that hold valid tasks which have had at least one episode.
    """
    if state["strategy"] == "widening":
        cfg = state_lib.config_of(state)
        return widening.coverage(state["widening"], state_lib.space_of(state), cfg.widening)
    feasible = np.asarray(state["bins"]["feasible"], bool)
    played = feasible & (np.asarray(state["bins"]["episodes"]) > 0)
    return float(played.sum() / max(feasible.sum(), 1))


def coverage_complete(state: Mapping) -> bool:
    """widening: the box is the whole space; others: every bin holding valid tasks is in play."""
    if state["strategy"] == "widening":
        cfg = state_lib.config_of(state)
        return widening.complete(state["widening"], state_lib.space_of(state), cfg.widening)
    feasible = np.asarray(state["bins"]["feasible"], bool)
    return bool(np.all(np.asarray(state["bins"]["episodes"])[feasible] > 0))


def done(state: Mapping, held_out_success: float, target: float) -> bool:
    """The stop condition: the curriculum covers its whole space and held-out success >= target.

    "Whole space" is the space given to `init` (the full task space in training).
    """
    if not (math.isfinite(target) and 0 <= target <= 1):
        raise ValueError(f"target: expected a success rate in [0, 1], got {target!r}")
    return coverage_complete(state) and float(held_out_success) >= target
