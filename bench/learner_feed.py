"""Learner feed: updates/s of the real `Learner` fed by Reverb mixed batches against the same
jitted train step on batches already in memory; and Reverb's own insert and sample rates.

1. `inserts_per_s`: windows/s written through `ReplayClient.add_episode` (one TrajectoryWriter,
   every step sent once, one item per step), filling the demo and online tables from the
   episode store.
2. `samples_per_s`: windows/s out of `ReplayClient.mixed_batches` (tf.data over Reverb's
   sampler, batch `--batch-size`, `--demo-fraction` demo windows), with no training.
3. `reverb_vs_memory_ratio`: `Learner.step` (its batch thread, the objective, publishing
   weights every `--publish-every` updates) against a bare loop of the same jitted step over
   eight device-resident batches that came from the same Reverb tables. Interleaved, best of
   `--rounds` (two) each side; `pairwise_median_ratio` is the median of the rounds' ratios.

The online table's rate limiter is opened up (no actors insert while the learner samples).
The policy is a small diffusion policy as in `train`. Last line: JSON.

    .venv/bin/python bench/learner_feed.py [--demos runs/demos-nominal-50] [--batch-size 256] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from ada_curriculum.agent.builder import Builder
from ada_curriculum.agent.learner import Learner
from ada_curriculum.agent.variable_source import VariableSource
from ada_curriculum.data import windows as windows_lib
from ada_curriculum.episode_store import EpisodeStore
from ada_curriculum.learning import create_train_state, make_optimizer, make_train_step
from ada_curriculum.policies import make_policy, normalizer
from ada_curriculum.policies.obs import flatten_obs
from ada_curriculum.replay import ReplayConfig
from ada_curriculum.train import TrainConfig
from policy_speed import demo_store  # bench/ is on the path when run as a script


def fill(client, store: str, online_copies: int) -> tuple[int, float]:
    """Demo table once, online table `online_copies` times (alternating success labels, as the
    online table holds failures too); returns (windows inserted, seconds)."""
    episodes = [ep for ep in EpisodeStore(store) if ep.success]
    arrays = []
    for ep in episodes:
        obs = flatten_obs(ep.observations)[: ep.length]
        task = np.array(list(ep.task.values()), np.float32)
        arrays.append((obs, np.asarray(ep.actions, np.float32), task))
    windows, t0 = 0, time.perf_counter()
    for obs, action, task in arrays:
        windows += client.add_episode("demo", obs, action, weight=1.0, success=True, version=-1, task=task)
    for copy in range(online_copies):
        for i, (obs, action, task) in enumerate(arrays):
            windows += client.add_episode("online", obs, action, weight=1.0, success=bool((i + copy) % 2),
                                          version=copy, task=task)
    return windows, time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--demos", default="runs/demos-nominal-50")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--demo-fraction", type=float, default=0.5)
    parser.add_argument("--online-copies", type=int, default=3)
    parser.add_argument("--sample-batches", type=int, default=100)
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--publish-every", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved memory/reverb rounds")
    args = parser.parse_args()

    store = demo_store(args.demos)
    cfg = TrainConfig(run=tempfile.mkdtemp(), demos=store, distributed=False, batch_size=args.batch_size,
                      demo_fraction=args.demo_fraction, publish_every=args.publish_every,
                      replay=ReplayConfig(min_size_to_sample=1))
    policy = make_policy("diffusion", cfg.diffusion)
    builder = Builder(cfg, policy)
    server = builder.make_replay_server(None)  # in-process args: the limiter never blocks
    client = builder.make_replay_client(server.address)
    out = {"bench": "learner_feed", "batch_size": args.batch_size, "demo_fraction": args.demo_fraction,
           "devices": str(jax.devices()), "loadavg_start": round(os.getloadavg()[0], 2)}
    try:
        windows, seconds = fill(client, store, args.online_copies)
        out.update(windows_inserted=windows, inserts_per_s=round(windows / seconds, 1))

        # Sampling alone, through the learner's path (tf.data over Reverb, mixed demo/online).
        batches = client.mixed_batches(args.batch_size, args.demo_fraction)
        next(batches)
        t0 = time.perf_counter()
        for _ in range(args.sample_batches):
            batch = next(batches)
        seconds = time.perf_counter() - t0
        out["samples_per_s"] = round(args.sample_batches * args.batch_size / seconds, 1)
        print("reverb", {k: out[k] for k in ("inserts_per_s", "samples_per_s")}, flush=True)

        episodes = windows_lib.load_store(store)
        stats = normalizer.fit(*windows_lib.stack_for_normalizer(episodes))
        variables = policy.init(jax.random.PRNGKey(0), stats)
        optimizer = make_optimizer(cfg.optim)
        objective = builder.objective()
        memory = [jax.device_put({k: np.asarray(v) for k, v in next(batches).items()}) for _ in range(8)]
        step = jax.jit(make_train_step(lambda *a: objective(policy, *a), optimizer, cfg.optim), donate_argnums=0)

        def fresh_state():
            return create_train_state(jax.tree_util.tree_map(jnp.copy, variables), optimizer, jax.random.PRNGKey(1))

        def memory_rate() -> float:
            state, m = step(fresh_state(), memory[0])
            jax.block_until_ready(m)
            t0 = time.perf_counter()
            for i in range(args.updates):
                state, m = step(state, memory[i % len(memory)])
            jax.block_until_ready(m)
            return args.updates / (time.perf_counter() - t0)

        def reverb_rate() -> float:
            learner = Learner(policy, objective, optimizer, cfg.optim, fresh_state(),
                              client.mixed_batches(args.batch_size, args.demo_fraction), VariableSource(),
                              publish_every=args.publish_every, stall_timeout=60.0)
            try:
                learner.step(1)  # compile, and let the batch thread fill its queue
                t0 = time.perf_counter()
                done = learner.step(args.updates)
                seconds = time.perf_counter() - t0
                assert done["updates_done"] == args.updates, done
                return args.updates / seconds
            finally:
                learner.close()

        rates = {"memory": [], "reverb": []}
        for _ in range(args.rounds):  # interleaved, best of --rounds: this VM's speed drifts
            rates["memory"].append(memory_rate())
            rates["reverb"].append(reverb_rate())
            print({k: [round(r, 2) for r in v] for k, v in rates.items()}, flush=True)
        mem, rev = max(rates["memory"]), max(rates["reverb"])
        out.update(policy="diffusion/" + cfg.diffusion.preset, params=policy.param_count(variables),
                   reverb_updates_per_s=round(rev, 2), memory_updates_per_s=round(mem, 2),
                   reverb_vs_memory_ratio=round(rev / mem, 3),
                   # Each round's pair ran back to back: the median of their ratios is the figure
                   # least moved by other load on a shared machine.
                   pairwise_median_ratio=round(float(np.median(np.divide(rates["reverb"], rates["memory"]))), 3),
                   rounds=args.rounds, target_reverb_vs_memory_ratio=0.9)
    finally:
        client.close()
        server.stop()
    out["loadavg_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
