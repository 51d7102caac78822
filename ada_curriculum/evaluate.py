"""Closed-loop evaluation: vectorised rollouts, success with a confidence interval, success per
task bin, success per trial index, and optional rollout videos.

Episode i of evaluation seed s always gets the same task and env seed, so two policies
evaluated with the same (tasks, seeds, episodes) face exactly the same episodes.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

import numpy as np

import envs
from ada_curriculum.policies.runner import PolicyRunner

# Task bins: banana (x, y) on a 3 x 3 grid over the full task space.
BINS = 3


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (sane at 0% and 100%)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def task_bin(task: envs.TaskParams) -> str:
    full = envs.FULL
    def index(name, v):
        d = full[name]
        return min(BINS - 1, int((v - d.low) / (d.high - d.low + 1e-12) * BINS))
    return f"x{index('banana_x', task.banana_x)}_y{index('banana_y', task.banana_y)}"


def episode_plan(tasks, episodes: int, seed: int) -> list[tuple[envs.TaskParams, int]]:
    """(task, env seed) for each evaluation episode, reproducible from `seed`."""
    space = envs.resolve_tasks(tasks)
    rng = np.random.default_rng([seed, 7919])
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


def rollout(policy, variables, plan: Sequence[tuple], env_name: str = "banana-place", num_envs: int = 8,
            seed: int = 0, env_kwargs: dict | None = None, video_episodes: int = 0, video_dir: Path | None = None,
            sampling: dict | None = None) -> list[EpisodeResult]:
    """Run every (task, seed) of `plan` with `num_envs` envs stepped in lockstep."""
    env_kwargs = dict(env_kwargs or {})
    num_envs = max(1, min(num_envs, len(plan)))
    pool = [envs.make(env_name, tasks="full", seed=seed + j, **env_kwargs) for j in range(num_envs)]
    runner = PolicyRunner(policy, variables, num_envs, seed=seed, **(sampling or {}))
    results: list[EpisodeResult | None] = [None] * len(plan)
    next_ep = 0
    slot_ep = [-1] * num_envs
    timesteps = [None] * num_envs
    steps = [0] * num_envs
    trial_success: list[list[bool]] = [[] for _ in range(num_envs)]
    frames: dict[int, list[np.ndarray]] = {}

    def start(j):
        nonlocal next_ep
        if next_ep >= len(plan):
            slot_ep[j] = -1
            return
        task, ep_seed = plan[next_ep]
        slot_ep[j], next_ep = next_ep, next_ep + 1
        timesteps[j] = pool[j].reset(task=task, seed=ep_seed)
        steps[j], trial_success[j] = 0, []
        runner.reset(j)
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
            if slot_ep[j] in frames:
                frames[slot_ep[j]].append(pool[j].render(size=(240, 320)))
            if ts.info.get("trial_ended") or ts.last():
                trial_success[j].append(bool(ts.info["success"]))
            if ts.last():
                results[slot_ep[j]] = EpisodeResult(
                    task=pool[j].task, seed=pool[j].episode_seed, success=bool(ts.info["success"]),
                    steps=steps[j], trial_successes=trial_success[j], unstable=bool(ts.info["physics_unstable"]))
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
    k = max((len(r.trial_successes) for r in results), default=0)
    per_trial = [float(np.mean([r.trial_successes[i] for r in results if len(r.trial_successes) > i]))
                 for i in range(k)]
    return {
        "episodes": n, "successes": wins, "success_rate": wins / n if n else 0.0, "ci95": [lo, hi],
        "mean_steps": float(np.mean([r.steps for r in results])) if n else 0.0,
        "unstable": sum(r.unstable for r in results),
        "per_bin": dict(sorted(bins.items())), "success_per_trial": per_trial,
    }
