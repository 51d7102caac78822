"""An ADR-style expanding box (OpenAI et al. 2019, automatic domain randomization).

Every widened dimension starts at the nominal task; each of its two boundaries ("lo", "hi")
keeps a buffer of outcomes of episodes played exactly on that boundary. When a buffer holds
`window` outcomes its success is compared with `threshold`: at or above it, the boundary moves
out by `step` of the space's range (at least one value for an integer dimension), clipped to the
space; either way the buffer is cleared, as in ADR. Boundaries never move in, so each box
contains every earlier one and the solved region stays in the sampled set (the overlap argument).

Sampling: with probability `boundary_prob` a task is pinned to one boundary that can still move
(chosen uniformly) with the other dimensions uniform in the box, which is how ADR measures a
boundary; otherwise it is uniform over the box. A result counts for a boundary when its value
lies on that boundary: results need no tag, results from before a boundary moved no longer
count for it, and while a dimension is a single value every result measures both its sides.

At most one boundary moves per decision. While dimensions are single values, one result fills
the windows of all their boundaries at once; moving every one that passed would be a joint jump
no episode has tested (measured in bench/curriculum_run.py: all nine dimensions widened within
35 episodes and on-policy success fell from 0.71 to 0.04). So the boundaries one result
completes are decided together: all their windows restart, and only the best of those that
passed moves (highest success, then the least widened dimension, then in turn by stage).

Periodic dimensions (`cfg.periodic`, periods in envs.task_space.PERIODS): the banana turned by
half a turn is grasped as at the nominal heading, so a box starting at heading 0 alone would
reach the equally solved +-pi last. For such a dimension the box's bounds are one copy, inside
the period around the nominal value, and a draw lands in any copy of it in the space (chosen
uniformly); a result counts for a boundary when its value, brought back into that period, lies
on it. The box is complete when the copy spans the whole period.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ada_curriculum.curriculum import constraints
from ada_curriculum.curriculum.config import WideningConfig
from envs.task_space import FIELD_NAMES, NOMINAL, PERIODS, TaskParams, TaskSpace

SIDES = ("lo", "hi")
_ON_BOUNDARY = 1e-9  # values are copied, never recomputed, so only float noise needs allowing


def init(space: TaskSpace, cfg: WideningConfig) -> dict:
    lo, hi = {}, {}
    for name in FIELD_NAMES:
        d = space[name]
        if name in cfg.dims:
            lo[name] = hi[name] = _centre(space, name)
        else:
            lo[name], hi[name] = float(d.low), float(d.high)
    return {"lo": lo, "hi": hi, "stage": 0, "buffers": {f"{n}/{s}": [] for n in cfg.dims for s in SIDES}}


def box(w: dict, space: TaskSpace) -> TaskSpace:
    """The box tasks are sampled from now."""
    return space.with_bounds(**{n: (w["lo"][n], w["hi"][n]) for n in FIELD_NAMES})


def _centre(space: TaskSpace, name: str) -> float:
    d = space[name]
    return float(min(max(getattr(NOMINAL, name), d.low), d.high))


def limits(space: TaskSpace, name: str, cfg: WideningConfig) -> tuple[float, float]:
    """How far a dimension's box may widen: the space's range, or one period of it around the
    nominal value for a periodic dimension."""
    d = space[name]
    if name not in cfg.periodic:
        return float(d.low), float(d.high)
    c, half = _centre(space, name), PERIODS[name] / 2
    return max(float(d.low), c - half), min(float(d.high), c + half)


def limit(space: TaskSpace, name: str, side: str, cfg: WideningConfig) -> float:
    return limits(space, name, cfg)[0 if side == "lo" else 1]


def in_period(space: TaskSpace, name: str, value: float) -> float:
    """`value` moved by whole periods into the period around the nominal value."""
    c, p = _centre(space, name), PERIODS[name]
    return c + (value - c + p / 2) % p - p / 2


def copy_of(value: float, space: TaskSpace, name: str, rng: np.random.Generator) -> float:
    """One of `value`'s copies (shifts by whole periods) inside the space, chosen uniformly."""
    d, p = space[name], PERIODS[name]
    ks = range(int(np.ceil((d.low - value) / p - 1e-9)), int(np.floor((d.high - value) / p + 1e-9)) + 1)
    k = ks[int(rng.integers(len(ks)))]
    return float(min(max(value + k * p, d.low), d.high))  # the clip only absorbs float noise


def step_size(space: TaskSpace, name: str, cfg: WideningConfig) -> float:
    """`cfg.step` of the range the dimension widens across (one period for a periodic one)."""
    lo, hi = limits(space, name, cfg)
    width = hi - lo
    return float(max(1, round(cfg.step * width))) if space[name].integer else cfg.step * width


def moved(value: float, lim: float, delta: float, side: str) -> float:
    return max(lim, value - delta) if side == "lo" else min(lim, value + delta)


def live(w: dict, space: TaskSpace, cfg: WideningConfig) -> list[tuple[str, str]]:
    """Boundaries that have not reached the space's bounds yet."""
    return [(n, s) for n in cfg.dims for s in SIDES if w[s][n] != limit(space, n, s, cfg)]


def complete(w: dict, space: TaskSpace, cfg: WideningConfig) -> bool:
    return not live(w, space, cfg)


def max_stage(space: TaskSpace, cfg: WideningConfig) -> int:
    """Boundary steps from the nominal task to the whole space (the last stage number)."""
    start, total = init(space, cfg), 0
    for n in cfg.dims:
        for s in SIDES:
            v, lim, delta = start[s][n], limit(space, n, s, cfg), step_size(space, n, cfg)
            bound = int(np.ceil(abs(lim - v) / delta)) + 1 if delta > 0 else 0
            for _ in range(bound):
                if v == lim:
                    break
                v, total = moved(v, lim, delta, s), total + 1
            if v != lim:  # a bug in `moved`, not a config problem: fail rather than loop
                raise RuntimeError(f"{n}: the {s} boundary does not reach {lim} in steps of {delta}")
    return total


def draw(w: dict, space: TaskSpace, cfg: WideningConfig, rng: np.random.Generator) -> TaskParams:
    b = box(w, space)
    boundaries = live(w, space, cfg)
    if boundaries and rng.random() < cfg.boundary_prob:
        # A slice through a position boundary can hold no valid banana/plate placement yet
        # (the plate's range has not widened away from it); such a boundary waits.
        probes = [(n, s) for n, s in boundaries
                  if n not in constraints.POSITION_DIMS
                  or constraints.samplable(b.with_bounds(**{n: (w[s][n], w[s][n])}))]
        if probes:
            n, s = probes[int(rng.integers(len(probes)))]
            return _copies(b.with_bounds(**{n: (w[s][n], w[s][n])}).sample(rng), space, cfg, rng)
    return _copies(b.sample(rng), space, cfg, rng)


def _copies(task: TaskParams, space: TaskSpace, cfg: WideningConfig, rng: np.random.Generator) -> TaskParams:
    if not cfg.periodic:  # no draw from the RNG: the sample stream of plain widening is unchanged
        return task
    return dataclasses.replace(task, **{n: copy_of(getattr(task, n), space, n, rng) for n in cfg.periodic})


def record(w: dict, space: TaskSpace, cfg: WideningConfig, task: TaskParams, success: bool) -> int:
    """Count one outcome for the boundaries it lies on; returns how many boundaries moved out (0 or 1).

    Mutates `w` (callers hold a private copy).
    """
    decided = []  # (success rate, name, side) of the windows this outcome completes
    for n in cfg.dims:
        v = getattr(task, n)
        if n in cfg.periodic:
            v = in_period(space, n, v)
        for s in SIDES:
            edge, lim = w[s][n], limit(space, n, s, cfg)
            if edge == lim or abs(v - edge) > _ON_BOUNDARY:
                continue
            buf = w["buffers"][f"{n}/{s}"]
            buf.append(int(success))
            if len(buf) >= cfg.window:
                decided.append((sum(buf) / len(buf), n, s))
                buf.clear()
    passed = [d for d in decided if d[0] >= cfg.threshold]
    if not passed:
        return 0
    best = max(rate for rate, _, _ in passed)
    tied = [(n, s) for rate, n, s in passed if rate == best]
    shares = {n: _share(w, space, n, cfg) for n, _ in tied}
    tied = [(n, s) for n, s in tied if shares[n] == min(shares.values())]  # the least widened first
    n, s = tied[w["stage"] % len(tied)]
    w[s][n] = moved(w[s][n], limit(space, n, s, cfg), step_size(space, n, cfg), s)
    w["stage"] += 1
    return 1


def _share(w: dict, space: TaskSpace, name: str, cfg: WideningConfig) -> float:
    """The share of the range a dimension may widen to that the box spans."""
    lo, hi = limits(space, name, cfg)
    return 1.0 if hi <= lo else (w["hi"][name] - w["lo"][name]) / (hi - lo)


def coverage(w: dict, space: TaskSpace, cfg: WideningConfig) -> float:
    """Mean share of each widened dimension's range that the box spans (1 when complete)."""
    return float(np.mean([_share(w, space, n, cfg) for n in cfg.dims]))
