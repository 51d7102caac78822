"""`ada-curriculum train`: the actor-learner run, in process or on Ray.

The coordinator (this module) builds everything through `agent.builder.Builder`, keeps one
call outstanding per actor and for the learner, collects their counters, writes metrics,
decides when to checkpoint, and ends on the first budget reached (updates, env steps, minutes)
or on SIGTERM/SIGINT, always with a final checkpoint and `summary.json`.

`--policy transformer --trials k` fine-tunes the causal transformer in k-trial episodes of one
task (`banana-place-multi`, context kept across trials): replay holds sequence windows of whole
episodes whose per-action weight is its trial's success, so the learner's `SuccessWeightedBC` is
success-weighted BC over trials with the failed trials as context; held-out evaluation reports
success per trial index. With a diffusion policy, `--trials k` makes each trial an episode of its
own for replay (the policy has no memory across trials).

A run directory that holds a checkpoint is resumed: learner state, counters, task-source state
and the replay tables (from the Reverb checkpoint saved with the same step), and with
`--distill.enabled` the distillation stage (generation, who acts, the teacher snapshot).

Distillation (`ada_curriculum/distill/`): the coordinator holds the stage state; when
`stage.on_progress` says switch, the learner snapshots its weights as the teacher and trains
the next generation's larger student with the kickstarting term; evaluations measure teacher
and student until `stage.on_eval` hands acting over to the student.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Callable, Literal, Optional

import jax

from ada_curriculum import config as config_lib
from ada_curriculum.config import ConfigError
from ada_curriculum.agent import remote
from ada_curriculum.agent.builder import Builder
from ada_curriculum.agent.objectives import PPOConfig
from ada_curriculum.curriculum import CurriculumConfig
from ada_curriculum.data import augment as augment_lib
from ada_curriculum.distill import DistillConfig
from ada_curriculum.checkpointing import Checkpointer, CheckpointError, check_compatible
from ada_curriculum.learning import OptimConfig, create_train_state, make_optimizer
from ada_curriculum.metrics_store import MetricsConfig
from ada_curriculum.policies import make_policy
from ada_curriculum.policies.diffusion import DiffusionConfig
from ada_curriculum.policies.transformer import TransformerConfig
from ada_curriculum.pretrain import _StopFlag, fit_normalizer, load_policy, state_template
from ada_curriculum.replay import ReplayConfig, ReplayServer

log = logging.getLogger(__name__)

COMPATIBLE_KEYS = ("policy", "diffusion", "tasks", "env", "curriculum.strategy", "curriculum.bins", "objective")
# Also checked when set: a transformer run's model, and the episodes replay holds windows of.
SEQUENCE_KEYS = ("transformer", "trials", "sequence_length")


def _compatible_keys(cfg: "TrainConfig") -> tuple[str, ...]:
    return COMPATIBLE_KEYS + (SEQUENCE_KEYS if cfg.policy == "transformer" else ("trials",))


@dataclasses.dataclass
class TrainConfig:
    """Actor-learner RL fine-tuning with sparse reward."""

    run: str = dataclasses.field(metadata={"help": "run directory (resumed if it holds a checkpoint)", "metavar": "DIR"})
    init: Optional[str] = dataclasses.field(default=None, metadata={"help": "pretrained run to start from", "metavar": "RUN"})
    demos: Optional[str] = dataclasses.field(default=None, metadata={"help": "episode store for the demo table", "metavar": "DIR"})
    policy: Literal["diffusion", "transformer"] = "diffusion"
    env: str = "banana-place"
    tasks: Literal["nominal", "near", "full"] = "nominal"
    time_limit: Optional[int] = dataclasses.field(default=None, metadata={"min": 1, "help": "control steps per trial"})
    trials: Optional[int] = dataclasses.field(default=None, metadata={
        "min": 1, "metavar": "K", "help": "trials of one task per episode (none: the env's default); K > 1 acts "
                                          "and evaluates in banana-place-multi. A transformer keeps every trial in "
                                          "its context; for diffusion each trial is an episode of its own"})
    sequence_length: Optional[int] = dataclasses.field(default=None, metadata={
        "min": 1, "metavar": "T", "help": "transformer: steps per replay window (none: trials x time limit, at most "
                                          "transformer.max_len, i.e. whole episodes)"})
    distributed: bool = dataclasses.field(default=True, metadata={"help": "Ray actors (else one process)"})
    ray_address: Optional[str] = dataclasses.field(default=None, metadata={"help": "existing cluster ('auto'); none: local"})
    num_actors: int = dataclasses.field(default=2, metadata={"min": 1})
    envs_per_actor: int = dataclasses.field(default=2, metadata={"min": 1})
    acting_inference_steps: Optional[int] = dataclasses.field(default=None, metadata={
        "min": 1, "help": "DDIM steps the actors sample with (none: the policy's num_inference_steps); fewer "
                          "act faster and worse"})
    critic_warmup_updates: int = dataclasses.field(default=0, metadata={
        "min": 0, "help": "actors act with one candidate (a plain sample) until the weights they hold come from "
                          "this many updates: a critic fitted on few labels chooses worse than no choice "
                          "(bench/RESULTS.md, session 12)"})
    actor_steps_per_call: int = dataclasses.field(default=20, metadata={"min": 1})
    variable_update_period: int = dataclasses.field(default=10, metadata={"min": 1, "help": "actor steps between weight polls"})
    actor_resources: str = dataclasses.field(default="", metadata={"help": "e.g. actor:1"})
    learner_resources: str = dataclasses.field(default="", metadata={"help": "e.g. learner:1"})
    actor_max_restarts: int = dataclasses.field(default=3, metadata={"min": 0})
    batch_size: int = dataclasses.field(default=64, metadata={"min": 1})
    demo_fraction: float = dataclasses.field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    demo_weight: float = dataclasses.field(default=1.0, metadata={"min": 0.0})
    online_weight: float = dataclasses.field(default=1.0, metadata={"min": 0.0})
    online_weighting: Literal["success", "advantage"] = dataclasses.field(default="success", metadata={
        "help": "online episode weight: its success, or max(success - baseline(task), 0) with a kernel "
                "baseline over the actor's recent episodes (agent/baseline.py)"})
    objective: Literal["weighted_bc", "ppo"] = dataclasses.field(default="weighted_bc", metadata={
        "help": "weighted_bc: success-weighted denoising on online windows (with a critic: it also learns to "
                "choose among candidates); ppo: DPPO, a clipped policy gradient through the stochastic denoising "
                "steps of the acted chunks (needs diffusion.min_step_std > 0), with BC on the demos"})
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    augment: Literal["none", "rotate"] = dataclasses.field(default="none", metadata={
        "help": "rotate: turn each replay window about the vertical by a random angle before the update "
                "(needs the relative observation frame; see data.augment)"})
    updates_per_call: int = dataclasses.field(default=10, metadata={"min": 1})
    publish_every: int = dataclasses.field(default=10, metadata={"min": 1})
    stall_timeout: float = dataclasses.field(default=120.0, metadata={"min": 0.0, "help": "seconds without a batch"})
    max_updates: Optional[int] = dataclasses.field(default=400, metadata={"min": 1})
    max_env_steps: Optional[int] = dataclasses.field(default=None, metadata={"min": 1})
    max_minutes: Optional[float] = dataclasses.field(default=10.0, metadata={"min": 0.0})
    checkpoint_every: int = dataclasses.field(default=100, metadata={"min": 1, "help": "updates between checkpoints"})
    eval_every: int = dataclasses.field(default=0, metadata={"min": 0, "help": "updates between evaluations (0: off)"})
    eval_episodes: int = dataclasses.field(default=20, metadata={"min": 1, "help": "held-out episodes per evaluation"})
    eval_videos: int = dataclasses.field(default=0, metadata={"min": 0, "help": "episodes recorded per evaluation"})
    seed: int = 0
    replay: ReplayConfig = dataclasses.field(default_factory=ReplayConfig)
    optim: OptimConfig = dataclasses.field(
        # Fine-tuning a converged BC policy: a small rate (BC ends its cosine at 5e-5) and an EMA
        # that keeps averaging the pretrained weights from the first update (no warm-up; see
        # OptimConfig.ema_warmup; a run without --init still warms up). At 1e-4, held-out success
        # fell from 0.67 to 0.42 within 300 updates with a warmed-up EMA, with or without online
        # data, and to 0.52 with this EMA (bench/RESULTS.md, "RL on the nominal task").
        default_factory=lambda: OptimConfig(learning_rate=3e-5, warmup_steps=100, decay_steps=100_000,
                                            ema_decay=0.995, ema_warmup=False))
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
    transformer: TransformerConfig = dataclasses.field(default_factory=TransformerConfig)
    curriculum: CurriculumConfig = dataclasses.field(default_factory=CurriculumConfig)
    stop_success: Optional[float] = dataclasses.field(default=None, metadata={
        "min": 0.0, "max": 1.0, "help": "end the run once the curriculum covers the task space and held-out "
                                        "evaluation success reaches this (needs --eval-every)"})
    dashboard: bool = dataclasses.field(default=True, metadata={"help": "serve the live dashboard during the run"})
    dashboard_host: str = dataclasses.field(default="127.0.0.1", metadata={
        "help": "dashboard address (loopback: this machine only)"})
    dashboard_port: int = dataclasses.field(default=8266, metadata={
        "min": 0, "max": 65535, "help": "dashboard port (0, or taken: any free one)"})
    embedding_every: int = dataclasses.field(default=200, metadata={
        "min": 0, "help": "updates between policy-embedding snapshots for the dashboard, also taken at the "
                          "start and end (0: off)"})
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)

    def policy_config(self):
        return getattr(self, self.policy)

    def _validate_objective(self):
        if self.objective not in ("weighted_bc", "ppo"):
            raise ConfigError("objective", f"expected weighted_bc or ppo, got {self.objective!r}")
        if self.objective != "ppo":
            return
        try:
            self.ppo.validate()
        except ConfigError as e:
            raise e.under("ppo") from None
        d = self.diffusion
        checks = (  # (what is wrong, field, why), the first that applies is reported
            (self.policy != "diffusion", "objective", "PPO through the denoising steps trains a diffusion policy"),
            (not d.min_step_std > 0, "diffusion.min_step_std", "must be > 0 for --objective ppo: every denoising "
                                                               "step needs noise for its likelihood (DPPO uses 0.1)"),
            (d.critic_hidden or d.num_candidates > 1, "diffusion.critic_hidden",
             "--objective ppo trains the denoiser on plain samples; it has no success critic (set 0)"),
            (self.trials not in (None, 1), "trials", "--objective ppo acts one trial per episode"),
            (self.replay.online_sampler != "uniform", "replay.online_sampler",
             "--objective ppo samples decisions uniformly"),
            (self.distill.enabled, "distill.enabled", "--objective ppo has no kickstarting term"),
            (self.demo_fraction >= 1, "demo_fraction", "--objective ppo needs decisions in every batch: expected < 1"),
            (self.augment != "none" and self.demo_fraction == 0, "augment",
             "--objective ppo turns only demo windows (a chain's likelihood is of the unturned chunk); "
             "demo_fraction 0 leaves none"),
            # The actors act with the EMA weights; PPO's ratio is against the weights that acted, and a
            # lagging average moves 112-dimensional step likelihoods far enough to clip nearly every ratio.
            (self.optim.ema_decay > 0, "optim.ema_decay", "--objective ppo acts with the weights it trains: set 0"),
        )
        for wrong, field, why in checks:
            if wrong:
                raise ConfigError(field, why)
        steps = self.acting_inference_steps or d.num_inference_steps
        if self.ppo.first_step >= steps:
            raise ConfigError("ppo.first_step", f"{self.ppo.first_step} leaves no denoising step to train "
                                                f"(the actors take {steps})")

    def validate(self):
        self.optim.validate()
        self.replay.validate()
        self.diffusion.validate()
        try:
            self.transformer.validate()
        except ConfigError as e:
            raise e.under("transformer") from None
        augment_lib.check(self.augment, self.policy_config().obs_frame, self.env)
        if self.trials is not None and (isinstance(self.trials, bool) or self.trials < 1):
            raise ConfigError("trials", f"expected an int >= 1, got {self.trials!r}")
        if self.sequence_length is not None:
            if self.policy != "transformer":
                raise ConfigError("sequence_length", "only applies to --policy transformer (diffusion windows are "
                                                     "diffusion.horizon steps)")
            if self.sequence_length > self.transformer.max_len:
                raise ConfigError("sequence_length", f"{self.sequence_length} exceeds transformer.max_len "
                                                     f"({self.transformer.max_len})")
        if self.policy == "transformer":
            if self.online_weighting != "success":
                raise ConfigError("online_weighting", "applies to diffusion windows; a transformer's online "
                                                      "windows are weighted per trial by its success")
            if self.acting_inference_steps is not None:
                raise ConfigError("acting_inference_steps", "DDIM steps are the diffusion policy's; the transformer "
                                                            "predicts its chunk in one pass")
            if self.distill.enabled:
                raise ConfigError("distill.enabled", "distillation grows the diffusion U-Net; use --policy diffusion")
        if self.critic_warmup_updates and not (self.policy == "diffusion" and self.diffusion.critic_hidden
                                               and self.diffusion.num_candidates > 1):
            raise ConfigError("critic_warmup_updates", "gates choosing among candidates: needs a diffusion policy "
                                                       "with a critic (diffusion.critic_hidden) and "
                                                       "diffusion.num_candidates > 1")
        if self.policy == "diffusion" and self.diffusion.critic_hidden:
            if self.replay.online_sampler != "uniform":
                raise ConfigError("replay.online_sampler", "the success critic must see failed episodes too; the "
                                                           "weight sampler never draws them (use uniform)")
        self._validate_objective()
        self.curriculum.validate()
        if self.curriculum.strategy != "none" and self.tasks == "nominal":
            raise ValueError(f"tasks: the {self.curriculum.strategy} curriculum widens inside the task space; "
                             "'nominal' is a single task, use --tasks full")
        if self.stop_success is not None and not self.eval_every:
            raise ValueError("stop_success: needs held-out evaluation (--eval-every > 0)")
        if self.max_updates is None and self.max_env_steps is None and self.max_minutes is None:
            raise ValueError("max_updates: set at least one budget (max_updates, max_env_steps, max_minutes)")
        if self.demo_fraction > 0 and not self.demos:
            raise ValueError("demos: demo_fraction > 0 needs --demos (an episode store)")
        if self.policy == "diffusion" and self.acting_inference_steps is not None and \
                self.acting_inference_steps > self.diffusion.num_train_timesteps:
            raise ConfigError("acting_inference_steps", f"must be <= diffusion.num_train_timesteps "
                                                        f"(= {self.diffusion.num_train_timesteps})")
        if self.dashboard and not self.dashboard_host.strip():
            raise ConfigError("dashboard_host", "expected a host name or address (or --no-dashboard)")
        try:
            self.distill.validate()
        except ConfigError as e:
            raise e.under("distill") from None
        if self.distill.enabled:
            from ada_curriculum.distill import check_generations

            check_generations(self.distill, self.policy, self.diffusion)
            if not self.eval_every:
                raise ConfigError("distill.enabled", "the handover to each student is judged by held-out "
                                                     "evaluation: set --eval-every > 0")
            if self.distill.switch_on_coverage is not None and self.curriculum.strategy == "none":
                raise ConfigError("distill.switch_on_coverage", "needs a curriculum (--curriculum widening|band|plr)")


def describe_budget(cfg: TrainConfig) -> str:
    """The run's stop condition in words: every budget set, the first reached ends the run. Printed
    at the start because a default (400 updates) can end a run given only `--max-minutes`."""
    parts = [f"{v:g} {unit}" for v, unit in ((cfg.max_updates, "updates"), (cfg.max_env_steps, "env steps"),
                                              (cfg.max_minutes, "minutes")) if v is not None]
    return ("stops at " + (parts[0] if len(parts) == 1 else "the first of " + ", ".join(parts))
            + " (--max-updates, --max-env-steps, --max-minutes; `none` turns one off)")


def init_frame_settings(init: str | Path) -> dict:
    """The observation frame and augmentation of a pretrained run, as `train` settings: what a
    fine-tuning run from it (`--init`) must repeat."""
    saved = json.loads((Path(init) / "config.json").read_text())
    kind = saved.get("policy", "diffusion")
    return {kind: {"obs_frame": (saved.get(kind) or {}).get("obs_frame", "world")},
            "augment": saved.get("augment", "none")}


def _initial_state(cfg: TrainConfig, policy, optimizer):
    """Train state from the pretrained run (its EMA weights), else fresh from the demos."""
    rng = jax.random.PRNGKey(cfg.seed)
    if cfg.init:
        pre_policy, variables, pre_cfg, _ = load_policy(cfg.init, use_ema=True)
        if pre_policy.kind != policy.kind:
            raise CheckpointError(f"init: {cfg.init} holds a {pre_policy.kind} policy; this run trains a "
                                  f"{policy.kind} (--policy {pre_policy.kind}, or another --init run)")
        # Only the denoiser must match: a success critic (policies/critic.py) is taken along when
        # both runs have the same one, else this run's starts fresh (a BC run has none).
        # Sampling settings (DDIM steps, eta, ...) may differ: they do not shape the weights.
        denoiser = lambda c: c.denoiser_settings() if hasattr(c, "denoiser_settings") else c  # noqa: E731
        if pre_policy.obs_frame != policy.obs_frame:
            raise CheckpointError(f"{cfg.policy}.obs_frame: the --init run sees observations in the "
                                  f"{pre_policy.obs_frame!r} frame; pass --{cfg.policy}.obs-frame {pre_policy.obs_frame}")
        if denoiser(pre_policy.config) != denoiser(policy.config):
            raise CheckpointError(f"{cfg.policy}: the --init run's policy config differs from this run's; "
                                  f"pass the same --{cfg.policy}.* options")
        critic = lambda p: (p.has_critic, *(getattr(p.config, k, None) for k in (  # noqa: E731
            "critic_hidden", "critic_layers", "critic_ensemble")))
        if critic(pre_policy) != critic(policy):
            if pre_policy.has_critic:
                variables = {**variables, "params": variables["params"]["denoiser"]}
            if policy.has_critic:
                variables = policy.with_critic(variables, jax.random.fold_in(rng, 1))
        return create_train_state(variables, optimizer, rng)
    from ada_curriculum.data import windows as windows_lib

    episodes = windows_lib.load_store(cfg.demos, frame=policy.obs_frame)
    variables = policy.init(rng, fit_normalizer(episodes, policy.obs_frame, cfg.augment))
    return create_train_state(variables, optimizer, rng)


def _load_demos(client, cfg: TrainConfig, layout: str = "diffusion", trials: Optional[int] = None) -> int:
    """The demo table from the episode store. Sequence layout (transformer): every episode with
    a successful trial, whole, each action weighted by its trial's success (failed trials stay as
    context, as `pretrain --only-successful` trains). Diffusion: successful episodes; in a
    multi-trial store each successful trial is an episode of its own."""
    import numpy as np

    from ada_curriculum.agent.actor import trial_action_weights, trial_spans
    from ada_curriculum.episode_store import EpisodeStore, trial_results
    from ada_curriculum.policies.obs import flatten_obs, with_trial_reward

    items = 0
    store_trials = set()
    for ep in EpisodeStore(cfg.demos):
        obs = flatten_obs(with_trial_reward(ep.observations, ep.rewards), cfg.policy_config().obs_frame)
        task = np.array([ep.task[k] for k in sorted(ep.task, key=list(ep.task).index)], np.float32)
        trial = np.asarray(ep.observations.get("trial_index", np.zeros(len(obs))), np.int32)[: ep.length]
        trial_success, _ = trial_results(trial, ep.rewards)
        store_trials.add(len(trial_success))
        if layout == "sequence":
            if not any(trial_success):
                continue
            items += client.add_episode("demo", obs[: ep.length], ep.actions, weight=1.0, success=ep.success,
                                        version=-1, task=task, trial_index=trial,
                                        action_weight=trial_action_weights(trial, trial_success))
        elif len(trial_success) > 1:
            for i, a, b in trial_spans(trial):
                if trial_success[i]:
                    items += client.add_episode("demo", obs[a:b], ep.actions[a:b], weight=1.0, success=True,
                                                version=-1, task=task, trial_index=trial[a:b])
        elif ep.success:
            items += client.add_episode("demo", obs[: ep.length], ep.actions, weight=1.0, success=True, version=-1,
                                        task=task, trial_index=trial)
    if layout == "sequence" and trials is not None and store_trials - {trials}:
        log.warning("demos: %s holds episodes of %s trials; this run's have %d", cfg.demos,
                    ",".join(map(str, sorted(store_trials))), trials)
    if items == 0:
        raise ConfigError("demos", f"{cfg.demos} has no successful episode (or trial) for the demo table")
    return items


def _check_replay_layout(saved: Optional[dict], current: dict) -> None:
    """Refuse a resume whose replay windows would not fit the checkpointed tables (a transformer
    run's window length also follows from trials and time limit when not given)."""
    if saved is None or saved == current:
        return
    raise CheckpointError(f"sequence_length: the checkpoint's replay holds {saved['layout']} windows of "
                          f"{saved['window']} steps, this run's are {current['layout']} windows of {current['window']} "
                          "(--sequence-length, or trials x time limit); use a new run directory or the same setting")


def _newest_readable_meta(ckpt: Checkpointer) -> Optional[dict]:
    """The meta of the newest step whose meta reads (a torn newest step must not stop a resume
    that `restore` would make from the step before)."""
    for step in reversed(ckpt.steps()):
        try:
            return ckpt.read_meta(step)
        except Exception:  # noqa: BLE001 - `restore` logs why a step is unreadable
            continue
    return None


def _set_aside_newer_steps(ckpt: Checkpointer, restored_step: int, dest: Path):
    """Move steps newer than the one restored (unreadable ones) out of the checkpoint directory:
    while they sit there, this run's saves at those steps would be skipped as already done."""
    for step in [s for s in ckpt.steps() if s > restored_step]:
        dest.mkdir(parents=True, exist_ok=True)
        (ckpt.directory / str(step)).rename(dest / f"{step}-{int(time.time())}")
        log.warning("checkpoint: moved unreadable step %d to %s", step, dest)


def _distill_stage(cfg: TrainConfig, meta: Optional[dict]) -> Optional[dict]:
    """The distillation stage saved in a checkpoint's meta, checked against this run's config
    (None when the checkpoint has none, or distillation is off and it is at generation 0).
    A checkpoint from another generation chain or other per-generation sizes is refused,
    naming the field."""
    from ada_curriculum.distill import stage

    saved = (meta or {}).get("distill")
    if saved is None:
        return None
    if not cfg.distill.enabled:
        g = saved.get("generation") if isinstance(saved, dict) else None
        if isinstance(g, int) and g > 0:
            raise CheckpointError(f"distill.enabled: the checkpoint is at generation {g} "
                                  f"({saved['generations'][g]}); this run has distillation off")
        return None  # generation 0: the plain model goes on
    state = stage.restore(saved, cfg.distill)  # CheckpointError naming the field, e.g. distill.generations
    saved_dims = list(((meta.get("config") or {}).get("distill") or {}).get("down_dims") or [])
    if saved_dims != list(cfg.distill.down_dims):
        raise CheckpointError(f"distill.down_dims: the checkpoint was made with {','.join(saved_dims) or 'the presets'}"
                              f", this run asks for {','.join(cfg.distill.down_dims) or 'the presets'}; use a new "
                              "run directory or the same setting")
    return state


def _load_teacher(stage_state: dict, distill: DistillConfig, generation, updates: int):
    """The frozen teacher's variables when the resumed generation still uses it (in the loss
    or for acting), else None."""
    from ada_curriculum.distill import load_teacher, stage

    if not stage.teacher_needed(stage_state, distill, updates):
        return None
    variables, _ = load_teacher(generation.teacher_path, generation.teacher_policy)
    return variables


def _describe_stage(prefix: str, s: dict, distill: DistillConfig, updates: int, generation) -> str:
    from ada_curriculum.distill import stage

    if s["generation"] == 0:
        return f"distillation: {prefix} generation 0 ({stage.student_preset(s)}), no teacher yet"
    return (f"distillation: {prefix} generation {s['generation']} ({stage.student_preset(s)}, teacher "
            f"{stage.teacher_preset(s)} at {generation.teacher_path}), kickstarting weight "
            f"{stage.weight(s, distill, updates):.3g} at update {updates} (switched at {s['switch_updates']}), "
            f"actors act with the {s['acting']}")


def _start_ray(cfg: TrainConfig) -> bool:
    """Connect to `ray_address`, or start an embedded local Ray; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    # An embedded local cluster when no address is given (`make run`); Ray's own dashboard is off
    # to keep start-up light on two cores (the run's dashboard is `_start_dashboard`).
    if cfg.ray_address is None:
        # Ray's CPUs are scheduling slots: each actor and the learner hold one. A small machine
        # (make run on 2 cores) still runs every actor, sharing the cores, rather than leaving
        # actors pending for a slot that never frees.
        import os

        slots = cfg.num_actors + 1 + (1 if cfg.eval_every else 0)
        ray.init(num_cpus=max(os.cpu_count() or 1, slots), log_to_driver=False, include_dashboard=False)
    else:
        ray.init(address=cfg.ray_address, log_to_driver=False, include_dashboard=False)
    return True


def _start_dashboard(cfg: TrainConfig):
    """The run's dashboard, serving from a background thread (None when disabled). A taken
    port falls back to any free one; a bad host is a ConfigError naming `dashboard_host`."""
    if not cfg.dashboard:
        return None
    from ada_curriculum.dashboard import make_server

    try:
        server = make_server(cfg.run, cfg.dashboard_host, cfg.dashboard_port)
    except ConfigError as e:
        if e.field != "port":
            raise ConfigError(f"dashboard_{e.field}", e.reason) from None
        # Another run (or anything else) has the port: a second dashboard on a free one.
        log.warning("dashboard: port %d is in use; using a free port", cfg.dashboard_port)
        server = make_server(cfg.run, cfg.dashboard_host, 0)
    if cfg.dashboard_host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("dashboard: serving on %s: anyone who can reach it can read this run's metrics",
                    cfg.dashboard_host)
    print(f"dashboard: {server.url} (--no-dashboard to disable)", flush=True)
    return server.start()


def train(cfg: TrainConfig, on_start: Optional[Callable[["_Run"], None]] = None) -> dict:
    """Run (or resume) the actor-learner until a budget or a stop signal; returns the summary.

    `on_start(run)` is called once everything is built and before the loop starts, with the
    live `_Run` (its `actors`, `learner`, `replay`, ... are local objects or Ray handles): a
    hook for supervisors and fault-injection tests; it must not block.
    """
    cfg.validate()
    run_dir = Path(cfg.run)
    run_dir.mkdir(parents=True, exist_ok=True)
    distill = cfg.distill if cfg.distill.enabled else None
    if distill is not None:
        from ada_curriculum.distill import policy_at

        policy = policy_at(distill, cfg.policy, cfg.diffusion, 0)
    else:
        policy = make_policy(cfg.policy, cfg.policy_config())
    optimizer = make_optimizer(cfg.optim, critic=policy.has_critic)
    builder = Builder(cfg, policy)
    replay_layout = {"layout": builder.layout, "window": builder.window}
    if builder.layout == "sequence" and cfg.replay.min_size_to_sample > 64:
        import sys

        print(f"warning: replay.min_size_to_sample={cfg.replay.min_size_to_sample} online windows are as many "
              f"episodes (sequence windows of {builder.window} steps) before learning starts; consider "
              "--replay.min-size-to-sample 16", file=sys.stderr)
    current = config_lib.to_dict(cfg)

    probe = Checkpointer(run_dir / "checkpoints")
    teacher = None
    try:
        resume_step = probe.latest_step()
        if resume_step is not None:
            saved = _newest_readable_meta(probe)
            if saved is not None:  # none readable: `restore` below says so
                check_compatible(saved.get("config", {}), current, _compatible_keys(cfg))
                _check_replay_layout(saved.get("replay_layout"), replay_layout)
            stage_state = _distill_stage(cfg, saved)
            # The checkpoint holds the generation its stage names: restore into that model's
            # structure (again if `restore` fell back to a step of another generation).
            step = None  # the newest readable step
            while True:
                generation = builder.generation(stage_state, run_dir) if stage_state is not None else None
                template_policy = policy if generation is None else generation.policy
                state, meta, step = probe.restore(state_template(template_policy, optimizer, cfg.seed), step)
                restored = _distill_stage(cfg, meta)
                if restored == stage_state:
                    break
                stage_state = restored
            resume_step = step
            _set_aside_newer_steps(probe, resume_step, run_dir / "checkpoints-unreadable")
            counters, task_state = meta["counters"], meta.get("task_source")
            print(f"resuming {run_dir} from update {resume_step} "
                  f"({counters['env_steps']} env steps, {counters['episodes']} episodes)")
            if stage_state is not None and distill is not None:
                teacher = _load_teacher(stage_state, distill, generation, resume_step)
                print(_describe_stage("resuming distillation at", stage_state, distill, resume_step, generation))
        else:
            state = _initial_state(cfg, policy, optimizer)
            counters, task_state = {"updates": 0, "env_steps": 0, "episodes": 0, "successes": 0,
                                    "seconds": 0.0, "actor_restarts": 0, "learner_stalls": 0}, None
            stage_state = None
    finally:
        probe.close()
    if distill is not None and stage_state is None:
        from ada_curriculum.distill import stage

        # Also a plain run resumed with distillation on: its model is generation 0.
        stage_state = stage.init(distill)
    config_lib.save_config(cfg, run_dir / "config.json")

    dashboard = _start_dashboard(cfg)
    try:
        run = _Run(cfg, builder, state, run_dir, counters, task_state, resume_step, dashboard, stage_state, teacher)
    except BaseException:
        if dashboard is not None:
            dashboard.close()
        raise
    try:
        if on_start is not None:
            on_start(run)
        return run.loop()
    finally:
        run.close()


class _Run:
    """One run's live components (local objects or Ray handles) and its coordinator loop."""

    def __init__(self, cfg, builder, state, run_dir, counters, task_state, resume_step=None, dashboard=None,
                 stage_state=None, teacher=None):
        self.cfg, self.builder, self.run_dir, self.counters = cfg, builder, run_dir, counters
        self.dashboard = dashboard
        self.started_ray = False
        # Distillation: the stage state (JSON, checkpointed) and the generation it is in.
        self.stage = stage_state
        self.generation = builder.generation(stage_state, run_dir) if stage_state is not None else None
        self._handover_pending = False
        self._params: dict = {}
        self._distance: Optional[float] = None  # the student's latest distance to its teacher
        self.history: list[dict] = []
        replay_args = builder.replay_server_args(str(run_dir / "replay"))
        if cfg.distributed:
            import ray

            from ada_curriculum.agent.builder import ActorWorker, LearnerWorker, ReplayServerWorker
            from ada_curriculum.agent.task_source import TaskSource
            from ada_curriculum.agent.variable_source import VariableSource

            self.started_ray = _start_ray(cfg)
            self.replay = builder.remote(ReplayServerWorker, num_cpus=0).remote(**replay_args)
            self.address = ray.get(self.replay.reachable_address.remote())
            self.variables = builder.remote(VariableSource, num_cpus=0, max_concurrency=8).remote()
            self.tasks = builder.remote(TaskSource, num_cpus=0, max_concurrency=8).remote(**builder.task_source_args())
        else:
            self.replay = builder.make_replay_server(replay_args["checkpoint_dir"])
            self.address = self.replay.address
            self.variables = builder.make_variable_source()
            self.tasks = builder.make_task_source()
        if task_state is not None:
            remote.call(self.tasks, "restore", task_state)
        self.client = builder.make_replay_client(self.address)
        info = self.client.info()
        if cfg.demos and info["demo"]["size"] == 0:
            self.counters["demo_items"] = _load_demos(self.client, cfg, builder.layout,
                                                      builder.episode_limits[0] if builder.layout == "sequence" else None)
        ckpt_dir = str(run_dir / "checkpoints")
        distill = dict(generation=self.generation, teacher_variables=teacher, updates=self.counters["updates"])
        if cfg.distributed:
            self.learner = builder.remote(LearnerWorker, cfg.learner_resources).remote(
                **builder.learner_args(state, self.address, self.variables, ckpt_dir, **distill))
            self.actors = [builder.remote(ActorWorker, cfg.actor_resources, max_restarts=cfg.actor_max_restarts)
                           .remote(**builder.actor_args(i, self.address, self.variables, self.tasks))
                           for i in range(cfg.num_actors)]
        else:
            self.learner = builder.make_learner(state, self.address, self.variables, ckpt_dir, **distill)
            self.actors = [builder.make_actor(i, self.address, self.variables, self.tasks) for i in range(cfg.num_actors)]
        # Per actor, since this process started (not checkpointed): which actor fails, and
        # whether a restarted one is producing again with current weights.
        self.actor_stats = [{"env_steps": 0, "episodes": 0, "version": None, "failures": 0,
                             "episodes_since_failure": 0} for _ in self.actors]
        self._last_checkpoint = self.counters["updates"]
        # The first evaluation runs at once: the starting weights' held-out success is the
        # baseline every later evaluation is read against.
        self._last_eval = self.counters["updates"] - cfg.eval_every
        self._eval_ref = None
        self.evaluator = None
        if cfg.eval_every:
            eval_args = dict(policy=builder.policy, variable_source=self.variables, env_name=builder.env_name,
                             tasks=cfg.tasks, episodes=cfg.eval_episodes, env_kwargs=builder.env_kwargs,
                             video_dir=str(run_dir / "videos"), videos=cfg.eval_videos)
            from ada_curriculum.agent.evaluator import Evaluator

            self.evaluator = (builder.remote(Evaluator, cfg.actor_resources).remote(**eval_args) if cfg.distributed
                              else Evaluator(**eval_args))
        self._metrics_file = (run_dir / "metrics.jsonl").open("a")
        self._recent: list[bool] = []
        self._recent_trials: list[list[bool]] = []  # per-trial outcomes of the same episodes
        self._online_sampleable = False  # in process: see _online_ready
        from ada_curriculum.agent.run_metrics import EmbeddingProbe, RunMetrics

        probe = None
        if cfg.embedding_every and callable(getattr(builder.policy, "embed", None)):
            probe = EmbeddingProbe(builder.policy, builder.env_name, builder.env_kwargs, seed=cfg.seed)
        # The store the dashboard reads (metrics.jsonl stays as it was, for scripts).
        self.metrics = RunMetrics(run_dir, cfg.metrics, resume_step, self.counters, self.actor_stats,
                                  self.client.info(), probe)
        self._last_embedding = self.counters["updates"] - cfg.embedding_every  # the first at once
        self._embedded_version = None
        if self.stage is not None:
            self._distill_record()

    # -- bookkeeping ----------------------------------------------------------------------------
    def _absorb_actor(self, out: dict):
        self.counters["env_steps"] += out["env_steps"]
        self.counters["episodes"] += out["episodes"]
        self.counters["successes"] += out["successes"]
        stats = self.actor_stats[out["actor"]]
        stats["env_steps"] += out["env_steps"]
        stats["episodes"] += out["episodes"]
        stats["episodes_since_failure"] += out["episodes"]
        stats["version"] = out["version"]
        stats["generation"] = out.get("generation", 0)  # which model acts (distillation)
        stats["restarting"] = False
        self._recent += [r["success"] for r in out["results"]]
        self._recent = self._recent[-100:]
        self._recent_trials = (self._recent_trials + [r.get("trial_successes") or [r["success"]]
                                                      for r in out["results"]])[-100:]

    def _absorb_learner(self, out: dict):
        self.counters["updates"] = out["updates"]
        if out["updates_done"] == 0:
            self.counters["learner_stalls"] += 1
            log.warning("learner: no replay batch within %.0f s (stall %d)", self.cfg.stall_timeout,
                        self.counters["learner_stalls"])
        curriculum = remote.call(self.tasks, "metrics")
        distill = self._distill_metrics() if self.stage is not None else {}
        row = {**out, **{k: v for k, v in self.counters.items()}, "elapsed": self._elapsed(),
               "recent_success_rate": sum(self._recent) / len(self._recent) if self._recent else None,
               **{k: curriculum[k] for k in ("curriculum/stage", "curriculum/coverage")},
               **{k: v for k, v in distill.items() if k not in out}}
        self.history.append(row)
        self._metrics_file.write(json.dumps(row) + "\n")
        self._metrics_file.flush()
        self.metrics.learner(self.counters["updates"], out, self.counters, self.actor_stats, self._recent,
                             self.client.info(), curriculum, distill)
        if self.stage is not None:
            self._distill_progress(out, curriculum.get("curriculum/coverage"))
        if self.cfg.embedding_every and self.counters["updates"] - self._last_embedding >= self.cfg.embedding_every:
            self._embed()
        if self.counters["updates"] - self._last_checkpoint >= self.cfg.checkpoint_every:
            self.checkpoint()
        if self.evaluator is not None and self._eval_ref is None and \
                self.counters["updates"] - self._last_eval >= self.cfg.eval_every:
            self._last_eval = self.counters["updates"]
            self._eval_ref = remote.Poll(self.evaluator, "run_each", self._eval_names())

    def _eval_names(self) -> list[str]:
        """What to evaluate: the acting weights; while the teacher acts, the student instead,
        plus the (frozen) teacher until its success is known."""
        if self.stage is None or self.stage["acting"] == "student":
            return ["acting"]
        from ada_curriculum.distill import stage

        return ["student"] + (["acting"] if stage.needs_teacher_eval(self.stage) else [])

    def _absorb_eval(self, final: bool = False):
        """Record a finished evaluation (evaluations run beside acting and learning on Ray)."""
        if self._eval_ref is None or not (final or self._eval_ref.ready()):
            return
        results = self._eval_ref.result()
        self._eval_ref = None
        # The model being trained is the run's evaluation; a teacher's goes to the distillation records.
        result = results.get("student") or results["acting"]
        self.last_eval = result
        if getattr(self, "first_eval", None) is None:
            self.first_eval = result
        if self.cfg.stop_success is not None and result.get("episodes") and \
                remote.call(self.tasks, "done", result["success_rate"], self.cfg.stop_success):
            self._curriculum_done = True
        row = {"kind": "eval", "updates": self.counters["updates"], "elapsed": self._elapsed(),
               **{f"eval/{k}": v for k, v in result.items()}}
        if "student" in results and results.get("acting", {}).get("episodes"):
            row.update({f"eval_teacher/{k}": v for k, v in results["acting"].items() if not isinstance(v, (list, dict))})
        self._metrics_file.write(json.dumps(row) + "\n")
        self._metrics_file.flush()
        self.metrics.evaluation(result)
        if self.stage is not None:
            self._distill_eval(results)

    # -- distillation ------------------------------------------------------------------------------
    def _param_count(self, policy) -> Optional[int]:
        if policy is None:
            return None
        from ada_curriculum.distill import param_count

        key = policy.config
        if key not in self._params:
            self._params[key] = param_count(policy)
        return self._params[key]

    def _distill_metrics(self) -> dict:
        from ada_curriculum.distill import stage

        g = self.generation
        return {**stage.metrics(self.stage, self.cfg.distill, self.counters["updates"]),
                "distill/params": self._param_count(g.policy),
                "distill/teacher_params": self._param_count(g.teacher_policy)}

    def _distill_record(self):
        """A row of the store's distillation table (the dashboard's panel) at the current update,
        with the student's latest measured distance to its teacher."""
        from ada_curriculum.distill import stage

        g = self.generation
        self.metrics.distillation(stage.store_record(
            self.stage, self.cfg.distill, self.counters["updates"], self._distance, self._param_count(g.policy),
            self._param_count(g.teacher_policy)))

    def _distill_progress(self, out: dict, coverage: Optional[float]):
        """After a learner result: tell the learner of a handover, record the stage, switch
        to the next generation when a trigger fires."""
        from ada_curriculum.distill import stage

        self._apply_handover()
        updates = self.counters["updates"]
        if out.get("distill/active"):
            self._distance = out.get("distill/distance")
        self._distill_record()
        new, switched = stage.on_progress(self.stage, self.cfg.distill, updates, coverage)
        if not switched:
            return
        self.stage = new
        self.generation = self.builder.generation(new, self.run_dir)
        self._distance = None  # a new student: not measured yet
        remote.call(self.learner, "start_generation", self.generation, self.cfg.seed)
        print(_describe_stage("switched to", new, self.cfg.distill, updates, self.generation), flush=True)
        self._distill_record()
        # Judge the handover as soon as possible: evaluate the new student (and its teacher) now.
        self._last_eval = updates - self.cfg.eval_every

    def _distill_eval(self, results: dict):
        """Feed evaluated success to the stage; a handover is applied at the next learner result."""
        from ada_curriculum.distill import stage

        g = self.stage["generation"]

        def rate(name, generation):
            r = results.get(name) or {}
            return r["success_rate"] if r.get("episodes") and r.get("generation") == generation else None

        # Results of another generation (a switch while the evaluation ran) are not this stage's.
        student = rate("student", g) if "student" in results else rate("acting", g)
        teacher = rate("acting", g - 1) if g > 0 and self.stage["acting"] == "teacher" else None
        new = stage.on_eval(self.stage, self.cfg.distill, teacher_success=teacher, student_success=student,
                            updates=self.counters["updates"])
        if new["acting"] != self.stage["acting"]:
            self._handover_pending = True
            print(f"distillation: handover to the student ({stage.student_preset(new)}) at update "
                  f"{self.counters['updates']}: held-out success {new['student_success']:.2f} vs the teacher's "
                  f"{new['teacher_success']:.2f} (margin {self.cfg.distill.handover_margin})", flush=True)
        self.stage = new
        self.generation = dataclasses.replace(self.generation, acting=new["acting"])
        self._distill_record()

    def _apply_handover(self):
        if self._handover_pending:
            remote.call(self.learner, "set_acting", "student")
            self._handover_pending = False

    def _embed(self):
        """An embedding snapshot of the newest trained weights (a diagnostic: a failure is
        logged and turns snapshots off rather than ending the run)."""
        self._last_embedding = self.counters["updates"]
        got = remote.call(self.variables, "get_with_policy", -1, "student")
        if got is None or got[:1] + got[3:] == self._embedded_version:
            return
        try:
            if self.metrics.embedding(got[0], got[1], got[2]):
                self._embedded_version = got[:1] + got[3:]
        except Exception:  # noqa: BLE001
            log.warning("embedding: snapshot failed; no more snapshots this run", exc_info=True)
            self.metrics.embedding_probe = None

    def _elapsed(self) -> float:
        return self.counters["seconds"] + time.monotonic() - self._t0

    def checkpoint(self):
        replay_path = remote.call(self.replay, "checkpoint")
        meta = {"config": config_lib.to_dict(self.cfg), "kind": "train",
                "counters": {**self.counters, "seconds": self._elapsed()},
                "task_source": remote.call(self.tasks, "state"), "replay_checkpoint": replay_path,
                "replay_layout": {"layout": self.builder.layout, "window": self.builder.window}}
        if self.stage is not None:
            self._apply_handover()  # the saved stage and the learner's acting weights agree
            g = self.generation
            meta["distill"] = self.stage
            meta["distill_generation"] = {"index": g.index, "preset": g.policy.config.preset,
                                          "down_dims": list(g.policy.config.model_kwargs()["down_dims"]),
                                          "teacher": g.teacher_path}
        remote.call(self.learner, "save", self.counters["updates"], meta)
        self._last_checkpoint = self.counters["updates"]
        self.metrics.checkpointed(self.counters["updates"])

    def _budget_reached(self) -> str | None:
        c = self.cfg
        if getattr(self, "_curriculum_done", False):
            return "curriculum_complete"
        if c.max_updates is not None and self.counters["updates"] >= c.max_updates:
            return "max_updates"
        if c.max_env_steps is not None and self.counters["env_steps"] >= c.max_env_steps:
            return "max_env_steps"
        if c.max_minutes is not None and time.monotonic() - self._t0 >= 60 * c.max_minutes:
            return "max_minutes"
        return None

    # -- the loop ---------------------------------------------------------------------------------
    def loop(self) -> dict:
        self._t0 = time.monotonic()
        start_updates = self.counters["updates"]
        with _StopFlag() as stop:
            reason = self._loop_distributed(stop) if self.cfg.distributed else self._loop_local(stop)
        self._absorb_eval(final=True)  # before the checkpoint: it may hand acting over
        self.checkpoint()
        if self.cfg.embedding_every:
            self._embed()  # the final weights (the save published them)
        elapsed = time.monotonic() - self._t0
        self.counters["seconds"] += elapsed
        from ada_curriculum.evaluate import per_trial_summary

        first = [r["recent_success_rate"] for r in self.history if r["recent_success_rate"] is not None]
        summary = {
            "stopped_by": reason, **self.counters,
            "updates_per_s": round((self.counters["updates"] - start_updates) / elapsed, 2) if elapsed else None,
            "success_rate": self.counters["successes"] / max(self.counters["episodes"], 1),
            "recent_success_rate": first[-1] if first else None,
            "trials": self.builder.episode_limits[0],
            "recent_success_per_trial": per_trial_summary(self._recent_trials)["success_per_trial"],
            "replay": self.client.info(), "version": self.counters["updates"], "actors": self.actor_stats,
            "eval": getattr(self, "last_eval", None),
            "eval_first": getattr(self, "first_eval", None),
            "curriculum": {k: v for k, v in remote.call(self.tasks, "metrics").items()
                           if not isinstance(v, (list, dict))},
        }
        if self.stage is not None:
            summary["distillation"] = {**self._distill_metrics(), "history": self.stage["history"],
                                       "teacher_path": self.generation.teacher_path}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _loop_local(self, stop) -> str:
        while True:
            for actor in self.actors:
                self._absorb_actor(actor.run(self.cfg.actor_steps_per_call))
            if self._online_ready():
                self._absorb_learner(self.learner.step(self.cfg.updates_per_call))
            self._absorb_eval()
            reason = stop.stopped or self._budget_reached()
            if reason:
                return reason

    def _online_ready(self) -> bool:
        """In process: whether the online table can be sampled yet. Acting and learning share one
        thread here, so a learner step before the table holds `min_size_to_sample` windows could
        only wait out the stall timeout for data that only this loop's acting can make (the first
        episodes of a run, while none has finished); until then the loop keeps acting."""
        if self._online_sampleable or self.cfg.demo_fraction >= 1.0:
            return True
        size = self.client.info()[ReplayServer.ONLINE]["size"]
        self._online_sampleable = size >= self.cfg.replay.min_size_to_sample
        return self._online_sampleable

    def _loop_distributed(self, stop) -> str:
        import ray

        steps, updates = self.cfg.actor_steps_per_call, self.cfg.updates_per_call
        pending = {a.run.remote(steps): (i, "run") for i, a in enumerate(self.actors)}
        learner_ref = self.learner.step.remote(updates)
        while True:
            ready, _ = ray.wait([learner_ref, *pending], num_returns=1, timeout=1.0)
            for ref in ready:
                if ref == learner_ref:
                    self._absorb_learner(ray.get(ref))
                    learner_ref = self.learner.step.remote(updates)
                    continue
                i, call = pending.pop(ref)
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    if call == "ping" and isinstance(e, ray.exceptions.ActorDiedError):
                        # Out of restarts (a restarting actor answers ActorUnavailableError).
                        self.actor_stats[i]["dead"] = True
                        log.error("actor %d is dead for good (max_restarts %d used up); continuing without it",
                                  i, self.cfg.actor_max_restarts)
                        continue
                    if call == "run":
                        # Ray restarts the actor (max_restarts); it pulls fresh weights when it is back.
                        self.counters["actor_restarts"] += 1
                        self.actor_stats[i]["failures"] += 1
                        self.actor_stats[i]["restarting"] = True
                        self.actor_stats[i]["episodes_since_failure"] = 0
                        log.warning("actor %d failed (%s); waiting for its restart", i, type(e).__name__)
                    # Calls to a restarting actor fail (after a short wait) until it is back: ping it
                    # rather than resubmitting `run`, so one crash counts once.
                    pending[self.actors[i].ping.remote()] = (i, "ping")
                    continue
                if call == "run":
                    self._absorb_actor(out)
                pending[self.actors[i].run.remote(steps)] = (i, "run")
            self._absorb_eval()
            reason = stop.stopped or self._budget_reached() or (None if pending else "actors_failed")
            if reason:
                ray.get(learner_ref)  # let the update in flight finish before the final checkpoint
                return reason

    def close(self):
        self._metrics_file.close()
        try:
            self.metrics.close()
        except Exception:  # noqa: BLE001 - the store must not keep Ray and the replay server up
            log.warning("metrics store: close failed", exc_info=True)
        if self.dashboard is not None:
            self.dashboard.close()
            print(f"dashboard stopped (`ada-curriculum dashboard {self.run_dir}` serves this run again)", flush=True)
        try:
            remote.call(self.learner, "close")
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
        if self.cfg.distributed:
            import ray

            for handle in [*self.actors, self.learner, self.tasks, self.variables, *filter(None, [self.evaluator])]:
                ray.kill(handle)
            remote.call(self.replay, "stop")
            ray.kill(self.replay)
            if self.started_ray:
                ray.shutdown()
        else:
            for actor in self.actors:
                actor.close()
            self.replay.stop()
