"""Success-band filtering over task bins (the idea behind ADA's no-op filter).

A task teaches most when the policy sometimes solves it: always-solved tasks give a
success-weighted objective nothing new, never-solved ones give it no positive example. So bins
whose recent success lies in [low, high] get weight 1, judged bins outside the band a small
`out_weight` (kept measured: a bin can drift back into the band as the policy changes), and bins
with fewer than `min_episodes` recent episodes share the `explore` mass uniformly.
"""

from __future__ import annotations

import numpy as np

from ada_curriculum.curriculum import bins as bins_lib
from ada_curriculum.curriculum.config import BandConfig


def weights(stats: dict, cfg: BandConfig) -> np.ndarray:
    """Sampling distribution over bins (zero for bins that hold no valid task)."""
    feasible = np.asarray(stats["feasible"], bool)
    n, s = bins_lib.recent_counts(stats)
    judged = feasible & (n >= cfg.min_episodes)
    rate = s / np.maximum(n, 1)
    in_band = judged & (rate >= cfg.low) & (rate <= cfg.high)
    known = np.where(in_band, 1.0, np.where(judged, cfg.out_weight, 0.0))
    unknown = (feasible & ~judged).astype(np.float64)
    if known.sum() > 0 and unknown.sum() > 0:
        return (1 - cfg.explore) * known / known.sum() + cfg.explore * unknown / unknown.sum()
    if known.sum() > 0:
        return known / known.sum()
    if unknown.sum() > 0:
        return unknown / unknown.sum()
    # Every bin judged out of band with out_weight 0: nothing is preferred, so nothing is excluded.
    return feasible / feasible.sum()


def draw_bin(stats: dict, cfg: BandConfig, rng: np.random.Generator) -> int:
    w = weights(stats, cfg)
    return int(rng.choice(len(w), p=w))
