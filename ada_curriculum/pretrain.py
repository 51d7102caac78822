"""Offline training from demonstrations (behaviour cloning): the beachhead.

`train_and_evaluate(config, workdir)` fits the normaliser on the demos, trains the policy with
`train_step`, checkpoints with Orbax (params, EMA, optimiser, step, RNG, normaliser; config and
counters in the checkpoint's meta), resumes from the newest readable checkpoint in `workdir`,
and optionally evaluates the EMA policy at the end. SIGTERM/SIGINT stop it after a final
checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Literal

import jax
import numpy as np

from ada_curriculum import config as config_lib
from ada_curriculum import evaluate as evaluate_lib
from ada_curriculum.checkpointing import Checkpointer, CheckpointError, check_compatible
from ada_curriculum.data import augment as augment_lib
from ada_curriculum.data import windows as windows_lib
from ada_curriculum.data.loader import Prefetcher
from ada_curriculum.episode_store import read_manifest
from ada_curriculum.learning import OptimConfig, TrainState, create_train_state, make_optimizer, make_train_step
from ada_curriculum.policies import make_policy, normalizer as normalizer_lib
from ada_curriculum.policies.obs import workspace_bounds
from ada_curriculum.policies.diffusion import DiffusionConfig
from ada_curriculum.policies.transformer import TransformerConfig

log = logging.getLogger(__name__)

# Config sections that define the model and its optimiser: a checkpoint only resumes under these.
# "augment" too: rotation widens the normaliser's action range when the run starts.
COMPATIBLE_KEYS = ("policy", "diffusion", "transformer", "optim", "augment")


@dataclasses.dataclass
class PretrainConfig:
    """Behaviour cloning of a policy from an episode store."""

    demos: str = dataclasses.field(metadata={"help": "episode store with the demonstrations", "metavar": "DIR"})
    out: str = dataclasses.field(metadata={"help": "run directory (resumed if it holds a checkpoint)", "metavar": "RUN"})
    policy: Literal["diffusion", "transformer"] = "diffusion"
    updates: int = dataclasses.field(default=3000, metadata={"min": 1, "help": "total learner updates"})
    batch_size: int = dataclasses.field(default=256, metadata={"min": 1})
    seed: int = 0
    checkpoint_every: int = dataclasses.field(default=1000, metadata={"min": 1, "help": "updates between checkpoints"})
    log_every: int = dataclasses.field(default=100, metadata={"min": 1})
    only_successful: bool = dataclasses.field(default=True, metadata={
        "help": "loss only on actions of successful trials (a failed trial of a multi-trial episode stays in the "
                "context; an episode with no successful trial is dropped); --no-only-successful: every action"})
    failed_trial_weight: float = dataclasses.field(default=0.0, metadata={
        "min": 0.0, "max": 1.0,
        "help": "with --only-successful: loss weight of actions in failed trials (0: success-filtered BC)"})
    sequence_windows: Literal["auto", "sliding", "episodes"] = dataclasses.field(default="auto", metadata={
        "help": "transformer windows: 'episodes' trains on whole episodes (each step counted once), 'sliding' on "
                "windows ending at a uniform step (early steps count more); 'auto': whole episodes for a "
                "multi-trial store whose episodes fit in transformer.max_len, else sliding"})
    eval_episodes: int = dataclasses.field(default=0, metadata={"min": 0, "help": "evaluate the EMA policy at the end"})
    eval_tasks: Literal["nominal", "near", "full"] = "nominal"
    augment: Literal["none", "rotate"] = dataclasses.field(default="none", metadata={
        "help": "rotate: turn each training window about the vertical by a random angle (needs the relative "
                "observation frame; see data.augment)"})
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
    transformer: TransformerConfig = dataclasses.field(default_factory=TransformerConfig)

    def validate(self):
        self.optim.validate()
        self.policy_config().validate()
        augment_lib.check(self.augment, self.policy_config().obs_frame)
        if self.policy == "diffusion" and self.diffusion.critic_hidden:
            raise config_lib.ConfigError("diffusion.critic_hidden", "the success critic learns from the actors' "
                                         "own successes and failures in `train`; pretrain has demos only")

    def policy_config(self):
        return getattr(self, self.policy)


def fit_normalizer(episodes, frame: str, augment: str = "none") -> dict:
    """Normaliser statistics from demo episodes, widened to what the task space can produce in
    `frame` and, under rotation, to every heading of the actions."""
    obs, act = windows_lib.stack_for_normalizer(episodes)
    stats = normalizer_lib.fit(obs, act, obs_bounds=workspace_bounds(frame))
    return augment_lib.rotation_symmetric(stats) if augment == "rotate" else stats


def build(cfg: PretrainConfig):
    """(policy, optimizer, train_step) for a config."""
    policy = make_policy(cfg.policy, cfg.policy_config())
    optimizer = make_optimizer(cfg.optim)
    return policy, optimizer, make_train_step(policy, optimizer, cfg.optim)


def state_template(policy, optimizer, seed: int = 0) -> TrainState:
    """A train state of the right structure (for restoring into)."""
    rng = jax.random.PRNGKey(seed)
    variables = policy.init(rng, normalizer_lib.identity(policy.obs_dim, policy.action_dim))
    return create_train_state(variables, optimizer, rng)


def load_policy(run_dir: str | Path, use_ema: bool = True, step: int | None = None):
    """(policy, variables, config, step) from a run directory written by `pretrain` or `train`."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"checkpoint: {run_dir} has no config.json; not a run directory")
    if "actor_steps_per_call" in json.loads(cfg_path.read_text()):  # a `train` run
        from ada_curriculum.train import TrainConfig

        cfg = config_lib.load_config(TrainConfig, cfg_path)
        policy = make_policy(cfg.policy, cfg.policy_config())
        optimizer = make_optimizer(cfg.optim, critic=policy.has_critic)
    else:
        cfg = config_lib.load_config(PretrainConfig, cfg_path)
        policy, optimizer, _ = build(cfg)
    ckpt = Checkpointer(run_dir / "checkpoints")
    try:
        generation = _distill_generation(ckpt, step)
        if generation:  # a distilled train run: its checkpoints hold that generation's (larger) model
            from ada_curriculum.distill.generations import policy_at

            policy = policy_at(cfg.distill, cfg.policy, cfg.diffusion, generation)
        state, _, step = ckpt.restore(state_template(policy, optimizer), step)
    finally:
        ckpt.close()
    return policy, (state.ema_variables if use_ema else state.variables), cfg, step


def _distill_generation(ckpt: Checkpointer, step: int | None) -> int:
    """The distillation generation a train run's checkpoint at `step` (default: the newest one
    whose meta reads, as `restore` falls back) holds; 0 without distillation."""
    for s in ([step] if step is not None else list(reversed(ckpt.steps()))):
        try:
            meta = ckpt.read_meta(s)
        except Exception:  # noqa: BLE001 - `restore` reports an unreadable step
            continue
        return int((meta.get("distill_generation") or {}).get("index", 0))
    return 0


def _data_info(policy, episodes) -> dict:
    """What the training data looks like to the policy: trials per episode, the longest
    episode, the window the policy trains on, the share of actions with a loss weight; plus
    warnings when a transformer's context cannot hold the multi-trial episodes whole."""
    trials = max(int(e.trial_index.max()) + 1 for e in episodes)
    longest = max(e.length for e in episodes)
    weights = np.concatenate([np.ones(e.length) if e.action_weight is None else e.action_weight for e in episodes])
    info = {"demo_trials": trials, "demo_max_episode_steps": int(longest),
            "demo_weighted_action_fraction": round(float(np.mean(weights > 0)), 4), "warnings": []}
    if policy.kind == "transformer":
        c = policy.config
        info["window"] = int(min(c.max_len, longest))
        if longest > c.max_len:
            info["warnings"].append(
                f"episodes of up to {longest} steps exceed transformer.max_len={c.max_len}: windows slide, so a late "
                f"trial sees only the last {c.max_len} steps of the earlier ones (raise --transformer.max-len to "
                f"keep whole episodes in context)")
        if trials > c.max_trials:
            info["warnings"].append(
                f"the store has {trials} trials per episode but transformer.max_trials={c.max_trials}: trials past "
                f"{c.max_trials} share the last trial embedding")
        elif 1 < trials < c.max_trials:
            info["warnings"].append(
                f"the store has {trials} trials per episode: trial embeddings {trials + 1}..{c.max_trials} stay "
                f"untrained, and evaluating with more than {trials} trials uses them; --transformer.max-trials "
                f"{trials} makes every later trial share the last trained one")
    return info


def _whole_episodes(cfg: PretrainConfig, policy, data_info: dict) -> bool:
    """Whether the transformer trains on whole episodes (`--sequence-windows`)."""
    if policy.kind != "transformer" or cfg.sequence_windows == "sliding":
        return False
    fits = data_info["demo_max_episode_steps"] <= policy.config.max_len
    if cfg.sequence_windows == "episodes":
        if not fits:
            raise config_lib.ConfigError(
                "sequence_windows", f"'episodes' needs every episode to fit in transformer.max_len="
                                    f"{policy.config.max_len}; the longest has "
                                    f"{data_info['demo_max_episode_steps']} steps")
        return True
    return fits and data_info["demo_trials"] > 1


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag the loop checks, so a stop ends with a checkpoint."""

    def __init__(self):
        self.stopped = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def _handle(self, signum, frame):
        self.stopped = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train_and_evaluate(cfg: PretrainConfig, workdir: str | Path | None = None) -> dict:
    cfg.validate()
    manifest = read_manifest(cfg.demos)  # checked before anything is written
    augment_lib.check(cfg.augment, cfg.policy_config().obs_frame, manifest["env"], manifest.get("env_kwargs"))
    workdir = Path(workdir or cfg.out)
    workdir.mkdir(parents=True, exist_ok=True)
    policy, optimizer, train_step = build(cfg)
    episodes = windows_lib.load_store(cfg.demos, only_successful=cfg.only_successful,
                                      failed_trial_weight=cfg.failed_trial_weight, frame=policy.obs_frame)
    data_info = _data_info(policy, episodes)
    whole_episodes = _whole_episodes(cfg, policy, data_info)
    if policy.kind == "transformer":
        data_info["sequence_windows"] = "episodes" if whole_episodes else "sliding"
    for line in data_info.pop("warnings"):
        print(f"warning: {line}", file=sys.stderr)
    ckpt = Checkpointer(workdir / "checkpoints")
    current = config_lib.to_dict(cfg)

    start_step = ckpt.latest_step()
    if start_step is not None:
        saved = ckpt.read_meta()
        check_compatible(saved.get("config", {}), current, COMPATIBLE_KEYS)
        state, meta, start_step = ckpt.restore(state_template(policy, optimizer, cfg.seed))
        counters = meta.get("counters", {})
        print(f"resuming {workdir} from update {start_step}")
    else:
        rng = jax.random.PRNGKey(cfg.seed)
        init_rng, state_rng = jax.random.split(rng)
        variables = policy.init(init_rng, fit_normalizer(episodes, policy.obs_frame, cfg.augment))
        state = create_train_state(variables, optimizer, state_rng)
        counters = {"seconds": 0.0, "updates": 0}
    config_lib.save_config(cfg, workdir / "config.json")

    step_fn = jax.jit(train_step, donate_argnums=0)
    sampler = windows_lib.windows_for(policy, episodes, whole_episodes=whole_episodes)
    if cfg.augment == "rotate":
        sampler = augment_lib.RotatedSampler(sampler)
    # `step` counts attempted updates (a skipped non-finite update counts too; state.step does not).
    step = int(counters.get("updates", int(state.step)))
    batches = Prefetcher(sampler, cfg.batch_size, seed=cfg.seed * 1000 + step)
    metrics_path = workdir / "metrics.jsonl"
    history: list[dict] = []
    t_start = time.perf_counter()
    seconds_before = counters.get("seconds", 0.0)
    stop_reason = "updates"

    def checkpoint():
        counters["seconds"] = seconds_before + time.perf_counter() - t_start
        counters["updates"] = step
        ckpt.save(step, state, {"config": current, "counters": counters, "kind": "pretrain"})

    try:
        with _StopFlag() as stop, metrics_path.open("a") as metrics_file:
            window_t, window_n = time.perf_counter(), 0
            while step < cfg.updates:
                state, metrics = step_fn(state, next(batches))
                step += 1
                window_n += 1
                if step % cfg.log_every == 0 or step == cfg.updates:
                    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    now = time.perf_counter()
                    metrics.update(update=step, updates_per_s=window_n / (now - window_t),
                                   clip_count=int(state.clip_count), skip_count=int(state.skip_count))
                    window_t, window_n = now, 0
                    history.append(metrics)
                    metrics_file.write(json.dumps(metrics) + "\n")
                    metrics_file.flush()
                if step % cfg.checkpoint_every == 0:
                    checkpoint()
                if stop.stopped:
                    stop_reason = stop.stopped
                    break
        checkpoint()
    finally:
        batches.close()
        ckpt.close()

    train_seconds = time.perf_counter() - t_start
    summary = {
        "policy": cfg.policy, "preset": cfg.policy_config().preset,
        "params": policy.param_count(state.variables), "updates": step, "stopped_by": stop_reason,
        "demo_episodes": len(episodes), "demo_steps": int(sum(e.length for e in episodes)), **data_info,
        "final_loss": history[-1]["loss"] if history else None,
        "updates_per_s": round((step - (start_step or 0)) / train_seconds, 2) if train_seconds > 0 else None,
        "clip_count": int(state.clip_count), "skip_count": int(state.skip_count),
        "seconds": round(seconds_before + train_seconds, 1),
    }
    if cfg.eval_episodes and stop_reason == "updates":
        plan = evaluate_lib.episode_plan(cfg.eval_tasks, cfg.eval_episodes, seed=cfg.seed)
        results = evaluate_lib.rollout(policy, state.ema_variables, plan, seed=cfg.seed)
        summary["eval"] = {"tasks": cfg.eval_tasks, **evaluate_lib.summarize(results)}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary

