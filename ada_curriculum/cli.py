"""The ``ada-curriculum`` command line.

Bad input (config values, an existing output store, unknown env names) is reported
as one ``error: ...`` line on stderr with exit code 2, before any work is done.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Optional

from ada_curriculum import __version__
from ada_curriculum.config import ArgumentParser, ConfigError, add_arguments, from_namespace, save_config
from ada_curriculum.checkpointing import CheckpointError
from ada_curriculum.dashboard import DashboardConfig
from ada_curriculum.episode_store import MANIFEST, EpisodeRecorder, EpisodeStoreError, EpisodeWriter
from envs.task_space import TaskError

EXIT_USAGE = 2
PLAY_TIME_LIMIT = 400


@dataclasses.dataclass
class CollectConfig:
    """Record episodes into an episode store: scripted demonstrations, or (with --policy-run)
    rollouts of a pretrained diffusion policy sampled at a per-trial degradation schedule
    (meta-learning data: worse early trials, better late ones, failed trials kept)."""

    out: str = dataclasses.field(metadata={"help": "output directory (must not hold a store yet)", "metavar": "DIR"})
    tasks: Literal["nominal", "near", "full"] = dataclasses.field(
        default="nominal", metadata={"help": "task distribution to sample episodes from"}
    )
    episodes: int = dataclasses.field(default=10, metadata={"min": 1, "help": "number of episodes", "metavar": "N"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed for the env and the demonstrator"})
    env: str = dataclasses.field(default="banana-place", metadata={"help": "registered env name", "metavar": "NAME"})
    play: bool = dataclasses.field(default=False, metadata={"help": "demonstrator adds exploratory 'play' motions"})
    time_limit: Optional[int] = dataclasses.field(
        default=None, metadata={"min": 1, "help": "control steps per trial (none: the env's default)", "metavar": "N"}
    )
    trials: Optional[int] = dataclasses.field(
        default=None, metadata={"min": 1, "help": "trials of one task per episode (none: the env's default)",
                                "metavar": "K"})
    policy_run: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "act with this pretrained diffusion policy (a pretrain/train run dir) "
                                        "instead of the scripted demonstrator", "metavar": "RUN"})
    degradation_start: Optional[float] = dataclasses.field(
        default=None, metadata={"min": 0.0, "max": 1.0, "metavar": "LEVEL",
                                "help": "with --policy-run: degradation level of trial 1 (default 1: fewest DDIM "
                                        "steps, hottest noise)"})
    degradation_end: Optional[float] = dataclasses.field(
        default=None, metadata={"min": 0.0, "max": 1.0, "metavar": "LEVEL",
                                "help": "with --policy-run: degradation level of trial k (default 0: full quality); "
                                        "linear in between"})
    num_envs: int = dataclasses.field(
        default=8, metadata={"min": 1, "help": "with --policy-run: envs stepped together"})
    ema: bool = dataclasses.field(default=True, metadata={"help": "with --policy-run: act with the EMA weights"})
    eta: Optional[float] = dataclasses.field(
        default=None, metadata={"min": 0.0, "max": 1.0, "help": "with --policy-run: DDIM stochasticity in every "
                                                            "trial (none: the policy's own; 0 deterministic)"})

    def validate(self):
        if self.policy_run is None:
            for name in ("degradation_start", "degradation_end", "eta"):
                if getattr(self, name) is not None:
                    raise ConfigError(name, "only applies with --policy-run")
        elif self.play:
            raise ConfigError("play", "is the scripted demonstrator's; it does not apply with --policy-run")


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} exists and is not a directory")
    if (out / MANIFEST).exists():
        raise ConfigError("out", f"{out} already holds an episode store; choose a new directory")


def collect(cfg: CollectConfig) -> dict:
    """Record ``cfg.episodes`` episodes (scripted, or a degraded policy's); returns the summary.

    Every episode's manifest entry gets ``meta.trial_success`` and ``meta.trial_steps``;
    summary.json adds ``success_per_trial`` and ``last_vs_first_trial`` (see
    `evaluate.per_trial_summary`). ``successes``/``success_rate`` count the episodes whose last
    trial succeeded.
    """
    out = Path(cfg.out)
    _check_out_dir(out)

    import envs  # heavy (MuJoCo); only once the arguments are known to be good

    env_kwargs = {"tasks": cfg.tasks, "seed": cfg.seed}
    if cfg.time_limit is not None:
        env_kwargs["time_limit"] = cfg.time_limit
    elif cfg.play:
        env_kwargs["time_limit"] = PLAY_TIME_LIMIT  # several placements need more than one trial's time
    if cfg.trials is not None:
        env_kwargs["trials"] = cfg.trials
    try:
        env = envs.make(cfg.env, **env_kwargs)
    except ValueError as e:  # unknown env name or bad env parameters
        raise ConfigError(None, str(e)) from None
    if cfg.policy_run is not None:
        trials = env.trials
        env.close()
        return _collect_with_policy(cfg, out, env_kwargs, trials)
    demo = envs.ScriptedDemonstrator(seed=cfg.seed, play=cfg.play, plate_offsets=env.plate_offsets)

    from tqdm import tqdm

    writer = EpisodeWriter(out, cfg.env, env_kwargs)
    save_config(cfg, out / "config.json")
    recorder = EpisodeRecorder()
    successes = steps = 0
    trial_successes = []
    start = time.perf_counter()
    progress = tqdm(total=cfg.episodes, unit="ep", file=sys.stderr, disable=not sys.stderr.isatty())
    try:
        for _ in range(cfg.episodes):
            ts = env.reset()
            demo.reset()
            recorder.start(ts)
            trial_success, trial_steps, n = [], [], 0
            while not ts.last():
                action = demo.act(ts.observation)  # the demonstrator restarts itself on a new trial
                ts = env.step(action)
                recorder.step(action, ts)
                n += 1
                if ts.info.get("trial_ended") or ts.last():
                    trial_success.append(bool(ts.info["success"]))
                    trial_steps.append(n)
                    n = 0
            success = bool(ts.info["success"])
            episode = recorder.finish(env.task.to_dict(), env.episode_seed, success, getattr(env, "trials", 1),
                                      meta={"trial_success": trial_success, "trial_steps": trial_steps})
            writer.add(episode)
            trial_successes.append(trial_success)
            successes += success
            steps += episode.length
            progress.update()
            progress.set_postfix(success=f"{successes}/{progress.n}")
    finally:
        progress.close()
        writer.close()
        env.close()
    return _write_collect_summary(cfg, out, successes, steps, trial_successes, time.perf_counter() - start)


def _write_collect_summary(cfg: CollectConfig, out: Path, successes: int, steps: int, trial_successes: list,
                           seconds: float, extra: dict | None = None) -> dict:
    from ada_curriculum.evaluate import per_trial_summary

    summary = {
        "env": cfg.env,
        "tasks": cfg.tasks,
        "episodes": cfg.episodes,
        "successes": successes,
        "success_rate": successes / cfg.episodes,
        "steps": steps,
        "mean_steps": steps / cfg.episodes,
        "seconds": round(seconds, 3),
        "env_steps_per_s": round(steps / seconds, 1) if seconds > 0 else None,
        "trials": max((len(t) for t in trial_successes), default=1),
        **per_trial_summary(trial_successes),
        **(extra or {}),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _collect_with_policy(cfg: CollectConfig, out: Path, env_kwargs: dict, trials: int) -> dict:
    """Meta-learning data: k-trial episodes of one task acted by a pretrained diffusion policy
    whose trial i is sampled at degradation level `degradation_schedule(start, end, k)[i]`
    (fewer DDIM steps and hotter noise early, full quality late), so success tends to rise with
    the trial index. Every trial is kept, failed ones included: a transformer trained on these
    sequences learns the later trials conditioned on the earlier, worse attempts (the loss
    weighting is pretrain's `--only-successful/--failed-trial-weight`).

    Tasks and env seeds come from `evaluate.episode_plan` on the collection stream, so they
    never coincide with the evaluation episodes of the same seed; rollouts are vectorised over
    `num_envs` envs by `evaluate.rollout`.
    """
    from tqdm import tqdm

    from ada_curriculum import evaluate
    from ada_curriculum.policies.runner import degradation_schedule, degraded_sampling
    from ada_curriculum.pretrain import load_policy

    policy, variables, _, policy_step = load_policy(cfg.policy_run, use_ema=cfg.ema)
    if policy.kind != "diffusion":
        raise ConfigError("policy_run", f"degraded sampling needs a diffusion policy; {cfg.policy_run} holds a "
                                        f"{policy.kind} policy")
    start_level = 1.0 if cfg.degradation_start is None else cfg.degradation_start
    end_level = 0.0 if cfg.degradation_end is None else cfg.degradation_end
    levels = degradation_schedule(start_level, end_level, trials)
    trial_sampling = degraded_sampling(policy, levels)
    if cfg.eta is not None:  # degradation sets steps and temperature; the sampler's stochasticity is apart
        trial_sampling = [{**s, "eta": cfg.eta} for s in trial_sampling]

    writer = EpisodeWriter(out, cfg.env, env_kwargs)
    save_config(cfg, out / "config.json")
    rollout_kwargs = {k: env_kwargs[k] for k in ("time_limit", "trials") if k in env_kwargs}
    plan = evaluate.episode_plan(cfg.tasks, cfg.episodes, cfg.seed, stream=evaluate.COLLECT_STREAM)
    progress = tqdm(total=cfg.episodes, unit="ep", file=sys.stderr, disable=not sys.stderr.isatty())
    counts = {"successes": 0, "steps": 0}
    trial_successes = []

    def on_episode(index, result, episode):
        episode.meta["degradation"] = levels
        episode.meta["plan_index"] = index
        writer.add(episode)
        trial_successes.append(result.trial_successes)
        counts["successes"] += result.success
        counts["steps"] += episode.length
        progress.update()
        progress.set_postfix(success=f"{counts['successes']}/{progress.n}")

    start = time.perf_counter()
    try:
        evaluate.rollout(policy, variables, plan, env_name=cfg.env, num_envs=cfg.num_envs, seed=cfg.seed,
                         env_kwargs=rollout_kwargs, trial_sampling=trial_sampling, on_episode=on_episode)
    finally:
        progress.close()
        writer.close()
    extra = {
        "policy_run": cfg.policy_run, "policy_step": policy_step, "ema": cfg.ema,
        "degradation_per_trial": [{"level": level, **s} for level, s in zip(levels, trial_sampling)],
    }
    return _write_collect_summary(cfg, out, counts["successes"], counts["steps"], trial_successes,
                                  time.perf_counter() - start, extra)


@dataclasses.dataclass
class EvalConfig:
    """Evaluate a trained policy in closed loop."""

    checkpoint: str = dataclasses.field(metadata={"help": "run directory written by pretrain/train", "metavar": "RUN"})
    tasks: Literal["nominal", "near", "full"] = "nominal"
    episodes: int = dataclasses.field(default=50, metadata={"min": 1, "help": "episodes per seed"})
    seeds: tuple[int, ...] = dataclasses.field(default=(0,), metadata={"help": "evaluation seeds, e.g. 0,1,2"})
    num_envs: int = dataclasses.field(default=10, metadata={"min": 1, "help": "envs stepped together"})
    env: str = dataclasses.field(default="banana-place", metadata={"metavar": "NAME"})
    trials: Optional[int] = dataclasses.field(default=None, metadata={"min": 1, "help": "trials per episode"})
    time_limit: Optional[int] = dataclasses.field(
        default=None, metadata={"min": 1, "help": "control steps per trial (none: the env's default)"})
    videos: int = dataclasses.field(default=0, metadata={"min": 0, "help": "record this many episodes per seed"})
    ema: bool = dataclasses.field(default=True, metadata={"help": "act with the EMA weights"})
    degradation: float = dataclasses.field(
        default=0.0, metadata={"min": 0.0, "max": 1.0, "help": "diffusion only: sample deliberately worse (0 = best)"})
    num_inference_steps: Optional[int] = dataclasses.field(
        default=None, metadata={"min": 1, "help": "diffusion only: DDIM steps (none: the policy's own)"})
    num_candidates: Optional[int] = dataclasses.field(default=None, metadata={
        "min": 1, "help": "diffusion with a success critic: chunks sampled per replan, the critic's best executed "
                          "(1: the denoiser alone; none: the policy's own)"})
    eta: Optional[float] = dataclasses.field(default=None, metadata={
        "min": 0.0, "max": 1.0, "help": "diffusion only: DDIM stochasticity, 0 deterministic to 1 DDPM-like "
                                        "(none: the policy's own)"})
    memory: Literal["episode", "trial"] = dataclasses.field(default="episode", metadata={
        "help": "what the policy's context keeps when a trial starts: the whole episode, or only the new trial "
                "(an ablation for multi-trial episodes: the trial index without the earlier attempts)"})
    out: Optional[str] = dataclasses.field(default=None, metadata={"help": "output dir (default RUN/eval-TASKS)"})


def evaluate_run(cfg: EvalConfig) -> dict:
    import numpy as np

    from ada_curriculum import evaluate
    from ada_curriculum.pretrain import load_policy

    policy, variables, _, step = load_policy(cfg.checkpoint, use_ema=cfg.ema)
    sampling = {}
    if cfg.degradation > 0:
        if policy.kind != "diffusion":
            raise ConfigError("degradation", "only diffusion policies have degraded sampling")
        steps, temperature = policy.degradation_params(cfg.degradation)
        sampling = {"num_inference_steps": steps, "temperature": temperature}
    if cfg.num_inference_steps is not None:
        if policy.kind != "diffusion":
            raise ConfigError("num_inference_steps", "only diffusion policies take DDIM steps")
        if cfg.degradation > 0:
            raise ConfigError("num_inference_steps", "give either --degradation or --num-inference-steps, not both")
        if cfg.num_inference_steps > policy.config.num_train_timesteps:
            raise ConfigError("num_inference_steps", f"must be <= num_train_timesteps "
                                                     f"(= {policy.config.num_train_timesteps})")
        sampling = {"num_inference_steps": cfg.num_inference_steps}
    if cfg.num_candidates is not None:
        if cfg.num_candidates > 1 and not policy.has_critic:
            raise ConfigError("num_candidates", f"choosing among candidates needs a success critic; "
                                                f"{cfg.checkpoint} has none (train with --diffusion.critic-hidden)")
        if policy.kind == "diffusion":
            sampling = {**sampling, "num_candidates": cfg.num_candidates}
    if cfg.eta is not None:
        if policy.kind != "diffusion":
            raise ConfigError("eta", "only diffusion policies sample with DDIM")
        sampling = {**sampling, "eta": cfg.eta}
    default_name = f"eval-{cfg.tasks}" + (f"-{cfg.env}" if cfg.env != "banana-place" else "") + (
        f"-k{cfg.trials}" if cfg.trials else "") + ("-trial-memory" if cfg.memory == "trial" else "") + (
        f"-n{cfg.num_candidates}" if cfg.num_candidates is not None else "") + (
        f"-eta{cfg.eta:g}" if cfg.eta is not None else "")
    out = Path(cfg.out) if cfg.out else Path(cfg.checkpoint) / default_name
    out.mkdir(parents=True, exist_ok=True)
    env_kwargs = {k: v for k, v in (("trials", cfg.trials), ("time_limit", cfg.time_limit)) if v is not None}
    per_seed, all_results, rows = {}, [], []
    start = time.perf_counter()
    for seed in cfg.seeds:
        plan = evaluate.episode_plan(cfg.tasks, cfg.episodes, seed)
        results = evaluate.rollout(
            policy, variables, plan, env_name=cfg.env, num_envs=cfg.num_envs, seed=seed, env_kwargs=env_kwargs,
            video_episodes=cfg.videos, video_dir=out / f"videos-seed{seed}", sampling=sampling, memory=cfg.memory)
        per_seed[str(seed)] = evaluate.summarize(results)
        all_results += results
        rows += [evaluate.episode_row(seed, i, r) for i, r in enumerate(results)]
        print(f"seed {seed}: success {per_seed[str(seed)]['success_rate']:.2f} "
              f"({per_seed[str(seed)]['successes']}/{cfg.episodes})")
    rates = [r["success_rate"] for r in per_seed.values()]
    summary = {
        "checkpoint": cfg.checkpoint, "step": step, "policy": policy.kind, "tasks": cfg.tasks, "env": cfg.env,
        "sampling": sampling, "ema": cfg.ema, "memory": cfg.memory,
        # Chunks the critic chose among per replan (1: the denoiser's samples as drawn).
        "num_candidates": int(sampling.get("num_candidates", getattr(policy.config, "num_candidates", 1))),
        **evaluate.summarize(all_results),
        "success_rate_per_seed": rates, "success_rate_seed_mean": float(np.mean(rates)),
        "success_rate_seed_std": float(np.std(rates)), "per_seed": per_seed,
        "seconds": round(time.perf_counter() - start, 1),
    }
    save_config(cfg, out / "config.json")
    # One line per episode, in plan order: two policies evaluated on one plan compare episode by episode.
    (out / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ada-curriculum", description="ada-curriculum: demos, training and evaluation.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("collect", help=CollectConfig.__doc__, description=CollectConfig.__doc__)
    add_arguments(p, CollectConfig)
    from ada_curriculum.pretrain import PretrainConfig

    p = sub.add_parser("pretrain", help=PretrainConfig.__doc__, description=PretrainConfig.__doc__)
    add_arguments(p, PretrainConfig)
    p = sub.add_parser("eval", help=EvalConfig.__doc__, description=EvalConfig.__doc__)
    add_arguments(p, EvalConfig)
    from ada_curriculum.train import TrainConfig

    p = sub.add_parser("train", help=TrainConfig.__doc__, description=TrainConfig.__doc__)
    add_arguments(p, TrainConfig)
    p = sub.add_parser("dashboard", help=DashboardConfig.__doc__, description=DashboardConfig.__doc__)
    # `dashboard RUN_DIR` (the same field as --run-dir)
    p.add_argument("run_dir", nargs="?", default=argparse.SUPPRESS, metavar="RUN_DIR",
                   help="run directory, or a folder holding run directories")
    add_arguments(p, DashboardConfig)
    return parser


def dashboard(cfg: DashboardConfig) -> None:
    """Serve the dashboard in the foreground until Ctrl-C."""
    from ada_curriculum.dashboard import make_server

    server = make_server(cfg.run_dir, cfg.host, cfg.port)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {cfg.host}: anyone who can reach it can read this run's metrics", file=sys.stderr)
    print(f"dashboard for {Path(cfg.run_dir).absolute()} at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _shorthands(argv: list[str]) -> list[str]:
    """`train --curriculum widening` for `--curriculum.strategy widening`; `--distill` for
    `--distill.enabled`."""
    out = []
    for arg in argv:
        if arg in ("--distill", "--no-distill"):
            arg = arg.replace("distill", "distill.enabled")
        elif arg == "--curriculum":
            arg = "--curriculum.strategy"
        elif arg.startswith("--curriculum="):
            arg = "--curriculum.strategy=" + arg.split("=", 1)[1]
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(_shorthands(sys.argv[1:] if argv is None else list(argv)))
        if args.command == "collect":
            cfg = from_namespace(CollectConfig, args)
            summary = collect(cfg)
            print(
                f"collected {summary['episodes']} episodes, {summary['successes']} successful "
                f"({summary['success_rate']:.0%}), {summary['env_steps_per_s']} env steps/s -> {cfg.out}"
            )
            if summary["trials"] > 1:
                print("success per trial: " + ", ".join(f"{r:.2f}" for r in summary["success_per_trial"]))
        elif args.command == "pretrain":
            from ada_curriculum.pretrain import PretrainConfig, train_and_evaluate

            cfg = from_namespace(PretrainConfig, args)
            summary = train_and_evaluate(cfg)
            line = f"trained {summary['policy']} for {summary['updates']} updates, final loss {summary['final_loss']}"
            if "eval" in summary:
                line += f", success {summary['eval']['success_rate']:.2f} on {summary['eval']['tasks']}"
            print(f"{line} -> {cfg.out}")
        elif args.command == "eval":
            cfg = from_namespace(EvalConfig, args)
            summary = evaluate_run(cfg)
            lo, hi = summary["ci95"]
            print(f"success {summary['success_rate']:.3f} (95% CI {lo:.2f}-{hi:.2f}) over {summary['episodes']} "
                  f"episodes on {cfg.tasks}")
            from ada_curriculum.evaluate import widest_spread

            spread = widest_spread(summary["per_dimension"])
            if spread:
                print(f"widest spread over one task dimension: {spread[0]} {spread[1]:.2f} to {spread[2]:.2f} "
                      f"(summary.json: per_dimension)")
            if len(summary["success_per_trial"]) > 1:
                print("success per trial: " + ", ".join(f"{r:.2f}" for r in summary["success_per_trial"])
                      + f"; last - first: {summary['last_vs_first_trial']:+.2f}")
            if "right_plate_per_trial" in summary:
                print("right plate per placement: " + ", ".join(
                    "-" if r is None else f"{r:.2f}" for r in summary["right_plate_per_trial"]))
        elif args.command == "train":
            from ada_curriculum.train import TrainConfig, describe_budget, train

            cfg = from_namespace(TrainConfig, args)
            print(f"run directory: {Path(cfg.run).absolute()}")
            print(f"budget: {describe_budget(cfg)}")
            summary = train(cfg)
            print(f"stopped by {summary['stopped_by']}: {summary['updates']} updates, {summary['env_steps']} env "
                  f"steps, {summary['episodes']} episodes, recent success {summary['recent_success_rate']}")
            first, last = summary.get("eval_first") or {}, summary.get("eval") or {}
            if first.get("episodes") and last.get("episodes"):
                print(f"held-out success on {last['tasks']}: {first['success_rate']:.2f} at update "
                      f"{first['version']} -> {last['success_rate']:.2f} at update {last['version']}")
                if len(last.get("success_per_trial") or []) > 1:
                    print("held-out success per trial: " + ", ".join(f"{r:.2f}" for r in last["success_per_trial"]))
        elif args.command == "dashboard":
            dashboard(from_namespace(DashboardConfig, args))
        return 0
    except (ConfigError, EpisodeStoreError, CheckpointError, TaskError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
