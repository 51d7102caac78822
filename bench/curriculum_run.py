"""Curriculum vs uniform sampling: the same fixed budget of actor-learner training from the same
beachhead, one run with a curriculum over the full task space (one per strategy when
`--curriculum` lists several) and one sampling the full task space uniformly, then held-out
full-distribution success for each (and for the beachhead).

Both arms start from the same `--init` run (BC on the nominal demos), fill the same demo table,
use the same seeds and the same budget (`--env-steps`, with `--minutes` as a safety cap), and
run one after the other on the same machine, so neither competes with the other for cores.
The held-out evaluation uses `ada-curriculum eval`'s episode plan (tasks and env seeds drawn from
the evaluation stream, never the actors'), identical for every policy.

    .venv/bin/python bench/curriculum_run.py --demos runs/demos-nominal-50 --init runs/bc-diffusion \
        [--env-steps 40000] [--minutes 30] [--curriculum widening] [--eval-episodes 100] [--out runs/bench-curriculum]
        [--critic-hidden 256 --candidates 8]   # RL with a success critic, as in rl_vs_control
        [--objective ppo --eta 1 --min-step-std 0.1]   # DPPO through the denoising steps, no critic

The beachhead's observation frame and augmentation (`pretrain --diffusion.obs-frame relative
--augment rotate`) carry on into every arm.

Last line: one JSON object with `curriculum_success`, `uniform_success`, their 95% intervals, the
difference with its unpaired and paired intervals (every arm plays the same episodes; the paired
one decides `curriculum_wins_significantly`), `curriculum_wins` (the first strategy's success
above the uniform arm's), and under `strategies` the same against uniform for every strategy run.
With `--seeds 0,1,2,...` the whole comparison runs once per seed (OUT/seed-N, each with its own
held-out episodes) and the last line pools them: the mean difference with a Student-t interval
over seeds (it holds the run-to-run spread, and decides `curriculum_wins_significantly`) and a
paired interval over all episodes. `--resume` reuses arms that finished and were evaluated.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from ada_curriculum import config as config_lib
from ada_curriculum.cli import EvalConfig, evaluate_run
from ada_curriculum.evaluate import difference_interval, paired_difference_interval
from ada_curriculum.train import TrainConfig, init_frame_settings, train


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _seed_dir(out: str, seed: int) -> str:
    return str(Path(out) / f"seed-{seed}")


def _finished_arm(run: Path, args) -> dict | None:
    """A finished and evaluated arm's figures (for --resume), or None."""
    summary, ev = _read_json(run / "summary.json"), _read_json(run / "eval-full" / "summary.json")
    if summary is None or ev is None:
        return None
    if summary["stopped_by"] in ("SIGINT", "SIGTERM") or ev["episodes"] != args.eval_episodes:
        return None
    return _arm_figures(summary, ev, None)


def _arm_figures(summary: dict, ev: dict, seconds) -> dict:
    return {"updates": summary["updates"], "env_steps": summary["env_steps"], "episodes": summary["episodes"],
            "train_seconds": seconds, "stopped_by": summary["stopped_by"],
            "recent_success_rate": summary.get("recent_success_rate"),
            "curriculum": {k: v for k, v in (summary.get("curriculum") or {}).items()
                           if k in ("curriculum/stage", "curriculum/max_stage", "curriculum/coverage")},
            "eval": {k: ev[k] for k in ("successes", "episodes", "success_rate", "ci95")}}


def run_arm(name: str, args, curriculum: dict) -> dict:
    run = Path(args.out) / name
    frame = init_frame_settings(args.init)  # the beachhead's observation frame and augmentation carry on
    if run.exists() and not args.resume:
        shutil.rmtree(run)
    if args.resume and (done := _finished_arm(run, args)) is not None:
        print(f"{run}: finished and evaluated; reusing its figures")
        return done
    settings = {
        "run": str(run), "init": args.init, "demos": args.demos, "tasks": "full", "time_limit": args.time_limit,
        "num_actors": args.num_actors, "envs_per_actor": args.envs_per_actor,
        "acting_inference_steps": args.acting_inference_steps, "demo_fraction": args.demo_fraction, "max_updates": None,
        "online_weight": getattr(args, "online_weight", 1.0),
        "critic_warmup_updates": getattr(args, "critic_warmup_updates", 0),
        "max_env_steps": args.env_steps, "max_minutes": args.minutes, "checkpoint_every": 1000,
        "eval_every": 0, "dashboard": False, "embedding_every": 0, "seed": args.seed, "curriculum": curriculum,
        "distributed": not args.in_process,
        "diffusion": {**frame["diffusion"], "critic_hidden": args.critic_hidden, "num_candidates": args.candidates,
                      "critic_ensemble": getattr(args, "critic_ensemble", 1),
                      "critic_pessimism": getattr(args, "critic_pessimism", 0.0),
                      **({"eta": args.eta} if getattr(args, "eta", None) is not None else {})},
        "augment": frame["augment"],
        "optim": {"learning_rate": args.learning_rate, "warmup_steps": 100, "decay_steps": 100_000,
                  "ema_warmup": False, "ema_decay": 0.995},
    }
    if getattr(args, "objective", "weighted_bc") == "ppo":
        # DPPO: acting on plain stochastic samples with a noise floor, with the weights it trains.
        settings.update(objective="ppo", ppo={"clip": args.ppo_clip, "first_step": args.ppo_first_step})
        settings["diffusion"].update(min_step_std=args.min_step_std, critic_hidden=0, num_candidates=1)
        settings["optim"]["ema_decay"] = 0.0
        # PPO learns from recent decisions: a small FIFO table keeps the ratios near 1 (with the
        # default 100k the table keeps every decision and most ratios clip; RESULTS, session 14).
        settings["replay"] = {"samples_per_insert": args.samples_per_insert,
                              "online_table_size": args.online_table_size}
    cfg = config_lib.from_dict(TrainConfig, settings)
    t0 = time.perf_counter()
    summary = train(cfg)
    seconds = time.perf_counter() - t0
    if summary["stopped_by"] in ("SIGINT", "SIGTERM"):  # a stopped bench stops, not on to the next arm
        raise SystemExit(f"{name}: stopped by {summary['stopped_by']}; its run is checkpointed in {run} "
                         "(--resume continues it)")
    ev = evaluate_run(EvalConfig(checkpoint=str(run), tasks="full", episodes=args.eval_episodes, seeds=(args.seed,),
                                 num_envs=10, time_limit=args.time_limit, out=str(run / "eval-full")))
    return _arm_figures(summary, ev, round(seconds, 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demos", default="runs/demos-nominal-50")
    p.add_argument("--init", default="runs/bc-diffusion")
    p.add_argument("--out", default="runs/bench-curriculum")
    p.add_argument("--curriculum", default="widening",
                   help="strategy, or several comma-separated (widening,band,plr): one arm each, beside uniform")
    p.add_argument("--curriculum-json", default="{}",
                   help='more curriculum settings, e.g. \'{"widening": {"window": 20}}\' (a budget this short '
                        'needs boundary decisions after fewer episodes)')
    p.add_argument("--env-steps", type=int, default=40_000, help="each arm's budget of env steps")
    p.add_argument("--minutes", type=float, default=30.0, help="each arm's time cap")
    p.add_argument("--time-limit", type=int, default=80, help="control steps per episode")
    p.add_argument("--num-actors", type=int, default=2)
    p.add_argument("--envs-per-actor", type=int, default=8)
    p.add_argument("--acting-inference-steps", type=int, default=5, help="DDIM steps when acting (as make run)")
    p.add_argument("--demo-fraction", type=float, default=0.25)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--online-weight", type=float, default=1.0,
                   help="weight of the actors' successful windows in the denoiser's loss (0: the denoiser keeps to "
                        "the demos and only the critic learns from the actors; see bench/self_imitation.py)")
    p.add_argument("--critic-hidden", type=int, default=0, help="success critic width (0: none; see rl_vs_control)")
    p.add_argument("--candidates", type=int, default=1, help="chunks the critic chooses among when acting")
    p.add_argument("--critic-ensemble", type=int, default=1, help="critic networks (see policies/critic.py)")
    p.add_argument("--critic-pessimism", type=float, default=0.0,
                   help="acting ranks candidates by the ensemble's mean logit minus this times its spread")
    p.add_argument("--eta", type=float, default=None,
                   help="DDIM stochasticity when acting (none: the beachhead's; 1 suits it better, see RESULTS)")
    p.add_argument("--critic-warmup-updates", type=int, default=0,
                   help="actors act on plain samples until their weights come from this many updates")
    p.add_argument("--objective", choices=("weighted_bc", "ppo"), default="weighted_bc",
                   help="the learner's objective (ppo: DPPO through the denoising steps; no critic)")
    p.add_argument("--min-step-std", type=float, default=0.05,
                   help="ppo: floor on each denoising step's noise (0.1 costs the beachhead 0.09; RESULTS)")
    p.add_argument("--ppo-clip", type=float, default=0.1, help="ppo: ratio clip per denoising step")
    p.add_argument("--ppo-first-step", type=int, default=0, help="ppo: denoising steps before this one are not trained")
    p.add_argument("--samples-per-insert", type=float, default=8.0,
                   help="ppo: samples per decision (a decision stands for a chunk, 8 windows)")
    p.add_argument("--online-table-size", type=int, default=768,
                   help="ppo: decisions kept (FIFO); PPO needs recent ones")
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue arms whose run directories exist")
    p.add_argument("--in-process", action="store_true", help="actors and learner in this process (a smoke run)")
    p.add_argument("--seeds", default=None,
                   help="several seeds, e.g. 0,1,2,3: the whole comparison per seed (in OUT/seed-N), then the "
                        "differences pooled over seeds (each seed has its own held-out episodes)")
    args = p.parse_args()
    strategies = [s.strip() for s in args.curriculum.split(",") if s.strip()]
    if not strategies or set(strategies) - {"widening", "band", "plr"}:
        p.error(f"--curriculum: expected strategies among widening, band, plr, got {args.curriculum!r}")
    try:
        seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    except ValueError:
        p.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if len(set(seeds)) != len(seeds):
        p.error(f"--seeds: repeated seed in {args.seeds!r}")
    if len(seeds) == 1:
        print(json.dumps(compare(argparse.Namespace(**{**vars(args), "seed": seeds[0]}), strategies)))
        return
    per_seed = {seed: compare(argparse.Namespace(**{**vars(args), "seed": seed, "out": _seed_dir(args.out, seed)}),
                              strategies) for seed in seeds}
    out = pool_seeds(args, strategies, per_seed)
    (Path(args.out) / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


def _outcomes(out: str, name: str) -> list:
    rows = (Path(out) / name / "eval-full" / "episodes.jsonl").read_text().splitlines()
    return [json.loads(r)["success"] for r in rows]


def _arm_name(strategies: list, strategy: str) -> str:
    # The first strategy's arm keeps the name "curriculum" (and its run directory) as before.
    return "curriculum" if strategy == strategies[0] else f"curriculum-{strategy}"


def compare(args, strategies: list) -> dict:
    """One seed's comparison: the beachhead's evaluation, every strategy's arm, the uniform arm;
    writes OUT/summary.json and returns it."""
    init_out = Path(args.out) / "init-eval-full"
    init_eval = _reuse_init_eval(init_out, args) if args.resume else None
    if init_eval is None:
        # The beachhead is evaluated with the arms' acting eta, so init_success is their starting point.
        init_eval = evaluate_run(EvalConfig(checkpoint=args.init, tasks="full", episodes=args.eval_episodes,
                                            seeds=(args.seed,), num_envs=10, time_limit=args.time_limit, eta=args.eta,
                                            out=str(init_out)))
    settings = json.loads(args.curriculum_json)
    names = {s: _arm_name(strategies, s) for s in strategies}
    arms = {names[s]: run_arm(names[s], args, {**settings, "strategy": s}) for s in strategies}
    arms["uniform"] = run_arm("uniform", args, {"strategy": "none"})
    u = arms["uniform"]["eval"]

    def versus_uniform(name):
        c = arms[name]["eval"]
        lo, hi = difference_interval(c["successes"], c["episodes"], u["successes"], u["episodes"])
        # Every arm plays the same evaluation episodes, so the paired interval is the one to judge by.
        plo, phi = paired_difference_interval(_outcomes(args.out, name), _outcomes(args.out, "uniform"))
        return {"success": c["success_rate"], "ci95": c["ci95"], "minus_uniform": round(c["success_rate"] - u["success_rate"], 4),
                "difference_ci95": [round(lo, 4), round(hi, 4)], "paired_difference_ci95": [round(plo, 4), round(phi, 4)],
                "wins": c["success_rate"] > u["success_rate"], "wins_significantly": plo > 0}

    strategies_out = {s: versus_uniform(names[s]) for s in strategies}
    c, first = arms["curriculum"]["eval"], strategies_out[strategies[0]]
    out = {
        "bench": "curriculum_run", "curriculum_strategy": strategies[0], "seed": args.seed,
        "budget_env_steps": args.env_steps,
        "critic_hidden": args.critic_hidden, "candidates": args.candidates,
        "critic_ensemble": args.critic_ensemble, "critic_pessimism": args.critic_pessimism, "eta": args.eta,
        "objective": args.objective,
        **({"ppo": {"min_step_std": args.min_step_std, "clip": args.ppo_clip, "first_step": args.ppo_first_step,
                    "samples_per_insert": args.samples_per_insert, "online_table_size": args.online_table_size}}
           if args.objective == "ppo" else {}),
        "curriculum_settings": json.loads(args.curriculum_json),
        "budget_minutes": args.minutes, "eval_tasks": "full", "eval_episodes": args.eval_episodes,
        "init_success": init_eval["success_rate"], "curriculum_success": c["success_rate"],
        "uniform_success": u["success_rate"], "curriculum_ci95": c["ci95"], "uniform_ci95": u["ci95"],
        "curriculum_minus_uniform": first["minus_uniform"], "difference_ci95": first["difference_ci95"],
        "paired_difference_ci95": first["paired_difference_ci95"],
        "curriculum_wins": first["wins"], "curriculum_wins_significantly": first["wins_significantly"],
        "strategies": strategies_out, "arms": arms,
    }
    (Path(args.out) / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def _reuse_init_eval(out: Path, args) -> dict | None:
    ev = _read_json(out / "summary.json")
    same = ev is not None and ev["episodes"] == args.eval_episodes and ev["sampling"].get("eta") == args.eta
    return ev if same else None


def pool_seeds(args, strategies: list, per_seed: dict) -> dict:
    """Every strategy against uniform over seeds. Two intervals: over seeds (Student t on the
    per-seed differences; it holds the run-to-run spread, which decides), and over all held-out
    episodes paired (narrower: it treats each trained policy as fixed)."""
    from scipy import stats

    pooled = {}
    for s in strategies:
        name = _arm_name(strategies, s)
        diffs = np.array([r["strategies"][s]["minus_uniform"] for r in per_seed.values()])
        half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs))
        seed_dirs = [_seed_dir(args.out, seed) for seed in per_seed]
        a = [x for d in seed_dirs for x in _outcomes(d, name)]
        b = [x for d in seed_dirs for x in _outcomes(d, "uniform")]
        plo, phi = paired_difference_interval(a, b)
        pooled[s] = {"success_mean": round(float(np.mean([r["strategies"][s]["success"] for r in per_seed.values()])), 4),
                     "minus_uniform_per_seed": diffs.round(4).tolist(),
                     "minus_uniform_mean": round(float(diffs.mean()), 4),
                     "seed_ci95": [round(float(diffs.mean() - half), 4), round(float(diffs.mean() + half), 4)],
                     "pooled_paired_ci95": [round(plo, 4), round(phi, 4)],
                     "wins": bool(diffs.mean() > 0), "wins_significantly": bool(diffs.mean() - half > 0)}
    first = pooled[strategies[0]]
    return {"bench": "curriculum_run", "seeds": list(per_seed), "curriculum_strategy": strategies[0],
            "eval_episodes_per_seed": args.eval_episodes, "budget_env_steps": args.env_steps, "eta": args.eta,
            "critic_hidden": args.critic_hidden, "candidates": args.candidates, "objective": args.objective,
            "curriculum_settings": json.loads(args.curriculum_json),
            "init_success_mean": round(float(np.mean([r["init_success"] for r in per_seed.values()])), 4),
            "curriculum_success_mean": first["success_mean"],
            "uniform_success_mean": round(float(np.mean([r["uniform_success"] for r in per_seed.values()])), 4),
            "curriculum_minus_uniform_mean": first["minus_uniform_mean"], "seed_ci95": first["seed_ci95"],
            "pooled_paired_ci95": first["pooled_paired_ci95"], "curriculum_wins": first["wins"],
            "curriculum_wins_significantly": first["wins_significantly"], "strategies": pooled,
            "per_seed": {str(k): {kk: v[kk] for kk in ("init_success", "curriculum_success", "uniform_success",
                                                       "curriculum_minus_uniform", "paired_difference_ci95")}
                         for k, v in per_seed.items()}}


if __name__ == "__main__":
    main()
