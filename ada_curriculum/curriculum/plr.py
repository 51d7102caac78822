"""Prioritized Level Replay (Jiang, Grefenstette and Rocktaschel, ICML 2021) over task bins.

A "level" is a bin of task space. Each draw first decides between replaying a seen bin and
trying an unseen one, then replays from

    P_replay = (1 - rho) * P_S + rho * P_C
    P_S(l_i) = h(S_i)^(1/beta) / sum_j h(S_j)^(1/beta),   h(S_i) = 1 / rank(S_i)
    P_C(l_i) = (c - C_i) / sum_j (c - C_j)

over the seen bins, where S_i is bin i's score, rank 1 is the highest score (ties go to the lower
bin index), c is the number of tasks drawn so far and C_i the value of c after bin i was last
drawn. If every seen bin was drawn just now (all c - C_j = 0), P_C is uniform over them.

Score: the paper scores a level by the mean positive value loss |G - V| of its last episode.
Our return is binary success, and for a Bernoulli(p) return with a calibrated value V = p,
E|G - V| = 2 p (1 - p); we use S_i = p_i (1 - p_i) (the factor 2 cannot change a rank) with
p_i the bin's recent success, Laplace-smoothed ((successes + 1) / (episodes + 2)) so a bin seen
once is neither certainly solved nor certainly hopeless.
"""

from __future__ import annotations

import numpy as np

from ada_curriculum.curriculum import bins as bins_lib
from ada_curriculum.curriculum.config import PLRConfig


def init(n_bins: int) -> dict:
    return {"last_sampled": [0] * n_bins}


def scores(recent_episodes: np.ndarray, recent_successes: np.ndarray) -> np.ndarray:
    p = (np.asarray(recent_successes, np.float64) + 1.0) / (np.asarray(recent_episodes, np.float64) + 2.0)
    return p * (1.0 - p)


def ranks(values: np.ndarray) -> np.ndarray:
    """1 for the largest value; ties broken by position (a stable sort)."""
    order = np.argsort(-np.asarray(values, np.float64), kind="stable")
    out = np.empty(len(order), dtype=np.int64)
    out[order] = np.arange(1, len(order) + 1)
    return out


def replay_weights(scores: np.ndarray, seen: np.ndarray, last_sampled: np.ndarray, clock: int,
                   temperature: float, staleness_coef: float) -> np.ndarray:
    """P_replay over all bins (zero for unseen ones): the published formula, see the module doc."""
    seen = np.asarray(seen, bool)
    out = np.zeros(len(seen))
    if not seen.any():
        return out
    h = 1.0 / ranks(np.asarray(scores)[seen])
    p_s = h ** (1.0 / temperature)
    p_s /= p_s.sum()
    stale = clock - np.asarray(last_sampled, np.float64)[seen]
    p_c = stale / stale.sum() if stale.sum() > 0 else np.full(len(stale), 1.0 / len(stale))
    out[seen] = (1.0 - staleness_coef) * p_s + staleness_coef * p_c
    return out


def replay_probability(n_seen: int, n_levels: int, cfg: PLRConfig) -> float:
    """Chance of replaying a seen bin while unseen ones remain."""
    if cfg.replay_schedule == "proportionate":
        return n_seen / n_levels
    return cfg.replay_prob


def draw_bin(plr_state: dict, stats: dict, clock: int, cfg: PLRConfig, rng: np.random.Generator) -> int:
    """Choose a bin; records it as sampled at `clock + 1` (mutates `plr_state`)."""
    feasible = np.asarray(stats["feasible"], bool)
    seen = feasible & (np.asarray(stats["episodes"]) > 0)
    unseen = feasible & ~seen
    if seen.any() and unseen.any():
        replay = rng.random() < replay_probability(int(seen.sum()), int(feasible.sum()), cfg)
    else:
        replay = bool(seen.any())
    if replay:
        n, s = bins_lib.recent_counts(stats)
        w = replay_weights(scores(n, s), seen, np.asarray(plr_state["last_sampled"]), clock,
                           cfg.temperature, cfg.staleness_coef)
        i = int(rng.choice(len(w), p=w / w.sum()))
    else:
        i = int(rng.choice(np.flatnonzero(unseen)))
    plr_state["last_sampled"][i] = clock + 1
    return i


def current_weights(plr_state: dict, stats: dict, clock: int, cfg: PLRConfig) -> np.ndarray:
    """The full per-bin sampling distribution of the next draw (replay and unseen parts mixed)."""
    feasible = np.asarray(stats["feasible"], bool)
    seen = feasible & (np.asarray(stats["episodes"]) > 0)
    unseen = feasible & ~seen
    n, s = bins_lib.recent_counts(stats)
    replay = replay_weights(scores(n, s), seen, np.asarray(plr_state["last_sampled"]), clock,
                            cfg.temperature, cfg.staleness_coef)
    fresh = unseen / unseen.sum() if unseen.any() else np.zeros(len(feasible))
    if seen.any() and unseen.any():
        p = replay_probability(int(seen.sum()), int(feasible.sum()), cfg)
        return p * replay + (1 - p) * fresh
    return replay if seen.any() else fresh
