"""Closed-loop evaluation: vectorised rollouts, success with a confidence interval, success per
task bin, success per trial index, and optional rollout videos.

Episode i of evaluation seed s always gets the same task and env seed, so two policies
evaluated with the same (tasks, seeds, episodes) face exactly the same episodes.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

import envs
from ada_curriculum.episode_store import Episode, EpisodeRecorder
from ada_curriculum.policies.runner import PolicyRunner

# Task bins: banana (x, y) on a 3 x 3 grid over the full task space.
BINS = 3
# Equal intervals per task dimension for `per_dimension`. Six, so that banana headings near 0
# and near +-pi (the same grasp, turned) fall in other bins than those near +-pi/2.
DIMENSION_BINS = 6


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (sane at 0% and 100%)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(s1: int, n1: int, s2: int, n2: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of the difference of two success rates p1 - p2: normal approximation with a
    +1 smoothing per cell (Agresti-Caffo), which stays sensible at rates near 0 and 1."""
    p1, p2 = (s1 + 1) / (n1 + 2), (s2 + 1) / (n2 + 2)
    se = math.sqrt(p1 * (1 - p1) / (n1 + 2) + p2 * (1 - p2) / (n2 + 2))
    return p1 - p2 - z * se, p1 - p2 + z * se


def paired_difference_interval(a: Sequence[bool], b: Sequence[bool], z: float = 1.96) -> tuple[float, float]:
    """95% interval of p_a - p_b when both policies played the same episodes (same tasks and env
    seeds): the paired Wald interval with 0.5 added to each cell of the 2x2 table (Agresti and Min
    2005). Shared episode difficulty cancels, so it is narrower than the unpaired interval."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired outcomes need two equal-length sequences, got {a.shape} and {b.shape}")
    n = len(a) + 2.0
    only_a, only_b = (int(np.sum(a & ~b)) + 0.5) / n, (int(np.sum(~a & b)) + 0.5) / n  # plain floats: JSON-ready
    d = only_a - only_b
    se = math.sqrt(max(only_a + only_b - d * d, 0.0) / n)
    return d - z * se, d + z * se


def episode_row(seed: int, index: int, result: "EpisodeResult") -> dict:
    """One evaluation episode as a JSON row (`eval`'s episodes.jsonl)."""
    row = {"seed": seed, "index": index, "env_seed": result.seed, "task": result.task.to_dict(),
           "success": bool(result.success), "steps": int(result.steps),
           "trial_successes": [bool(t) for t in result.trial_successes]}
    if result.trial_wrong_plate is not None:
        row["trial_wrong_plate"] = [bool(t) for t in result.trial_wrong_plate]
    return row


def task_bin(task: envs.TaskParams) -> str:
    full = envs.FULL
    def index(name, v):
        d = full[name]
        return min(BINS - 1, int((v - d.low) / (d.high - d.low + 1e-12) * BINS))
    return f"x{index('banana_x', task.banana_x)}_y{index('banana_y', task.banana_y)}"


# Stream tags for `episode_plan`: evaluation and data collection draw (task, seed) pairs from
# different streams, so a store collected with seed s never holds the tasks evaluated with seed s.
EVAL_STREAM = 7919
COLLECT_STREAM = 104729


def episode_plan(tasks, episodes: int, seed: int, stream: int = EVAL_STREAM) -> list[tuple[envs.TaskParams, int]]:
    """(task, env seed) for each evaluation episode, reproducible from `seed` (and `stream`)."""
    space = envs.resolve_tasks(tasks)
    rng = np.random.default_rng([seed, stream])
    plan = []
    for _ in range(episodes):
        task = space if isinstance(space, envs.TaskParams) else space.sample(rng)
        plan.append((task, int(rng.integers(2**31 - 1))))
    return plan


@dataclasses.dataclass
class EpisodeResult:
    task: envs.TaskParams
    seed: int
    success: bool
    steps: int
    trial_successes: list[bool]
    unstable: bool
    trial_steps: list[int] = dataclasses.field(default_factory=list)
    # Hidden-plate env only: per trial, whether the banana was placed on the unrewarded plate.
    trial_wrong_plate: list[bool] | None = None


def rollout(policy, variables, plan: Sequence[tuple], env_name: str = "banana-place", num_envs: int = 8,
            seed: int = 0, env_kwargs: dict | None = None, video_episodes: int = 0, video_dir: Path | None = None,
            sampling: dict | None = None, trial_sampling: Sequence[dict] | None = None,
            on_episode: Callable[[int, EpisodeResult, Episode], None] | None = None,
            memory: str = "episode") -> list[EpisodeResult]:
    """Run every (task, seed) of `plan` with `num_envs` envs stepped in lockstep.

    `trial_sampling`: sampling arguments per trial index, `memory`: what the context keeps across
    trials (see `PolicyRunner`). `on_episode`:
    every episode is also recorded (observations, actions, rewards) and passed, as an
    `episode_store.Episode` with per-trial success and steps in its `meta`, to
    `on_episode(plan_index, result, episode)` as soon as it ends (in the order episodes end).
    """
    env_kwargs = dict(env_kwargs or {})
    num_envs = max(1, min(num_envs, len(plan)))
    pool = [envs.make(env_name, tasks="full", seed=seed + j, **env_kwargs) for j in range(num_envs)]
    runner = PolicyRunner(policy, variables, num_envs, seed=seed, trial_sampling=trial_sampling, memory=memory,
                          **(sampling or {}))
    recorders = [EpisodeRecorder() for _ in range(num_envs)] if on_episode is not None else None
    results: list[EpisodeResult | None] = [None] * len(plan)
    next_ep = 0
    slot_ep = [-1] * num_envs
    timesteps = [None] * num_envs
    steps = [0] * num_envs
    trial_success: list[list[bool]] = [[] for _ in range(num_envs)]
    trial_steps: list[list[int]] = [[] for _ in range(num_envs)]
    trial_wrong: list[list[bool]] = [[] for _ in range(num_envs)]
    frames: dict[int, list[np.ndarray]] = {}

    def start(j):
        nonlocal next_ep
        if next_ep >= len(plan):
            slot_ep[j] = -1
            return
        task, ep_seed = plan[next_ep]
        slot_ep[j], next_ep = next_ep, next_ep + 1
        timesteps[j] = pool[j].reset(task=task, seed=ep_seed)
        steps[j], trial_success[j], trial_steps[j], trial_wrong[j] = 0, [], [], []
        runner.reset(j)
        if recorders is not None:
            recorders[j].start(timesteps[j])
        if slot_ep[j] < video_episodes:
            frames[slot_ep[j]] = [pool[j].render(size=(240, 320))]

    for j in range(num_envs):
        start(j)
    while any(e >= 0 for e in slot_ep):
        active = [e >= 0 for e in slot_ep]
        actions = runner.act([ts.observation if a else None for ts, a in zip(timesteps, active)], active)
        for j in range(num_envs):
            if not active[j]:
                continue
            ts = pool[j].step(actions[j])
            timesteps[j], steps[j] = ts, steps[j] + 1
            if recorders is not None:
                recorders[j].step(actions[j], ts)
            if slot_ep[j] in frames:
                frames[slot_ep[j]].append(pool[j].render(size=(240, 320)))
            if ts.info.get("trial_ended") or ts.last():
                trial_success[j].append(bool(ts.info["success"]))
                trial_steps[j].append(steps[j] - sum(trial_steps[j]))
                trial_wrong[j].append(bool(ts.info.get("wrong_plate", False)))
            if ts.last():
                result = EpisodeResult(
                    task=pool[j].task, seed=pool[j].episode_seed, success=bool(ts.info["success"]),
                    steps=steps[j], trial_successes=trial_success[j], unstable=bool(ts.info["physics_unstable"]),
                    trial_steps=trial_steps[j],
                    trial_wrong_plate=trial_wrong[j] if pool[j].hidden_plate else None)
                results[slot_ep[j]] = result
                if recorders is not None:
                    episode = recorders[j].finish(
                        result.task.to_dict(), result.seed, result.success, pool[j].trials,
                        meta={"trial_success": list(result.trial_successes), "trial_steps": list(result.trial_steps)})
                    on_episode(slot_ep[j], result, episode)
                start(j)
    for env in pool:
        env.close()
    if video_episodes and video_dir is not None:
        save_videos(frames, results, Path(video_dir))
    return results


def save_videos(frames: dict[int, list[np.ndarray]], results, video_dir: Path) -> list[str]:
    import imageio.v2 as imageio

    video_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, clip in sorted(frames.items()):
        tag = "success" if results[i] is not None and results[i].success else "failure"
        path = video_dir / f"episode_{i:03d}_{tag}.mp4"
        try:
            imageio.mimsave(path, clip, fps=10, macro_block_size=1)
        except Exception:  # noqa: BLE001 - no ffmpeg: fall back to a GIF
            path = path.with_suffix(".gif")
            imageio.mimsave(path, clip, duration=0.1)
        paths.append(str(path))
    return paths


def summarize(results: Sequence[EpisodeResult]) -> dict:
    n = len(results)
    wins = sum(r.success for r in results)
    lo, hi = wilson_interval(wins, n)
    bins: dict[str, dict] = {}
    for r in results:
        b = bins.setdefault(task_bin(r.task), {"episodes": 0, "successes": 0})
        b["episodes"] += 1
        b["successes"] += int(r.success)
    for b in bins.values():
        b["success_rate"] = b["successes"] / b["episodes"]
    return {
        "episodes": n, "successes": wins, "success_rate": wins / n if n else 0.0, "ci95": [lo, hi],
        "mean_steps": float(np.mean([r.steps for r in results])) if n else 0.0,
        "unstable": sum(r.unstable for r in results),
        "per_bin": dict(sorted(bins.items())), "per_dimension": per_dimension(results),
        **per_trial_summary([r.trial_successes for r in results]), **plate_choice_summary(results),
    }


def per_dimension(results: Sequence[EpisodeResult], per_dim: int = DIMENSION_BINS) -> dict:
    """Success over equal intervals of each task dimension that varies in `results`, the rest
    marginalised: which dimension a policy fails on, and so which one a curriculum should widen.
    The intervals are the curriculum's own bins (`curriculum.bins`) over the full space."""
    from ada_curriculum.curriculum.bins import BinGrid

    out = {}
    for name in (d.name for d in envs.FULL.dimensions):
        if len({getattr(r.task, name) for r in results}) < 2:
            continue
        grid = BinGrid.make(envs.FULL, (name,), per_dim)
        rows = [{"low": lo, "high": hi, "episodes": 0, "successes": 0} for lo, hi in grid.intervals[0]]
        for r in results:
            row = rows[grid.index(r.task)]
            row["episodes"] += 1
            row["successes"] += int(r.success)
        for row in rows:
            row["success_rate"] = row["successes"] / row["episodes"] if row["episodes"] else None
        out[name] = rows
    return out


def widest_spread(per_dim: dict, min_episodes: int = 10) -> tuple[str, float, float] | None:
    """(dimension, lowest, highest success) of the dimension whose bins (those with at least
    `min_episodes` episodes) differ most, or None when no dimension has two such bins."""
    best = None
    for name, rows in per_dim.items():
        rates = [r["success_rate"] for r in rows if r["episodes"] >= min_episodes]
        if len(rates) >= 2 and (best is None or max(rates) - min(rates) > best[2] - best[1]):
            best = (name, min(rates), max(rates))
    return best


def plate_choice_summary(results: Sequence[EpisodeResult]) -> dict:
    """Hidden-plate env: per trial index, the fraction of trials that placed the banana on a plate
    (`placed_per_trial`) and, of those, the fraction on the rewarded one (`right_plate_per_trial`,
    None where no trial placed). The second isolates the choice from the motor skill: a policy
    that learns from its earlier trials chooses right about half the time in trial 1 and always
    after. Empty for the other envs."""
    rows = [(r.trial_successes, r.trial_wrong_plate) for r in results if r.trial_wrong_plate is not None]
    if not rows:
        return {}
    k = max(len(s) for s, _ in rows)
    placed, right = [], []
    for i in range(k):
        outcomes = [(bool(s[i]), bool(w[i])) for s, w in rows if len(s) > i]
        n_placed = sum(a or b for a, b in outcomes)
        placed.append(n_placed / len(outcomes))
        right.append(sum(a for a, _ in outcomes) / n_placed if n_placed else None)
    return {"placed_per_trial": placed, "right_plate_per_trial": right}


def per_trial_summary(trial_successes: Sequence[Sequence[bool]], z: float = 1.96) -> dict:
    """Success per trial index (ADA's measure of in-context improvement) from each episode's
    list of trial outcomes.

    `success_per_trial[i]`: success rate of trial i + 1 over the episodes that reached it, with
    95% Wilson intervals in `success_per_trial_ci95`. `last_vs_first_trial`: success at the
    last trial minus success at the first (None with fewer than two trials). Both trials come
    from the same episodes, so the difference is a mean of paired differences (-1, 0 or +1 per
    episode that ran every trial): `last_vs_first_trial_ci95` is the Agresti-Min adjusted Wald
    interval for a difference of paired proportions (half a pseudo-count in each cell of the
    2 x 2 table, so it stays sane at 0 discordant pairs), and `last_vs_first_trial_counts` gives
    the discordant pairs (first failed and last succeeded, and the reverse) that a sign or
    McNemar test would use.
    """
    k = max((len(t) for t in trial_successes), default=0)
    per_trial, per_trial_ci = [], []
    for i in range(k):
        outcomes = [bool(t[i]) for t in trial_successes if len(t) > i]
        per_trial.append(float(np.mean(outcomes)))
        per_trial_ci.append(list(wilson_interval(sum(outcomes), len(outcomes), z)))
    out = {"success_per_trial": per_trial, "success_per_trial_ci95": per_trial_ci,
           "last_vs_first_trial": None, "last_vs_first_trial_ci95": None, "last_vs_first_trial_counts": None}
    paired = [(bool(t[0]), bool(t[k - 1])) for t in trial_successes if len(t) == k]
    if k >= 2:
        out["last_vs_first_trial"] = per_trial[-1] - per_trial[0]
    if k >= 2 and paired:
        improved = sum(last and not first for first, last in paired)
        worsened = sum(first and not last for first, last in paired)
        n = len(paired) + 2  # Agresti & Min (2005): +0.5 in each of the four cells
        b, c = (improved + 0.5) / n, (worsened + 0.5) / n
        half = z * math.sqrt(max(b + c - (b - c) ** 2, 0.0) / n)
        out["last_vs_first_trial_ci95"] = [max(-1.0, b - c - half), min(1.0, b - c + half)]
        out["last_vs_first_trial_counts"] = {"episodes": len(paired), "improved": improved, "worsened": worsened}
    return out
