"""A synthetic run written through the real `MetricsWriter`, for the dashboard tests."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ada_curriculum.metrics_store import MetricsConfig, MetricsWriter, pca_2d, success_grid

FULL = {"banana_x": (0.38, 0.62), "banana_y": (-0.28, 0.28), "target_x": (0.38, 0.62), "target_y": (-0.28, 0.28),
        "mass_scale": (0.6, 1.8)}
NOMINAL = {"banana_x": 0.5, "banana_y": -0.15, "target_x": 0.5, "target_y": 0.15, "mass_scale": 1.0}


def write_video(path: Path, frames: int = 6) -> Path:
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    clip = [np.full((48, 64, 3), 40 * i, np.uint8) for i in range(frames)]
    imageio.mimsave(path, clip, fps=10, macro_block_size=1)
    return path


def populate(run_dir: Path, updates: int = 200, every: int = 10, videos: bool = True) -> Path:
    """Every kind of record over `updates` updates; returns the run dir."""
    rng = np.random.default_rng(0)
    t0 = time.time() - updates
    with MetricsWriter(run_dir, MetricsConfig(tensorboard=False)) as w:
        for step in range(every, updates + 1, every):
            t = t0 + step
            w.scalars({"loss": 1.0 / (1 + step / 50), "loss/bc": 0.5 / (1 + step / 40),
                       "grad_norm": 1 + rng.random(), "grad_norm/encoder": 0.5 + rng.random(),
                       "clipped": float(step == 100), "clip_count": int(step >= 100),
                       "success/recent": min(1.0, step / updates), "learner/updates_per_s": 12.5,
                       "actors/env_steps_per_s": 80.0, "actor/0/env_steps_per_s": 40.0,
                       "actor/1/env_steps_per_s": 40.0, "replay/online/size": 10 * step,
                       "replay/online/max_size": 10_000, "replay/online/inserts_per_s": 75.0,
                       "replay/online/samples_per_s": 600.0}, step, wall_time=t)
            frac = step / updates
            bounds = {k: (NOMINAL[k] - frac * (NOMINAL[k] - lo), NOMINAL[k] + frac * (hi - NOMINAL[k]))
                      for k, (lo, hi) in FULL.items()}
            tasks = [{k: rng.uniform(*bounds[k]) for k in FULL} for _ in range(30)]
            wins = [bool(rng.random() < 0.7) for _ in tasks]
            w.curriculum(step, bounds, FULL, stage=step // 50, wall_time=t, bins={
                "banana": success_grid(tasks, wins, "banana_x", "banana_y", FULL["banana_x"], FULL["banana_y"]),
                "target": success_grid(tasks, wins, "target_x", "target_y", FULL["target_x"], FULL["target_y"])})
            w.health(step, actors_alive=2, actors_total=2, actor_restarts=1, last_checkpoint_step=step - step % 50,
                     last_checkpoint_time=t, actors=[{"episodes": step, "failures": 1}, {"episodes": step}],
                     replay={"online": {"size": 10 * step, "max_size": 10_000}, "demo": {"size": 500, "max_size": 500}},
                     wall_time=t)
            if step % 100 == 0:
                paths = []
                if videos:
                    vdir = run_dir / "videos" / f"version_{step:07d}"
                    paths = [str(write_video(vdir / "episode_000_success.mp4")),
                             str(write_video(vdir / "episode_001_failure.mp4"))]
                w.evaluation(step, {"version": step, "tasks": "full", "episodes": 8, "successes": 6,
                                    "success_rate": 0.75, "ci95": [0.41, 0.93],
                                    "per_bin": {"x0_y0": {"episodes": 3, "successes": 2, "success_rate": 2 / 3},
                                                "x1_y1": {"episodes": 5, "successes": 4, "success_rate": 0.8}},
                                    "success_per_trial": [0.5, 0.75, 0.875], "videos": paths}, wall_time=t)
                preset = ["small", "base", "large", "xl"][min(step // 100, 3)]
                w.distillation(step, generation=step // 100, preset=preset,
                               params=1_700_000 * 4 ** (step // 100), teacher_success=0.8, student_success=0.6,
                               distance_to_teacher=0.3 / (step // 100), weight=0.5, wall_time=t)
        centres = rng.normal(size=(3, 16)) * 4
        labels = [f"banana {side}" for side in ("left", "centre", "right") for _ in range(20)]
        z = np.concatenate([c + rng.normal(size=(20, 16)) for c in centres])
        w.embedding(updates, pca_2d(z, labels))
    return run_dir
