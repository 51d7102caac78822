"""One builder for every piece of the actor-learner, local or on Ray (Acme's pattern).

`Builder.make_*` returns plain objects for an in-process run, and `Builder.remote(...)` turns
the same classes into Ray actors with the configured resources and restart policy for the
distributed run, so both runs execute the same code.
"""

from __future__ import annotations

import dataclasses
import functools

from ada_curriculum import replay as replay_lib
from ada_curriculum.agent.actor import Actor
from ada_curriculum.agent.learner import Learner
from ada_curriculum.agent.objectives import DiffusionPPO, SuccessWeightedBC
from ada_curriculum.agent.task_source import TaskSource
from ada_curriculum.agent.variable_source import VariableSource
from ada_curriculum.data import augment as augment_lib
from ada_curriculum.learning import make_optimizer
from ada_curriculum.policies.obs import ACTION_DIM

TASK_DIM = 9


def parse_resources(spec: str) -> dict[str, float]:
    """'actor:1,gpu_node:0.5' -> {'actor': 1.0, 'gpu_node': 0.5}; '' -> {}."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, amount = part.partition(":")
        try:
            out[name] = float(amount or 1)
        except ValueError:
            raise ValueError(f"resources: cannot read {part!r} (expected name:amount)") from None
    return out


class ReplayServerWorker(replay_lib.ReplayServer):
    """The replay server as a Ray actor: it tells clients on other nodes where it is."""

    def reachable_address(self) -> str:
        import ray

        port = self.address.rsplit(":", 1)[1]
        return f"{ray.util.get_node_ip_address()}:{port}"


class ActorWorker(Actor):
    """An actor that makes its own replay client (it may live in another process)."""

    def __init__(self, actor_id, policy, replay_address, window, n_obs_steps, variable_source, task_source, **kw):
        client = replay_lib.ReplayClient(replay_address, window=window, n_obs_steps=n_obs_steps)
        super().__init__(actor_id, policy, client, variable_source, task_source, **kw)

    def ping(self) -> bool:
        return True


class LearnerWorker(Learner):
    """A learner that makes its own replay client and mixed-batch stream."""

    def __init__(self, policy, optim_cfg, objective, state, replay_address, window, batch_size, demo_fraction,
                 variable_source, checkpoint_dir, publish_every, stall_timeout, generation=None, teacher_variables=None,
                 updates=None, augment="none", seed=0):
        self._client = replay_lib.ReplayClient(replay_address, window=window, n_obs_steps=policy.n_obs_steps)
        if self._client.layout == "chain":
            batches = self._client.chain_batches(batch_size, demo_fraction)
        else:
            batches = self._client.mixed_batches(batch_size, demo_fraction)
        if augment == "rotate":
            # A fresh stream per (re)start: the angles need not replay, only be uniform.
            batches = augment_lib.rotated_batches(batches, seed=seed + (updates or 0))
        optimizer = make_optimizer(optim_cfg, critic=policy.has_critic)
        super().__init__(policy, objective, optimizer, optim_cfg, state, batches, variable_source,
                         checkpoint_dir=checkpoint_dir, publish_every=publish_every, stall_timeout=stall_timeout,
                         generation=generation, teacher_variables=teacher_variables, updates=updates)

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


MULTI_TRIAL_ENV = "banana-place-multi"


class Builder:
    """`policy` is the run's first model (generation 0 under distillation); every generation
    shares its horizon and observation layout, so replay windows fit them all.

    Replay layout: diffusion windows of `horizon` steps, or for a transformer sequence windows
    of `sequence_length` steps (default: the run's trials x time limit, capped at the
    transformer's `max_len`, so a whole multi-trial episode is one window)."""

    def __init__(self, cfg, policy):
        self.cfg, self.policy = cfg, policy
        self.layout = ("sequence" if policy.kind == "transformer"
                       else "chain" if getattr(cfg, "objective", None) == "ppo" else "diffusion")
        self.window = self.sequence_length() if self.layout == "sequence" else policy.config.horizon

    # -- env ------------------------------------------------------------------------------------
    @property
    def env_name(self) -> str:
        """The env actors and the evaluator run: `--trials k > 1` of the one-trial env is the
        multi-trial env (k trials of one task per episode, context kept across them)."""
        trials = getattr(self.cfg, "trials", None)
        if trials is not None and trials > 1 and self.cfg.env == "banana-place":
            return MULTI_TRIAL_ENV
        return self.cfg.env

    @property
    def env_kwargs(self) -> dict:
        c = self.cfg
        kwargs = {} if c.time_limit is None else {"time_limit": c.time_limit}
        if getattr(c, "trials", None) is not None:
            kwargs["trials"] = c.trials
        return kwargs

    @functools.cached_property
    def episode_limits(self) -> tuple[int, int]:
        """(trials per episode, steps per trial) of the run's env (its defaults resolved)."""
        import envs

        env = envs.make(self.env_name, tasks="nominal", **self.env_kwargs)
        try:
            return int(env.trials), int(env.time_limit)
        finally:
            env.close()

    def sequence_length(self) -> int:
        """Steps per sequence replay window (transformer runs)."""
        given = getattr(self.cfg, "sequence_length", None)
        if given is not None:
            return int(given)
        trials, time_limit = self.episode_limits
        return min(int(self.policy.config.max_len), trials * time_limit)

    # -- distillation ---------------------------------------------------------------------------
    @property
    def distill(self):
        """The run's DistillConfig when distillation is on, else None."""
        d = getattr(self.cfg, "distill", None)
        return d if d is not None and d.enabled else None

    def generation(self, stage_state, run_dir):
        """The `distill.Generation` a stage state is in (None without distillation)."""
        if self.distill is None:
            return None
        from ada_curriculum.distill import Generation

        return Generation.of(stage_state, self.distill, self.cfg.policy, self.cfg.diffusion, run_dir)

    # -- replay ---------------------------------------------------------------------------------
    def replay_server_args(self, checkpoint_dir: str | None) -> dict:
        replay = self.cfg.replay
        if not self.cfg.distributed:
            # One thread cannot wait on itself: in process, acting and learning alternate at a
            # fixed ratio set by the coordinator, so the rate limiter must never block.
            replay = dataclasses.replace(replay, error_buffer=1e12)
        return dict(config=replay, obs_dim=self.policy.obs_dim, action_dim=ACTION_DIM, task_dim=TASK_DIM,
                    window=self.window, checkpoint_dir=checkpoint_dir, layout=self.layout,
                    chunk=self.policy.n_action_steps if self.layout == "sequence" else None,
                    **({"n_obs_steps": self.policy.n_obs_steps, "chain_steps": self.chain_steps}
                       if self.layout == "chain" else {}))

    @property
    def chain_steps(self) -> int:
        """DDIM steps of the actors' chains (chain layout): the acting steps, else the policy's."""
        given = self.cfg.acting_inference_steps
        return int(self.policy.config.num_inference_steps if given is None else given)

    def make_replay_server(self, checkpoint_dir: str | None = None):
        return replay_lib.ReplayServer(**self.replay_server_args(checkpoint_dir))

    def make_replay_client(self, address: str):
        return replay_lib.ReplayClient(address, window=self.window, n_obs_steps=self.policy.n_obs_steps)

    # -- sources --------------------------------------------------------------------------------
    def make_task_source(self) -> TaskSource:
        return TaskSource(**self.task_source_args())

    def task_source_args(self) -> dict:
        return dict(tasks=self.cfg.tasks, seed=self.cfg.seed, curriculum=getattr(self.cfg, "curriculum", None))

    @staticmethod
    def make_variable_source() -> VariableSource:
        return VariableSource()

    # -- actors and learner ---------------------------------------------------------------------
    def actor_args(self, i: int, replay_address, variable_source, task_source) -> dict:
        c = self.cfg
        return dict(actor_id=i, policy=self.policy, replay_address=replay_address, window=self.window,
                    n_obs_steps=self.policy.n_obs_steps, variable_source=variable_source, task_source=task_source,
                    env_name=self.env_name, num_envs=c.envs_per_actor, seed=c.seed * 100 + i,
                    variable_update_period=c.variable_update_period, env_kwargs=self.env_kwargs,
                    sampling=None if c.acting_inference_steps is None
                    else {"num_inference_steps": c.acting_inference_steps},
                    weighting=c.online_weighting, critic_warmup=c.critic_warmup_updates,
                    chains=self.layout == "chain")

    def make_actor(self, i: int, replay_address, variable_source, task_source) -> ActorWorker:
        return ActorWorker(**self.actor_args(i, replay_address, variable_source, task_source))

    def learner_args(self, state, replay_address, variable_source, checkpoint_dir, generation=None,
                     teacher_variables=None, updates=None) -> dict:
        """`generation` (a `distill.Generation`): the student to train (its policy replaces the
        run's), its teacher's variables while the teacher is used, and the run's update count."""
        c = self.cfg
        # Without --init the model trains from scratch: its EMA warms up, or acting would average
        # in the random init for long.
        optim = c.optim if c.init else c.optim.from_scratch()
        return dict(policy=self.policy if generation is None else generation.policy, optim_cfg=optim,
                    objective=self.objective(), state=state, replay_address=replay_address, window=self.window,
                    batch_size=c.batch_size, demo_fraction=c.demo_fraction, variable_source=variable_source,
                    checkpoint_dir=checkpoint_dir, publish_every=c.publish_every, stall_timeout=c.stall_timeout,
                    generation=generation, teacher_variables=teacher_variables, updates=updates,
                    augment=c.augment, seed=c.seed)

    def make_learner(self, state, replay_address, variable_source, checkpoint_dir, **distill) -> LearnerWorker:
        return LearnerWorker(**self.learner_args(state, replay_address, variable_source, checkpoint_dir, **distill))

    def objective(self):
        """The RL objective; under distillation the learner adds the kickstarting term to it."""
        if self.layout == "chain":
            return DiffusionPPO(self.cfg.ppo, demo_weight=self.cfg.demo_weight)
        return SuccessWeightedBC(demo_weight=self.cfg.demo_weight, online_weight=self.cfg.online_weight)

    # -- Ray ------------------------------------------------------------------------------------
    @staticmethod
    def remote(cls, resources: str = "", max_restarts: int = 0, num_cpus: float = 1.0, max_concurrency: int = 1):
        """`cls` as a Ray actor class with resources and a restart policy."""
        import ray

        return ray.remote(cls).options(
            num_cpus=num_cpus, resources=parse_resources(resources) or None, max_restarts=max_restarts,
            max_concurrency=max_concurrency)

