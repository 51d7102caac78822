"""Where the early on-policy dip of critic-guided RL comes from: one uniform arm of
`curriculum_run` (its settings, seed 0) trained in segments of env steps, resumed each time, and
after each segment the checkpoint evaluated on the same held-out episodes three ways: the
denoiser alone, the critic's best of N candidates, and the same with a consensus gripper
(`--diffusion.candidate-gripper consensus`). Side by side, the same episodes for every cell.

    .venv/bin/python bench/critic_dip.py --init runs/bc-rel-rot --demos runs/demos-nominal-50 \
        --out runs/probe-dip [--segments 8000,16000,26000] [--episodes 100] \
        [--critic-ensemble 5 --critic-pessimism 1]

Last line: one JSON object with, per segment, updates, on-policy success and the three success
rates (and the start's on the same episodes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ada_curriculum import config as config_lib
from ada_curriculum import evaluate
from ada_curriculum.pretrain import load_policy
from ada_curriculum.train import TrainConfig, init_frame_settings, train

WAYS = {"denoiser": (1, "own"), "best_of_n": (None, "own"), "best_of_n_consensus": (None, "consensus")}


def success_by_way(run: str, candidates: int, episodes: int, seed: int, time_limit: int,
                   ways=WAYS) -> dict:
    policy, variables, _, _ = load_policy(run, use_ema=True)
    plan = evaluate.episode_plan("full", episodes, seed)
    out = {}
    for way, (n, gripper) in ways.items():
        config = dataclasses.replace(policy.config, num_candidates=n or candidates, candidate_gripper=gripper)
        results = evaluate.rollout(dataclasses.replace(policy, config=config), variables, plan, num_envs=10,
                                   seed=seed, env_kwargs={"time_limit": time_limit})
        out[way] = sum(r.success for r in results) / len(results)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", default="runs/bc-rel-rot")
    p.add_argument("--demos", default="runs/demos-nominal-50")
    p.add_argument("--out", default="runs/probe-dip")
    p.add_argument("--segments", default="8000,16000,26000", help="env steps at which to stop and evaluate")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--critic-ensemble", type=int, default=1)
    p.add_argument("--critic-pessimism", type=float, default=0.0)
    p.add_argument("--time-limit", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    name = "base" if args.critic_ensemble == 1 else f"ens{args.critic_ensemble}-p{args.critic_pessimism:g}"
    run = Path(args.out) / name
    if run.exists():
        raise SystemExit(f"out: {run} exists; remove it or pass another --out")
    frame = init_frame_settings(args.init)
    start_policy, start_variables, _, _ = load_policy(args.init)
    base = evaluate.rollout(start_policy, start_variables, evaluate.episode_plan("full", args.episodes, args.seed),
                            num_envs=10, seed=args.seed, env_kwargs={"time_limit": args.time_limit})
    rows = []
    for env_steps in (int(s) for s in args.segments.split(",")):
        # curriculum_run's uniform arm, stopped at `env_steps` (a later segment resumes the run).
        settings = {
            "run": str(run), "init": args.init, "demos": args.demos, "tasks": "full", "time_limit": args.time_limit,
            "num_actors": 2, "envs_per_actor": 8, "acting_inference_steps": 10, "demo_fraction": 0.25,
            "max_updates": None, "max_env_steps": env_steps, "max_minutes": 60, "checkpoint_every": 1000,
            "eval_every": 0, "dashboard": False, "embedding_every": 0, "seed": args.seed,
            "curriculum": {"strategy": "none"}, "distributed": True,
            "diffusion": {**frame["diffusion"], "critic_hidden": 256, "num_candidates": args.candidates,
                          "critic_ensemble": args.critic_ensemble, "critic_pessimism": args.critic_pessimism},
            "augment": frame["augment"],
            "optim": {"learning_rate": 3e-5, "warmup_steps": 100, "decay_steps": 100_000, "ema_warmup": False,
                      "ema_decay": 0.995},
        }
        summary = train(config_lib.from_dict(TrainConfig, settings))
        if summary["stopped_by"] in ("SIGINT", "SIGTERM"):
            raise SystemExit(f"stopped by {summary['stopped_by']}; {run} is checkpointed")
        row = {"env_steps": summary["env_steps"], "updates": summary["updates"],
               "on_policy_recent": summary.get("recent_success_rate"),
               **success_by_way(str(run), args.candidates, args.episodes, args.seed, args.time_limit)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"bench": "critic_dip", "init": args.init, "episodes": args.episodes,
                      "critic_ensemble": args.critic_ensemble, "critic_pessimism": args.critic_pessimism,
                      "start": sum(r.success for r in base) / len(base), "segments": rows}))


if __name__ == "__main__":
    main()
