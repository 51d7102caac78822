"""Policy speed on CPU: learner updates/s at batch 256 and action-chunk latency, per policy and
preset; and the train-step rate fed from the episode store (windows + prefetch) against the same
step on batches already in memory. Last line: JSON.

    .venv/bin/python bench/policy_speed.py [--demos runs/demos-nominal-50] [--presets small,base,large]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ada_curriculum.data import windows as windows_lib
from ada_curriculum.data.loader import Prefetcher
from ada_curriculum.learning import OptimConfig, create_train_state, make_optimizer, make_train_step
from ada_curriculum.policies import make_policy, normalizer


def demo_store(path: str | None) -> str:
    if path and Path(path).exists():
        return path
    from ada_curriculum.cli import CollectConfig, collect

    out = Path(tempfile.mkdtemp()) / "demos"
    collect(CollectConfig(out=str(out), tasks="nominal", episodes=20, seed=0))
    return str(out)


def timed(fn, n):
    fn()  # compile / warm up
    t0 = time.perf_counter()
    for _ in range(n):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / n


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--demos", default="runs/demos-nominal-50")
    parser.add_argument("--presets", default="small,base,large")
    parser.add_argument("--kinds", default="diffusion,transformer")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--feed-updates", type=int, default=200)
    args = parser.parse_args()

    episodes = windows_lib.load_store(demo_store(args.demos))
    stats = normalizer.fit(*windows_lib.stack_for_normalizer(episodes))
    cfg = OptimConfig()
    opt = make_optimizer(cfg)
    rng = np.random.default_rng(0)
    out = {"bench": "policy_speed", "batch_size": args.batch_size, "devices": str(jax.devices()), "policies": {}}

    for kind in args.kinds.split(","):
        for preset in args.presets.split(","):
            policy = make_policy(kind, preset=preset)
            variables = policy.init(jax.random.PRNGKey(0), stats)
            # The step donates its state: give it copies so `variables` stays usable below.
            state = create_train_state(jax.tree_util.tree_map(jnp.copy, variables), opt, jax.random.PRNGKey(1))
            step = jax.jit(make_train_step(policy, opt, cfg), donate_argnums=0)
            sampler = windows_lib.windows_for(policy, episodes)
            batch = jax.device_put(sampler.sample(rng, args.batch_size))
            holder = {"state": state}

            def update():
                holder["state"], m = step(holder["state"], batch)
                return m["loss"]

            t_update = timed(update, args.updates)
            predict = jax.jit(lambda v, b, r: policy.predict_action(v, b, r))
            latency = {}
            for bs in (1, 16):
                obs_batch = {k: v for k, v in sampler.sample(rng, bs).items()
                             if k in ("obs", "prev_action", "trial_index", "mask")}
                if kind == "diffusion":
                    obs_batch["obs"] = obs_batch["obs"][:, : policy.n_obs_steps]
                obs_batch = jax.device_put(obs_batch)
                key = jax.random.PRNGKey(0)
                latency[f"latency_ms_batch{bs}"] = round(1000 * timed(lambda: predict(variables, obs_batch, key), 20), 2)
            out["policies"][f"{kind}/{preset}"] = {
                "params": policy.param_count(variables), "updates_per_s": round(1 / t_update, 2), **latency}
            print(kind, preset, out["policies"][f"{kind}/{preset}"], flush=True)

    # Input pipeline: store-backed windows through the prefetch thread vs pre-made device batches.
    policy = make_policy("diffusion", preset="small")
    variables = policy.init(jax.random.PRNGKey(0), stats)
    step = jax.jit(make_train_step(policy, opt, cfg), donate_argnums=0)
    sampler = windows_lib.windows_for(policy, episodes)
    memory = [jax.device_put(sampler.sample(rng, args.batch_size)) for _ in range(8)]

    def run(batches):
        state = create_train_state(jax.tree_util.tree_map(jnp.copy, variables), opt, jax.random.PRNGKey(1))
        state, m = step(state, next(batches))
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for _ in range(args.feed_updates):
            state, m = step(state, next(batches))
        jax.block_until_ready(m)
        return args.feed_updates / (time.perf_counter() - t0)

    def cycle():
        i = 0
        while True:
            yield memory[i % len(memory)]
            i += 1

    rates = {"memory": [], "store": []}
    for _ in range(2):  # interleaved, best of two: this VM's speed drifts
        rates["memory"].append(run(cycle()))
        # The store path re-reads the episode store and cuts windows, as `pretrain` does.
        store_sampler = windows_lib.windows_for(policy, windows_lib.load_store(demo_store(args.demos)))
        prefetch = Prefetcher(store_sampler, args.batch_size, seed=0)
        try:
            rates["store"].append(run(iter(prefetch)))
        finally:
            prefetch.close()
    mem, store = max(rates["memory"]), max(rates["store"])
    out.update(feed_policy="diffusion/small", store_updates_per_s=round(store, 2),
               memory_updates_per_s=round(mem, 2), store_vs_memory_ratio=round(store / mem, 3),
               target_store_vs_memory_ratio=0.9)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
