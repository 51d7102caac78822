"""The ``ada-curriculum`` command line.

Bad input (config values, an existing output store, unknown env names) is reported
as one ``error: ...`` line on stderr with exit code 2, before any work is done.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Optional

from ada_curriculum import __version__
from ada_curriculum.config import ArgumentParser, ConfigError, add_arguments, from_namespace, save_config
from ada_curriculum.episode_store import MANIFEST, EpisodeRecorder, EpisodeStoreError, EpisodeWriter

EXIT_USAGE = 2
PLAY_TIME_LIMIT = 400


@dataclasses.dataclass
class CollectConfig:
    """Record scripted demonstrations into an episode store."""

    out: str = dataclasses.field(metadata={"help": "output directory (must not hold a store yet)", "metavar": "DIR"})
    tasks: Literal["nominal", "full"] = dataclasses.field(
        default="nominal", metadata={"help": "task distribution to sample episodes from"}
    )
    episodes: int = dataclasses.field(default=10, metadata={"min": 1, "help": "number of episodes", "metavar": "N"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed for the env and the demonstrator"})
    env: str = dataclasses.field(default="banana-place", metadata={"help": "registered env name", "metavar": "NAME"})
    play: bool = dataclasses.field(default=False, metadata={"help": "demonstrator adds exploratory 'play' motions"})
    time_limit: Optional[int] = dataclasses.field(
        default=None, metadata={"min": 1, "help": "control steps per trial (none: the env's default)", "metavar": "N"}
    )


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} exists and is not a directory")
    if (out / MANIFEST).exists():
        raise ConfigError("out", f"{out} already holds an episode store; choose a new directory")


def collect(cfg: CollectConfig) -> dict:
    """Run the scripted demonstrator for ``cfg.episodes`` episodes; returns the summary."""
    out = Path(cfg.out)
    _check_out_dir(out)

    import envs  # heavy (MuJoCo); only once the arguments are known to be good

    from tqdm import tqdm

    env_kwargs = {"tasks": cfg.tasks, "seed": cfg.seed}
    if cfg.time_limit is not None:
        env_kwargs["time_limit"] = cfg.time_limit
    elif cfg.play:
        env_kwargs["time_limit"] = PLAY_TIME_LIMIT  # several placements need more than one trial's time
    try:
        env = envs.make(cfg.env, **env_kwargs)
        demo = envs.ScriptedDemonstrator(seed=cfg.seed, play=cfg.play)
    except ValueError as e:  # unknown env name or bad env parameters
        raise ConfigError(None, str(e)) from None

    writer = EpisodeWriter(out, cfg.env, env_kwargs)
    save_config(cfg, out / "config.json")
    recorder = EpisodeRecorder()
    successes = steps = 0
    start = time.perf_counter()
    progress = tqdm(total=cfg.episodes, unit="ep", file=sys.stderr, disable=not sys.stderr.isatty())
    try:
        for _ in range(cfg.episodes):
            ts = env.reset()
            demo.reset()
            recorder.start(ts)
            while not ts.last():
                action = demo.act(ts.observation)
                ts = env.step(action)
                recorder.step(action, ts)
            success = bool(ts.info["success"])
            episode = recorder.finish(env.task.to_dict(), env.episode_seed, success, getattr(env, "trials", 1))
            writer.add(episode)
            successes += success
            steps += episode.length
            progress.update()
            progress.set_postfix(success=f"{successes}/{progress.n}")
    finally:
        progress.close()
        writer.close()
        env.close()
    seconds = time.perf_counter() - start
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
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ada-curriculum", description="ada-curriculum: demos, training and evaluation.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("collect", help=CollectConfig.__doc__, description=CollectConfig.__doc__)
    add_arguments(p, CollectConfig)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.command == "collect":
            cfg = from_namespace(CollectConfig, args)
            summary = collect(cfg)
            print(
                f"collected {summary['episodes']} episodes, {summary['successes']} successful "
                f"({summary['success_rate']:.0%}), {summary['env_steps_per_s']} env steps/s -> {cfg.out}"
            )
        return 0
    except (ConfigError, EpisodeStoreError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
