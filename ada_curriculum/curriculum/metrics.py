"""The curriculum's metrics: one flat dict of JSON values, every key under ``curriculum/``.

Scalars (one number each, for time series):
    strategy, stage, max_stage, coverage, complete, sampled, episodes, successes, success_rate,
    dropped_stale, off_space, latest_version
    bounds/<dim>/lo, bounds/<dim>/hi     the box tasks are sampled from now
    range/<dim>/lo, range/<dim>/hi       the curriculum's whole space (the limit of widening)
    widening/<dim>/<lo|hi>/n, .../success  (widening) outcomes buffered on each boundary
    plr/proportion_seen                  (plr) share of samplable bins with a result
Per bin (flat lists in C order over bins/shape, for tables):
    bins/dims, bins/shape, bins/feasible, bins/episodes (all time), bins/success (recent window,
    None without recent episodes), bins/weight (band, plr: next draw's probability; else None),
    bins/recent_episodes, bins/recent_successes (counts over each bin's recent window)
    bins/edges: per binned dimension, its bin edges
Heatmap over the first two binned dimensions (banana x/y by default), other dimensions summed:
    heatmap/dims, heatmap/edges ([edges of dim 0, edges of dim 1]),
    heatmap/episodes [i][j] (all time), heatmap/success [i][j] (recent window, None if empty)

stage counts boundary steps taken (widening; 0 otherwise) and max_stage the steps to the whole
space, so stage / max_stage is widening progress.

`success_grids(metrics)` turns the per-bin lists into the metrics store's success grids
(banana x/y and target x/y).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ada_curriculum.curriculum import bins as bins_lib
from ada_curriculum.curriculum import scheduler, widening
from ada_curriculum.curriculum import state as state_lib
from envs.task_space import FIELD_NAMES

P = "curriculum/"


def _rate(successes: np.ndarray, episodes: np.ndarray) -> list:
    return [None if n == 0 else float(s / n) for s, n in zip(successes.ravel(), episodes.ravel())]


def _edges(intervals) -> list[float]:
    return [float(lo) for lo, _ in intervals] + [float(intervals[-1][1])]


def metrics(state: Mapping) -> dict:
    cfg = state_lib.config_of(state)
    space = state_lib.space_of(state)
    box = scheduler.sampling_space(state)
    out: dict = {
        P + "strategy": cfg.strategy,
        P + "stage": int(state["widening"]["stage"]) if cfg.strategy == "widening" else 0,
        P + "max_stage": widening.max_stage(space, cfg.widening) if cfg.strategy == "widening" else 0,
        P + "coverage": scheduler.coverage(state),
        P + "complete": scheduler.coverage_complete(state),
        **{P + k: state[k] for k in (*state_lib.COUNTERS, "latest_version")},
        P + "success_rate": state["successes"] / state["episodes"] if state["episodes"] else None,
    }
    for n in FIELD_NAMES:
        out[f"{P}bounds/{n}/lo"], out[f"{P}bounds/{n}/hi"] = float(box[n].low), float(box[n].high)
        out[f"{P}range/{n}/lo"], out[f"{P}range/{n}/hi"] = float(space[n].low), float(space[n].high)
    if cfg.strategy == "widening":
        for key, buf in state["widening"]["buffers"].items():
            out[f"{P}widening/{key}/n"] = len(buf)
            out[f"{P}widening/{key}/success"] = sum(buf) / len(buf) if buf else None

    b = state["bins"]
    grid = bins_lib.BinGrid.make(space, cfg.bins.dims, cfg.bins.per_dim)
    recent_n, recent_s = bins_lib.recent_counts(b)
    weights = scheduler.bin_weights(state)
    out.update({
        P + "bins/dims": list(cfg.bins.dims), P + "bins/shape": list(grid.shape),
        P + "bins/feasible": list(b["feasible"]), P + "bins/episodes": list(b["episodes"]),
        P + "bins/success": _rate(recent_s, recent_n),
        P + "bins/weight": None if weights is None else [float(w) for w in weights],
        P + "bins/recent_episodes": recent_n.tolist(), P + "bins/recent_successes": recent_s.tolist(),
        P + "bins/edges": [_edges(iv) for iv in grid.intervals],
    })
    if cfg.strategy == "plr":
        feasible = np.asarray(b["feasible"], bool)
        seen = feasible & (np.asarray(b["episodes"]) > 0)
        out[P + "plr/proportion_seen"] = float(seen.sum() / max(feasible.sum(), 1))

    shape = grid.shape + (1,) * (2 - len(grid.shape))  # one binned dimension: a single column
    extra = tuple(range(2, len(shape)))

    def collapse(values) -> np.ndarray:
        return np.asarray(values, np.int64).reshape(shape).sum(axis=extra)

    out[P + "heatmap/dims"] = list(cfg.bins.dims[:2])
    out[P + "heatmap/edges"] = [_edges(iv) for iv in grid.intervals[:2]]
    out[P + "heatmap/episodes"] = collapse(b["episodes"]).tolist()
    hn, hs = collapse(recent_n), collapse(recent_s)
    out[P + "heatmap/success"] = np.array(_rate(hs, hn), dtype=object).reshape(hn.shape).tolist()
    return out


# Dashboard grids: name -> (x dimension, y dimension).
GRIDS = {"banana": ("banana_x", "banana_y"), "target": ("target_x", "target_y")}


def success_grids(m: Mapping) -> dict:
    """Success per bin over each pair of `GRIDS` whose two dimensions are both binned, the other
    binned dimensions summed, in the metrics store's ``curriculum.bins`` format (rows by y bin,
    columns by x bin; see `metrics_store.success_grid`). ``successes`` / ``counts`` cover each
    bin's recent window (what the scheduler judges by); ``episodes`` counts all time."""
    dims, shape = list(m[P + "bins/dims"]), tuple(m[P + "bins/shape"])
    arrays = {key: np.asarray(m[P + "bins/" + key], np.int64).reshape(shape)
              for key in ("recent_successes", "recent_episodes", "episodes")}
    out = {}
    for name, (x, y) in GRIDS.items():
        if x not in dims or y not in dims:
            continue
        i, j = dims.index(x), dims.index(y)

        def plane(a: np.ndarray) -> list:
            a = np.moveaxis(a, (j, i), (0, 1))  # (y bins, x bins, other binned dims...)
            return a.reshape(a.shape[0], a.shape[1], -1).sum(axis=2).tolist()

        out[name] = {"x": x, "y": y, "x_edges": list(m[P + "bins/edges"][i]), "y_edges": list(m[P + "bins/edges"][j]),
                     "successes": plane(arrays["recent_successes"]), "counts": plane(arrays["recent_episodes"]),
                     "episodes": plane(arrays["episodes"])}
    return out
