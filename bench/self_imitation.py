"""Why the denoiser does not learn from its own successes: which target to imitate.

Sparse-reward RL here imitates the actors' successful episodes (success-weighted BC on replay
windows). This benchmark asks, offline and at full BC strength, whether that can improve the
denoiser at all, and what the imitation target should be. One acting policy (a trained run
with a success critic) plays `--episodes` episodes; its successful ones give the self data two
ways:

- executed: windows of the executed actions, as replay holds them now. A window spans the seam
  between two sampled chunks wherever it starts, and the policy's chunks jump there.
- planned: at each decision, the whole horizon the critic chose (one coherent sample).

Three policies are then trained from scratch with the beachhead's recipe (its pretrain config)
and evaluated side by side, denoiser alone, on the same held-out episodes:
demos only; demos + executed windows; demos + planned chunks (the same share of batches).

    .venv/bin/python bench/self_imitation.py --policy-run runs/bench-curriculum-zc/uniform \
        --init runs/bc-rel-rot --demos runs/demos-nominal-50 --episodes 400

Prints one JSON line: success per arm on the full distribution and on the nominal task, and
each self-data arm's ratio to demos only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import envs
from ada_curriculum import config as config_lib
from ada_curriculum import evaluate
from ada_curriculum.data import augment as augment_lib
from ada_curriculum.data import windows as windows_lib
from ada_curriculum.data.loader import Prefetcher
from ada_curriculum.episode_store import EpisodeRecorder
from ada_curriculum.learning import create_train_state
from ada_curriculum.policies.critic import critic_score, select_best
from ada_curriculum.policies.diffusion import consensus_gripper
from ada_curriculum.policies.obs import binarize_gripper
from ada_curriculum.policies.runner import PolicyRunner
from ada_curriculum.pretrain import PretrainConfig, build, fit_normalizer, load_policy


def planner(policy, n: int):
    """jit (variables, batch, rng) -> (executed chunk, whole chosen horizon), best of n by the critic."""

    def plan(variables, batch, rng):
        obs = jnp.repeat(batch["obs"], n, axis=0)
        horizon = policy.sample_horizon(variables, {"obs": obs}, rng)
        horizon = binarize_gripper(horizon) if policy.config.binary_gripper else horizon
        if n > 1 and policy.config.candidate_gripper == "consensus":  # as predict_action chooses
            horizon = consensus_gripper(horizon, n, policy.config.binary_gripper)
        chunk = policy.executed_chunk(horizon)
        rows = batch["obs"].shape[0]
        if n == 1:
            return chunk, horizon
        scores = critic_score(policy.critic, variables["params"]["critic"], variables["normalizer"], obs, chunk,
                              policy.config.critic_pessimism)
        return select_best(chunk, scores, rows), select_best(horizon, scores, rows)

    return jax.jit(plan)


def collect(policy, variables, episodes: int, seed: int, num_envs: int, time_limit: int):
    """Roll the policy out on full-distribution tasks; returns [(Episode, [(obs, horizon)], success)]."""
    n = int(policy.config.num_candidates)
    plan_fn = planner(policy, n)
    runner = PolicyRunner(policy, variables, num_envs, seed=seed)
    made = {}

    def predict(v, b, r):
        chunk, horizon = plan_fn(v, b, r)
        made["obs"], made["horizon"] = np.asarray(b["obs"]), np.asarray(horizon)
        return chunk

    runner._predicts = {0: predict}  # the runner's queueing and padding, with the plan kept
    tasks = evaluate.episode_plan("full", episodes, seed, stream=evaluate.COLLECT_STREAM)
    pool = [envs.make("banana-place", tasks="full", seed=seed + j, time_limit=time_limit) for j in range(num_envs)]
    recorders = [EpisodeRecorder() for _ in range(num_envs)]
    plans = [[] for _ in range(num_envs)]
    ts, slot, out, nxt = [None] * num_envs, [-1] * num_envs, [], 0

    def start(j):
        nonlocal nxt
        slot[j] = -1
        if nxt < len(tasks):
            task, s = tasks[nxt]
            slot[j], nxt = nxt, nxt + 1
            ts[j] = pool[j].reset(task=task, seed=s)
            runner.reset(j)
            recorders[j].start(ts[j])
            plans[j] = []

    for j in range(num_envs):
        start(j)
    while any(s >= 0 for s in slot):
        active = [s >= 0 for s in slot]
        made.clear()
        actions = runner.act([t.observation if a else None for t, a in zip(ts, active)], active)
        for j in range(num_envs):
            if not active[j]:
                continue
            if made and len(runner._queue[j]) == policy.n_action_steps - 1:  # planned this call
                plans[j].append((made["obs"][j], made["horizon"][j]))
            ts[j] = pool[j].step(actions[j])
            recorders[j].step(actions[j], ts[j])
            if ts[j].last():
                success = bool(ts[j].info["success"])
                episode = recorders[j].finish(pool[j].task.to_dict(), pool[j].episode_seed, success)
                out.append((episode, plans[j], success))
                start(j)
    for env in pool:
        env.close()
    return out


class Mixture:
    """Batches drawn from several samplers, each row from sampler i with probability p[i]."""

    def __init__(self, samplers, probs):
        self.samplers, self.probs = samplers, np.asarray(probs, np.float64) / np.sum(probs)

    def sample(self, rng, batch_size):
        counts = rng.multinomial(batch_size, self.probs)
        parts = [s.sample(rng, int(c)) for s, c in zip(self.samplers, counts) if c > 0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class Planned:
    """Batches of recorded decisions: obs (n_obs_steps, D), the chosen horizon as the action."""

    def __init__(self, obs, action):
        self.obs, self.action = obs, action

    def sample(self, rng, batch_size):
        pick = rng.integers(0, len(self.obs), batch_size)
        return {"obs": self.obs[pick], "action": self.action[pick], "weight": np.ones(batch_size, np.float32)}


def train_arm(cfg: PretrainConfig, sampler, stats):
    """(policy, EMA variables, final loss) of a policy trained from scratch on `sampler`."""
    policy, optimizer, train_step = build(cfg)
    rng = jax.random.PRNGKey(cfg.seed)
    init_rng, state_rng = jax.random.split(rng)
    state = create_train_state(policy.init(init_rng, stats), optimizer, state_rng)
    step = jax.jit(train_step, donate_argnums=0)
    if cfg.augment == "rotate":
        sampler = augment_lib.RotatedSampler(sampler)
    batches = Prefetcher(sampler, cfg.batch_size, seed=cfg.seed * 1000)
    try:
        for _ in range(cfg.updates):
            state, metrics = step(state, next(batches))
    finally:
        batches.close()
    return policy, state.ema_variables, float(metrics["loss"])


def evaluate_arm(policy, variables, args) -> dict:
    out = {}
    for tasks, episodes, seed in (("full", args.eval_episodes, 0), ("nominal", args.nominal_episodes, 7)):
        results = evaluate.rollout(policy, variables, evaluate.episode_plan(tasks, episodes, seed), num_envs=10,
                                   seed=seed, env_kwargs={"time_limit": args.time_limit})
        out[tasks] = [bool(r.success) for r in results]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--policy-run", required=True, help="acting policy: a train run with a success critic")
    p.add_argument("--init", default="runs/bc-rel-rot", help="beachhead whose pretrain recipe every arm uses")
    p.add_argument("--demos", default="runs/demos-nominal-50")
    p.add_argument("--episodes", type=int, default=400, help="self-data episodes (full distribution)")
    p.add_argument("--eval-episodes", type=int, default=300, help="held-out full-distribution episodes (seed 0)")
    p.add_argument("--nominal-episodes", type=int, default=60, help="held-out nominal episodes (seed 7)")
    p.add_argument("--time-limit", type=int, default=80)
    p.add_argument("--seed", type=int, default=3, help="self-data stream")
    p.add_argument("--arms", default="demos,executed,planned")
    p.add_argument("--updates", type=int, default=None, help="override the recipe's updates (a smoke run)")
    args = p.parse_args()

    t0 = time.perf_counter()
    acting, acting_vars, _, _ = load_policy(args.policy_run)
    rollouts = collect(acting, acting_vars, args.episodes, args.seed, num_envs=10, time_limit=args.time_limit)
    wins = [(ep, plans) for ep, plans, ok in rollouts if ok]
    collect_s = time.perf_counter() - t0

    cfg = config_lib.load_config(PretrainConfig, Path(args.init) / "config.json")
    cfg = dataclasses.replace(cfg, eval_episodes=0, updates=args.updates or cfg.updates)
    frame = cfg.policy_config().obs_frame
    demos = windows_lib.load_store(args.demos, only_successful=cfg.only_successful, frame=frame)
    executed = [windows_lib.episode_arrays(ep, frame=frame) for ep, _ in wins]
    planned_obs = np.stack([o for _, plans in wins for o, _ in plans]).astype(np.float32)
    planned_act = np.stack([h for _, plans in wins for _, h in plans]).astype(np.float32)
    policy, _, _ = build(cfg)
    demo_windows = windows_lib.DiffusionWindows(demos, policy.n_obs_steps, policy.horizon)
    merged = windows_lib.DiffusionWindows(demos + executed, policy.n_obs_steps, policy.horizon)
    # The planned arm gets the executed arm's share of self data per batch, so the two differ
    # only in what the self rows hold.
    self_share = 1.0 - len(demo_windows) / len(merged)
    arms = {
        "demos": (demo_windows, fit_normalizer(demos, frame, cfg.augment)),
        "executed": (merged, fit_normalizer(demos + executed, frame, cfg.augment)),
        "planned": (Mixture([demo_windows, Planned(planned_obs, planned_act)], [1 - self_share, self_share]),
                    fit_normalizer(demos + executed, frame, cfg.augment)),
    }
    results = {}
    for name in args.arms.split(","):
        t = time.perf_counter()
        arm_policy, variables, loss = train_arm(cfg, *arms[name])
        outcome = evaluate_arm(arm_policy, variables, args)
        results[name] = {"full": float(np.mean(outcome["full"])), "nominal": float(np.mean(outcome["nominal"])),
                         "full_successes": int(np.sum(outcome["full"])), "final_loss": round(loss, 4),
                         "seconds": round(time.perf_counter() - t, 1), "_full": outcome["full"]}
        print(name, {k: v for k, v in results[name].items() if not k.startswith("_")}, file=sys.stderr, flush=True)

    base = results.get("demos")
    out = {"bench": "self_imitation", "policy_run": args.policy_run, "init": args.init,
           "self_episodes": args.episodes, "self_successes": len(wins), "self_windows": len(merged) - len(demo_windows),
           "self_planned_chunks": int(len(planned_obs)), "self_share": round(self_share, 3),
           "updates": cfg.updates, "eval_full_episodes": args.eval_episodes,
           "eval_nominal_episodes": args.nominal_episodes,
           "collect_seconds": round(collect_s, 1),
           "arms": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in results.items()}}
    if base:
        for name, r in results.items():
            if name != "demos":
                out["arms"][name]["ratio_full_to_demos"] = round(r["full"] / max(base["full"], 1e-9), 3)
                out["arms"][name]["ratio_nominal_to_demos"] = round(r["nominal"] / max(base["nominal"], 1e-9), 3)
                lo, hi = evaluate.paired_difference_interval(r["_full"], base["_full"])
                out["arms"][name]["paired_full_minus_demos_ci95"] = [round(lo, 4), round(hi, 4)]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
