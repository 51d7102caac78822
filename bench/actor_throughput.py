"""Actor throughput: env steps/s of one `Actor` with the diffusion policy in the loop against
bare env stepping of the same envs, and two Ray actors against one on this machine's cores.

1. `policy_vs_env_ratio`: one in-process actor (`builder.ActorWorker`: envs, policy chunks,
   episode bookkeeping, Reverb writes, task source) against the same number of envs stepped with
   the scripted demonstrator's actions, recorded beforehand on the same task distribution and
   replayed open loop (resets included). Interleaved repeat by repeat, one core (pinned).
   The actor runs as `train` builds it (aligned chunk boundaries, `Actor(align_chunks=True)`);
   `--compare-unaligned` also times, in the same interleaved loop, an actor that replans each env
   on its own. `policy_calls_per_100_steps`: full-batch policy calls per 100 env steps.
2. `two_vs_one_actor_ratio`: total env steps/s of two concurrent Ray actors over one, the same
   two worker processes timed alone and together, phase after phase.

Actors write finished episodes to a real Reverb server (in this process; its rate limiter is
opened up as in an in-process run, since no learner samples here). The policy is the pretrained
`--init` run when it exists, else a fresh small diffusion policy. Last line: JSON.

    .venv/bin/python bench/actor_throughput.py [--init runs/bc-diffusion] [--envs 2] [--repeats 5]
        [--sampling-steps N] [--compare-unaligned] [--skip-ray]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import envs
from ada_curriculum.agent.builder import ActorWorker, Builder
from ada_curriculum.agent.task_source import TaskSource
from ada_curriculum.agent.variable_source import VariableSource
from ada_curriculum.policies import make_policy, normalizer
from ada_curriculum.train import TrainConfig


def load(init: str | None):
    """(policy, variables, source) for the pretrained run if there is one, else a fresh policy."""
    if init and (Path(init) / "config.json").is_file():
        from ada_curriculum.pretrain import load_policy

        policy, variables, _, step = load_policy(init, use_ema=True)
        return policy, variables, f"{init}@{step}"
    policy = make_policy("diffusion")
    variables = policy.init(jax.random.PRNGKey(0), normalizer.identity(policy.obs_dim, policy.action_dim))
    return policy, variables, "fresh"


def record_demos(cfg: TrainConfig, num_envs: int, min_steps: int, seed: int = 123):
    """Per env, demonstrator episodes (task, seed, actions) covering at least `min_steps` steps."""
    tasks = TaskSource(cfg.tasks, seed=seed)
    demo = envs.ScriptedDemonstrator(seed=seed)
    env = envs.make(cfg.env, tasks="full", seed=seed)
    out = []
    for _ in range(num_envs):
        episodes, steps = [], 0
        while steps < min_steps:
            (task, ep_seed), = tasks.sample(1)
            ts = env.reset(task=envs.TaskParams.from_dict(task), seed=ep_seed)
            demo.reset()
            actions = []
            while not ts.last():
                actions.append(demo.act(ts.observation))
                ts = env.step(actions[-1])
            episodes.append((task, ep_seed, actions))
            steps += len(actions)
        out.append(episodes)
    env.close()
    return out


class EnvOnly:
    """The actor's envs stepped with recorded actions in the same lockstep, resets included."""

    def __init__(self, cfg: TrainConfig, demos):
        self.envs = [envs.make(cfg.env, tasks="full", seed=j) for j in range(len(demos))]
        self.demos = demos
        self.cursor = [[0, 0] for _ in demos]  # (episode, step) per env
        for j in range(len(demos)):
            self._reset(j)

    def _reset(self, j: int):
        i = self.cursor[j][0] % len(self.demos[j])
        task, seed, _ = self.demos[j][i]
        self.envs[j].reset(task=envs.TaskParams.from_dict(task), seed=seed)

    def run(self, num_steps: int) -> int:
        for _ in range(num_steps):
            for j, env in enumerate(self.envs):
                episode, step = self.cursor[j]
                actions = self.demos[j][episode % len(self.demos[j])][2]
                env.step(actions[step])
                if step + 1 == len(actions):
                    self.cursor[j] = [episode + 1, 0]
                    self._reset(j)
                else:
                    self.cursor[j][1] = step + 1
        return num_steps * len(self.envs)


def policy_vs_env(cfg, policy, variables, args) -> dict:
    builder = Builder(cfg, policy)
    server = builder.make_replay_server(None)
    source = VariableSource()
    source.publish(variables, 1)
    kinds = {"aligned": True, **({"unaligned": False} if args.compare_unaligned else {})}
    actors = {name: ActorWorker(**builder.actor_args(0, server.address, source, builder.make_task_source()),
                                align_chunks=align)
              for name, align in kinds.items()}
    actor = actors["aligned"]
    env_only = EnvOnly(cfg, record_demos(cfg, args.envs, args.steps * (args.repeats + 1)))
    try:
        for a in actors.values():
            a.run(args.steps)  # compiles the policy
        env_only.run(args.steps // 4)
        rates = {name: [] for name in actors}
        env_rates = []
        calls = {name: [0, 0] for name in actors}  # policy calls, env steps (timed calls only)
        for _ in range(args.repeats):
            for name, a in actors.items():
                before = a.runner.policy_calls
                t0 = time.perf_counter()
                out = a.run(args.steps)
                rates[name].append(out["env_steps"] / (time.perf_counter() - t0))
                calls[name][0] += a.runner.policy_calls - before
                calls[name][1] += out["env_steps"]
            t0 = time.perf_counter()
            n = env_only.run(args.steps)
            env_rates.append(n / (time.perf_counter() - t0))
        # Cost of one policy call at this batch size, for the explanation of the ratio.
        obs = {"obs": np.zeros((args.envs, policy.n_obs_steps, policy.obs_dim), np.float32)}
        predict = actor.runner._predict
        jax.block_until_ready(predict(variables, obs, jax.random.PRNGKey(0)))
        t0 = time.perf_counter()
        for k in range(10):
            jax.block_until_ready(predict(variables, obs, jax.random.PRNGKey(k)))
        chunk_ms = (time.perf_counter() - t0) / 10 * 1000
        episodes = actor.episodes
    finally:
        for a in actors.values():
            a.close()
        server.stop()
    actor_sps, env_sps = statistics.median(rates["aligned"]), statistics.median(env_rates)
    out = {"actor_env_steps_per_s": round(actor_sps, 1), "env_only_steps_per_s": round(env_sps, 1),
           "policy_vs_env_ratio": round(actor_sps / env_sps, 3),
           "policy_chunk_ms": round(chunk_ms, 2), "env_step_ms": round(1000 / env_sps, 3),
           "policy_calls_per_100_steps": round(100 * calls["aligned"][0] / calls["aligned"][1], 2),
           # Each repeat's actor/env pair ran back to back: the median of their ratios is the figure
           # least moved by other load on a shared machine (the headline is the ratio of medians).
           "pairwise_median_ratio": round(statistics.median(a / e for a, e in zip(rates["aligned"], env_rates)), 3),
           "actor_episodes": episodes}
    if "unaligned" in rates:
        un = statistics.median(rates["unaligned"])
        out.update(unaligned_env_steps_per_s=round(un, 1), unaligned_policy_vs_env_ratio=round(un / env_sps, 3),
                   unaligned_policy_calls_per_100_steps=round(100 * calls["unaligned"][0] / calls["unaligned"][1], 2))
    return out


def two_vs_one(cfg, policy, variables, args) -> dict:
    import ray

    builder = Builder(cfg, policy)
    server = builder.make_replay_server(None)  # in this process; the workers reach it on localhost
    runtime_env = {"env_vars": {"XLA_FLAGS": args.worker_xla_flags}} if args.worker_xla_flags else None
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    try:
        source = ray.remote(VariableSource).options(num_cpus=0).remote()
        ray.get(source.publish.remote(variables, 1))
        tasks = ray.remote(TaskSource).options(num_cpus=0, max_concurrency=4).remote(**builder.task_source_args())
        actors = [builder.remote(ActorWorker, num_cpus=1).remote(
            **builder.actor_args(i, server.address, source, tasks)) for i in range(2)]
        ray.get([a.run.remote(args.steps) for a in actors])  # start-up and compile, both

        def phase(active) -> float:
            """Env steps/s of `active` actors kept busy with back-to-back calls for --seconds."""
            start = time.perf_counter()
            deadline = start + args.seconds
            pending = {a.run.remote(args.call_steps): a for a in active}
            steps, last = 0, start
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                actor = pending.pop(done[0])
                steps += ray.get(done[0])["env_steps"]
                last = time.perf_counter()
                if last < deadline:
                    pending[actor.run.remote(args.call_steps)] = actor
            return steps / (last - start)

        one, two = [], []
        for _ in range(args.ray_repeats):
            one.append(phase(actors[:1]))
            two.append(phase(actors))
    finally:
        ray.shutdown()
        server.stop()
    r1, r2 = statistics.median(one), statistics.median(two)
    return {"one_actor_env_steps_per_s": round(r1, 1), "two_actors_env_steps_per_s": round(r2, 1),
            "two_vs_one_actor_ratio": round(r2 / r1, 3)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--init", default="runs/bc-diffusion", help="pretrained run (used if it exists)")
    parser.add_argument("--envs", type=int, default=2, help="envs per actor (train's default: 2)")
    parser.add_argument("--steps", type=int, default=160, help="steps per env per timed actor call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each Ray phase")
    parser.add_argument("--call-steps", type=int, default=20, help="steps per Ray actor call (train's default)")
    parser.add_argument("--ray-repeats", type=int, default=2)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--worker-xla-flags", default="", help="XLA_FLAGS for the Ray actors' processes")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--sampling-steps", type=int, default=None,
                        help="DDIM steps for acting (default: the policy's num_inference_steps)")
    parser.add_argument("--candidates", type=int, default=1,
                        help="act with a success critic's best of N sampled chunks (a fresh critic if the run "
                             "has none: its cost does not depend on its weights)")
    parser.add_argument("--compare-unaligned", action="store_true",
                        help="also time an actor without aligned chunk boundaries (interleaved)")
    args = parser.parse_args()

    policy, variables, source = load(args.init)
    if args.candidates > 1 and not policy.has_critic:
        policy = make_policy("diffusion", dataclasses.replace(policy.config, critic_hidden=256,
                                                              num_candidates=args.candidates))
        variables = policy.with_critic(variables, jax.random.PRNGKey(1))
    elif args.candidates > 1:
        policy = make_policy("diffusion", dataclasses.replace(policy.config, num_candidates=args.candidates))
    # The actors' DDIM steps come from train's --acting-inference-steps, as in a run.
    cfg = TrainConfig(run=tempfile.mkdtemp(), distributed=False, envs_per_actor=args.envs, demo_fraction=0.0,
                      acting_inference_steps=args.sampling_steps)
    out = {"bench": "actor_throughput", "policy": source, "preset": policy.config.preset,
           "num_inference_steps": policy.config.num_inference_steps, "n_action_steps": policy.config.n_action_steps,
           "acting_inference_steps": args.sampling_steps or policy.config.num_inference_steps,
           "num_candidates": policy.config.num_candidates, "envs_per_actor": args.envs, "cores": os.cpu_count(), "loadavg_start": round(os.getloadavg()[0], 2)}

    # Part 1 on one core, as a Ray actor holding one CPU would run; affinity is restored before
    # Ray starts (its workers would inherit it).
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if cores:
        os.sched_setaffinity(0, {min(cores)})
    try:
        out.update(policy_vs_env(cfg, policy, variables, args))
    finally:
        if cores:
            os.sched_setaffinity(0, cores)
    print(json.dumps(out), flush=True)
    if not args.skip_ray:
        out.update(two_vs_one(cfg, policy, variables, args))
    out.update(target_policy_vs_env_ratio=0.7, target_two_vs_one_actor_ratio=1.6,
               loadavg_end=round(os.getloadavg()[0], 2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
