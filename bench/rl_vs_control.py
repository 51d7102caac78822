"""Sparse-reward RL vs a demos-only control: the same beachhead, task box, seeds and env-step
budget; held-out success of both and of their start, on the same episodes.

- **rl**: the actor-learner run with a success critic (`diffusion.critic_hidden`): actors act
  with the critic's best of `--candidates` sampled chunks, the learner trains the critic on the
  actors' episode success and the denoiser on success-weighted windows plus demo BC.
- **control**: the same run with the reward unused: no critic, online windows weighted 0, so
  the learner trains on the demos alone (fine-tuning itself is not what is measured).

The arms run one after the other (neither competes with the other for cores). Each is
evaluated with `ada-curriculum eval`'s held-out plan (tasks and env seeds from the evaluation
stream, never the actors'); the rl arm also with one candidate, i.e. its fine-tuned denoiser
without the critic.

    .venv/bin/python bench/rl_vs_control.py --demos runs/demos-nominal-50 --init runs/bc-yaw \
        [--tasks near] [--env-steps 100000] [--minutes 20] [--eval-episodes 200] [--out runs/bench-rl]

Last line: one JSON object with `start_success`, `rl_success`, `rl_denoiser_success`,
`control_success`, their 95% intervals, the differences rl - control and rl - start with their
intervals, and `rl_beats_control` / `rl_beats_start` (the difference's interval above 0).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from ada_curriculum import config as config_lib
from ada_curriculum.cli import EvalConfig, evaluate_run
from ada_curriculum.evaluate import difference_interval
from ada_curriculum.train import TrainConfig, init_frame_settings, train


def evaluate(args, checkpoint: str, out: Path, **kw) -> dict:
    ev = evaluate_run(EvalConfig(checkpoint=checkpoint, tasks=args.tasks, episodes=args.eval_episodes,
                                 seeds=(args.eval_seed,), num_envs=20, time_limit=args.time_limit, out=str(out), **kw))
    return {k: ev[k] for k in ("successes", "episodes", "success_rate", "ci95")}


def run_arm(name: str, args, **settings) -> dict:
    run = Path(args.out) / name
    if run.exists() and not args.resume:
        shutil.rmtree(run)
    base = {
        "run": str(run), "init": args.init, "demos": args.demos, "tasks": args.tasks, "time_limit": args.time_limit,
        "num_actors": args.num_actors, "envs_per_actor": 8, "acting_inference_steps": 5,
        "demo_fraction": args.demo_fraction, "max_updates": None, "max_env_steps": args.env_steps,
        "max_minutes": args.minutes, "checkpoint_every": 500, "eval_every": 0, "dashboard": False,
        "embedding_every": 0, "seed": args.seed, "distributed": not args.in_process,
    }
    # The beachhead's observation frame and augmentation carry on into both arms.
    frame = init_frame_settings(args.init)
    settings = {**settings, "augment": frame["augment"],
                "diffusion": {**frame["diffusion"], **settings.get("diffusion", {})}}
    cfg = config_lib.from_dict(TrainConfig, {**base, **settings})
    t0 = time.perf_counter()
    summary = train(cfg)
    if summary["stopped_by"] in ("SIGINT", "SIGTERM"):  # a stopped bench stops, not on to the next arm
        raise SystemExit(f"{name}: stopped by {summary['stopped_by']}; its run is checkpointed in {run} "
                         "(--resume continues it)")
    return {"updates": summary["updates"], "env_steps": summary["env_steps"], "episodes": summary["episodes"],
            "train_seconds": round(time.perf_counter() - t0, 1), "stopped_by": summary["stopped_by"],
            "on_policy_success": summary.get("success_rate"),
            "recent_on_policy_success": summary.get("recent_success_rate")}


def difference(a: dict, b: dict) -> dict:
    lo, hi = difference_interval(a["successes"], a["episodes"], b["successes"], b["episodes"])
    return {"difference": round(a["success_rate"] - b["success_rate"], 4), "ci95": [round(lo, 4), round(hi, 4)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demos", default="runs/demos-nominal-50")
    p.add_argument("--init", default="runs/bc-yaw")
    p.add_argument("--out", default="runs/bench-rl")
    p.add_argument("--tasks", default="near", choices=["nominal", "near", "full"])
    p.add_argument("--env-steps", type=int, default=100_000, help="each arm's budget of env steps")
    p.add_argument("--minutes", type=float, default=20.0, help="each arm's time cap")
    p.add_argument("--time-limit", type=int, default=80, help="control steps per episode")
    p.add_argument("--num-actors", type=int, default=2)
    p.add_argument("--demo-fraction", type=float, default=0.25)
    p.add_argument("--candidates", type=int, default=8, help="chunks the rl arm's critic chooses among")
    p.add_argument("--critic-hidden", type=int, default=256)
    p.add_argument("--eval-episodes", type=int, default=200)
    p.add_argument("--eval-seed", type=int, default=11)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue arms whose run directories exist")
    p.add_argument("--in-process", action="store_true", help="actors and learner in this process (a smoke run)")
    args = p.parse_args()
    out = Path(args.out)

    arms = {
        "rl": run_arm("rl", args, diffusion={"critic_hidden": args.critic_hidden, "num_candidates": args.candidates}),
        "control": run_arm("control", args, online_weight=0.0),
    }
    start = evaluate(args, args.init, out / "start-eval")
    rl = evaluate(args, str(out / "rl"), out / "rl" / "eval")
    rl_denoiser = evaluate(args, str(out / "rl"), out / "rl" / "eval-n1", num_candidates=1)
    control = evaluate(args, str(out / "control"), out / "control" / "eval")
    vs_control, vs_start = difference(rl, control), difference(rl, start)
    result = {
        "bench": "rl_vs_control", "tasks": args.tasks, "budget_env_steps": args.env_steps,
        "budget_minutes": args.minutes, "candidates": args.candidates, "eval_episodes": args.eval_episodes,
        "eval_seed": args.eval_seed,
        "start_success": start["success_rate"], "rl_success": rl["success_rate"],
        "rl_denoiser_success": rl_denoiser["success_rate"], "control_success": control["success_rate"],
        "start_ci95": start["ci95"], "rl_ci95": rl["ci95"], "rl_denoiser_ci95": rl_denoiser["ci95"],
        "control_ci95": control["ci95"],
        "rl_minus_control": vs_control["difference"], "rl_minus_control_ci95": vs_control["ci95"],
        "rl_minus_start": vs_start["difference"], "rl_minus_start_ci95": vs_start["ci95"],
        "rl_beats_control": vs_control["ci95"][0] > 0, "rl_beats_start": vs_start["ci95"][0] > 0,
        "arms": arms,
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
