"""Env control steps/s of `banana-place` against the raw physics rate of the same model.

Both sides replay the same motion: the demonstrator's actions are recorded first, then timed
through `env.step` (IK, observation, success check included), and the joint targets the env
produced are replayed through a bare `mj_step(model, data, nstep=substeps)` loop from the same
initial states. One core (the process is pinned when the OS allows it). Last line: JSON.

    .venv/bin/python bench/env_throughput.py [--episodes 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import mujoco
import numpy as np

import envs
from envs import scene


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tasks", default="full")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    env = envs.make("banana-place", tasks=args.tasks, seed=0)
    demo = envs.ScriptedDemonstrator(seed=0)
    episodes = []  # (task, seed, actions, ctrls)
    for i in range(args.episodes):
        ts = env.reset(seed=1000 + i)
        demo.reset()
        actions, ctrls = [], []
        while not ts.last():
            actions.append(demo.act(ts.observation))
            ts = env.step(actions[-1])
            ctrls.append(env.physics.data.ctrl.copy())
        episodes.append((env.task, env.episode_seed, actions, ctrls))
    n_steps = sum(len(e[2]) for e in episodes)

    # Interleave the two sides episode by episode and keep each episode's best time over the
    # repeats: a shared VM's noise then hits both sides alike instead of one run of each.
    env_best = np.full(len(episodes), np.inf)
    raw_best = np.full(len(episodes), np.inf)
    for _ in range(args.repeats):
        for i, (task, seed, actions, ctrls) in enumerate(episodes):
            env.reset(task=task, seed=seed)
            t0 = time.perf_counter()
            for a in actions:
                env.step(a)
            env_best[i] = min(env_best[i], time.perf_counter() - t0)

            env.reset(task=task, seed=seed)
            m, d = env.physics.model, env.physics.data
            t0 = time.perf_counter()
            for c in ctrls:
                d.ctrl[:] = c
                mujoco.mj_step(m, d, nstep=scene.CONTROL_SUBSTEPS)
            raw_best[i] = min(raw_best[i], time.perf_counter() - t0)
    env_times, raw_times = [env_best.sum()], [raw_best.sum()]

    env_rate = n_steps / min(env_times)
    raw_rate = n_steps / min(raw_times)
    print(json.dumps({
        "bench": "env_throughput", "env": "banana-place", "tasks": args.tasks, "control_steps": n_steps,
        "substeps": scene.CONTROL_SUBSTEPS, "env_steps_per_s": round(env_rate, 1),
        "raw_steps_per_s": round(raw_rate, 1), "ratio": round(env_rate / raw_rate, 3),
        "target_ratio": 0.85,
    }))


if __name__ == "__main__":
    main()
