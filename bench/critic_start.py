"""How a fresh success critic acts: the BC start's success on one plan of episodes when it samples
plainly, when a freshly initialised critic picks the best of N candidates with a zero output
layer (what `train --init BC_RUN` starts with), and with a random output layer (what it started
with before session 11). Side by side, the same episodes for every row.

    .venv/bin/python bench/critic_start.py --init runs/bc-rel-rot [--episodes 100] [--candidates 8]

The task box is the nominal placement with physics and distractors over their full ranges: what
the widening curriculum's first box holds when it widens the placement dimensions only.

Last line: one JSON object with each row's success and its ratio to plain sampling.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax

from ada_curriculum import evaluate
from ada_curriculum.curriculum import widening
from ada_curriculum.curriculum.config import WideningConfig
from ada_curriculum.policies import make_policy
from ada_curriculum.pretrain import load_policy
from envs.task_space import FULL

PLACEMENT = ("banana_x", "banana_y", "banana_yaw", "target_x", "target_y")


def random_head(policy, variables, seed: int):
    """The critic with its output layer drawn like its hidden ones (Flax's default Dense init)."""
    critic = dict(variables["params"]["critic"])
    last = f"Dense_{policy.config.critic_layers}"
    kernel = critic[last]["kernel"]
    init = jax.nn.initializers.lecun_normal()(jax.random.PRNGKey(seed), kernel.shape, kernel.dtype)
    critic[last] = {**critic[last], "kernel": init}
    return {**variables, "params": {**variables["params"], "critic": critic}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", default="runs/bc-rel-rot", help="a BC run (no critic)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--critic-seeds", default="0,1")
    p.add_argument("--seed", type=int, default=7, help="evaluation plan seed")
    p.add_argument("--num-envs", type=int, default=10)
    p.add_argument("--time-limit", type=int, default=80)
    args = p.parse_args()

    base, variables, _, _ = load_policy(args.init, use_ema=True)
    if base.kind != "diffusion" or base.has_critic:
        p.error(f"--init: expected a diffusion BC run without a critic, got {args.init}")
    policy = make_policy("diffusion", dataclasses.replace(base.config, critic_hidden=256,
                                                          num_candidates=args.candidates))
    tasks = widening.box(widening.init(FULL, WideningConfig(dims=PLACEMENT)), FULL)  # its first box
    plan = evaluate.episode_plan(tasks, args.episodes, args.seed)

    def success(pol, var) -> float:
        results = evaluate.rollout(pol, var, plan, num_envs=args.num_envs, seed=args.seed,
                                   env_kwargs={"time_limit": args.time_limit})
        return evaluate.summarize(results)["success_rate"]

    rows = {"plain": success(base, variables)}
    for s in (int(x) for x in args.critic_seeds.split(",")):
        fresh = policy.with_critic(variables, jax.random.PRNGKey(s))
        rows[f"zero_head_seed{s}"] = success(policy, fresh)
        rows[f"random_head_seed{s}"] = success(policy, random_head(policy, fresh, s))
        print(json.dumps({k: round(v, 3) for k, v in rows.items()}), flush=True)
    print(json.dumps({"bench": "critic_start", "init": args.init, "episodes": args.episodes,
                      "candidates": args.candidates, "success": rows,
                      "ratio_to_plain": {k: round(v / rows["plain"], 3) if rows["plain"] else None
                                         for k, v in rows.items()}}))


if __name__ == "__main__":
    main()
