"""What the coordinator (`train._Run`) writes to the run's metrics store for the dashboard.

`RunMetrics` turns the coordinator's raw results into `metrics_store` records:

- after every learner result, scalars: the learner's step metrics (losses, gradient norms,
  ``clipped`` / ``clip_count``), and the rates the coordinator measures between two results
  (``learner/updates_per_s``, ``actors/env_steps_per_s``, ``actor/<i>/env_steps_per_s``,
  ``replay/<table>/{size,max_size,inserts_per_s,samples_per_s}``), ``success/recent``,
  ``actors/restarts``, ``curriculum/stage`` and ``curriculum/coverage``;
- every `MetricsConfig.snapshot_interval` seconds, when the curriculum stage changes and at each
  checkpoint: a health row and a curriculum snapshot (bounds per dimension against the full
  task space, success grids from the scheduler's bins);
- each held-out evaluation;
- a labelled 2-D projection of the policy's features for fixed probe tasks (`EmbeddingProbe`).

Only the coordinator writes; it is single-threaded, like `MetricsWriter`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

import envs
from ada_curriculum.curriculum.metrics import success_grids
from ada_curriculum.metrics_store import MetricsConfig, MetricsWriter, pca_2d

log = logging.getLogger(__name__)

# Learner step outputs that are bookkeeping rather than curves of the objective: under `learner/`.
_LEARNER_BOOKKEEPING = ("updates_done", "learner_seconds", "sample_wait_seconds", "stalls")
_C = "curriculum/"


@dataclasses.dataclass
class _Totals:
    """Cumulative counts at one moment, to turn the next ones into rates."""

    time: float
    updates: int
    env_steps: int
    actor_steps: list[int]
    replay: dict[str, tuple[int, int]]  # table -> (inserts, samples)

    @classmethod
    def now(cls, counters: Mapping, actor_stats: Sequence[Mapping], replay: Mapping) -> "_Totals":
        return cls(time.monotonic(), int(counters["updates"]), int(counters["env_steps"]),
                   [int(a["env_steps"]) for a in actor_stats],
                   {t: (int(i.get("num_inserts", 0)), int(i.get("num_samples", 0))) for t, i in replay.items()})


class RunMetrics:
    """The coordinator's side of the metrics store of `run_dir`.

    `resumed_step`: the update a resumed run restarts from (None for a fresh run): records past
    it came from updates the restart lost and are dropped, so curves continue from the checkpoint.
    """

    def __init__(self, run_dir, config: MetricsConfig, resumed_step: Optional[int], counters: Mapping,
                 actor_stats: Sequence[Mapping], replay: Mapping, embedding: Optional["EmbeddingProbe"] = None):
        self.config = config
        self.writer = MetricsWriter(run_dir, config)
        # A fresh run in a directory without a checkpoint keeps nothing from an earlier attempt.
        self.writer.discard_after(-1 if resumed_step is None else resumed_step)
        self.embedding_probe = embedding
        self._prev = _Totals.now(counters, actor_stats, replay)
        self._last_snapshot = -math.inf
        self._stage = None
        self._last_checkpoint: tuple[Optional[int], Optional[float]] = (resumed_step, None)
        self._latest: dict[str, Any] = {}

    # -- per learner result --------------------------------------------------------------------
    def learner(self, step: int, out: Mapping, counters: Mapping, actor_stats: Sequence[Mapping],
                recent: Sequence[bool], replay: Mapping, curriculum: Mapping, distill: Mapping | None = None) -> None:
        now = _Totals.now(counters, actor_stats, replay)
        dt = max(now.time - self._prev.time, 1e-6)
        values: dict[str, Any] = {k: v for k, v in out.items() if k != "updates" and k not in _LEARNER_BOOKKEEPING}
        values.update({f"learner/{k}": out[k] for k in _LEARNER_BOOKKEEPING if k in out})
        values["learner/updates_per_s"] = (now.updates - self._prev.updates) / dt
        values["actors/env_steps_per_s"] = (now.env_steps - self._prev.env_steps) / dt
        for i, steps in enumerate(now.actor_steps):
            before = self._prev.actor_steps[i] if i < len(self._prev.actor_steps) else 0
            values[f"actor/{i}/env_steps_per_s"] = max(steps - before, 0) / dt
        values.update({"actors/env_steps": counters["env_steps"], "actors/episodes": counters["episodes"],
                       "actors/restarts": counters.get("actor_restarts", 0)})
        if recent:
            values["success/recent"] = sum(recent) / len(recent)
        for table, info in replay.items():
            inserts, samples = now.replay[table]
            before = self._prev.replay.get(table, (inserts, samples))
            values.update({f"replay/{table}/size": info["size"], f"replay/{table}/max_size": info["max_size"],
                           f"replay/{table}/inserts_per_s": max(inserts - before[0], 0) / dt,
                           f"replay/{table}/samples_per_s": max(samples - before[1], 0) / dt})
        values.update({_C + "stage": curriculum.get(_C + "stage"), _C + "coverage": curriculum.get(_C + "coverage")})
        # The distillation stage (`distill/generation`, `distill/acting_student`, ...); the
        # learner's own `distill/weight` and `distill/distance` (means over its updates) win.
        values.update({k: v for k, v in (distill or {}).items() if k not in values and isinstance(v, (int, float))})
        self.writer.scalars(values, step)
        self._prev = now
        self._latest = {"counters": dict(counters), "actor_stats": [dict(a) for a in actor_stats],
                        "replay": replay, "curriculum": curriculum}
        stage = curriculum.get(_C + "stage")
        if time.monotonic() - self._last_snapshot >= self.config.snapshot_interval or stage != self._stage:
            self.snapshot(step)

    def snapshot(self, step: int) -> None:
        """A health row and a curriculum snapshot from the newest learner result's data."""
        if not self._latest:
            return
        counters, actor_stats = self._latest["counters"], self._latest["actor_stats"]
        dead = sum(bool(a.get("dead")) for a in actor_stats)
        restarting = sum(bool(a.get("restarting")) and not a.get("dead") for a in actor_stats)
        self.writer.health(
            step, actors_alive=len(actor_stats) - dead - restarting, actors_total=len(actor_stats),
            actor_restarts=counters.get("actor_restarts", 0), last_checkpoint_step=self._last_checkpoint[0],
            last_checkpoint_time=self._last_checkpoint[1], actors=actor_stats, replay=self._latest["replay"],
            extra={k: counters.get(k) for k in ("env_steps", "episodes", "successes", "learner_stalls")})
        curriculum = self._latest["curriculum"]
        if _C + "bins/dims" in curriculum:
            bounds = {n: (curriculum[f"{_C}bounds/{n}/lo"], curriculum[f"{_C}bounds/{n}/hi"])
                      for n in envs.FULL.names if f"{_C}bounds/{n}/lo" in curriculum}
            # Against the whole task space (not the run's `tasks` box): how much of the table is in play.
            full = {n: (envs.FULL[n].low, envs.FULL[n].high) for n in bounds}
            self.writer.curriculum(step, bounds, full, stage=curriculum.get(_C + "stage"),
                                   bins=success_grids(curriculum))
        self._stage = curriculum.get(_C + "stage")
        self._last_snapshot = time.monotonic()

    # -- rarer events ---------------------------------------------------------------------------
    def checkpointed(self, step: int) -> None:
        """After a checkpoint at `step`: a snapshot naming it, and everything committed."""
        self._last_checkpoint = (step, time.time())
        self.snapshot(step)
        self.writer.flush()

    def evaluation(self, result: Mapping) -> None:
        """A held-out evaluation, at the update of the weights it evaluated (their version)."""
        if not result.get("episodes") or result.get("version") is None or result["version"] < 0:
            return
        self.writer.evaluation(int(result["version"]), result)

    def distillation(self, record: Mapping) -> None:
        """A distillation stage record (`distill.stage.store_record`)."""
        self.writer.distillation(**record)

    def embedding(self, step: int, variables, policy=None) -> bool:
        """The probe tasks' policy features under `variables` (of `policy`, when it is another
        model than the probe's: a distillation student), projected to 2-D; False if skipped."""
        if self.embedding_probe is None:
            return False
        if policy is not None and policy != self.embedding_probe.policy:
            self.embedding_probe = self.embedding_probe.for_policy(policy)
        features, labels = self.embedding_probe(variables)
        if not np.isfinite(features).all():
            log.warning("embedding: non-finite policy features at update %d; snapshot skipped", step)
            return False
        self.writer.embedding(step, pca_2d(features, labels))
        return True

    def close(self) -> None:
        self.writer.close()


# ---- the embedding panel's probes -----------------------------------------------------------

# banana_x grows forward from the arm base and banana_y to its left.
_X_REGIONS = ("near", "mid", "far")
_Y_REGIONS = ("right", "centre", "left")
# Dimensions probes hold at the nominal task: only where the banana and plate are varies.
_HELD = ("banana_yaw", "n_distractors", "friction_scale", "mass_scale", "arm_noise")


def probe_tasks(per_region: int = 4, seed: int = 0) -> list[tuple[envs.TaskParams, str]]:
    """`per_region` tasks in each cell of a 3 x 3 grid over banana x/y of the full task space
    (the evaluation's task bins), labelled by the cell ("banana far left"); the plate lies
    anywhere valid, the other dimensions at the nominal task. Fixed by `seed`."""
    rng = np.random.default_rng([seed, 7907])
    bx, by = envs.FULL["banana_x"], envs.FULL["banana_y"]
    out = []
    for j, y_name in enumerate(_Y_REGIONS):
        for i, x_name in enumerate(_X_REGIONS):
            x_edges = np.linspace(bx.low, bx.high, 4)
            y_edges = np.linspace(by.low, by.high, 4)
            cell = envs.FULL.with_bounds(banana_x=(x_edges[i], x_edges[i + 1]), banana_y=(y_edges[j], y_edges[j + 1]),
                                         **{n: (getattr(envs.NOMINAL, n),) * 2 for n in _HELD})
            out += [(cell.sample(rng), f"banana {x_name} {y_name}") for _ in range(per_region)]
    return out


class EmbeddingProbe:
    """`probe(variables) -> (features (N, F), labels)`: the policy's features (`policy.embed`)
    for the first observations of fixed probe tasks (`probe_tasks`), in one jitted call. The
    observations are made once, on first use, from env resets."""

    def __init__(self, policy, env_name: str = "banana-place", env_kwargs: Mapping | None = None,
                 per_region: int = 4, seed: int = 0):
        if not callable(getattr(policy, "embed", None)):
            raise ValueError(f"policy: {type(policy).__name__} has no `embed` method for the embedding panel")
        self.policy, self.env_name, self.env_kwargs = policy, env_name, dict(env_kwargs or {})
        self.per_region, self.seed = per_region, seed
        self._obs: Optional[np.ndarray] = None
        self.labels: list[str] = []
        self._fn = None

    def for_policy(self, policy) -> "EmbeddingProbe":
        """The same probes for another model (its observations are the same)."""
        probe = EmbeddingProbe(policy, self.env_name, self.env_kwargs, self.per_region, self.seed)
        if policy.n_obs_steps == self.policy.n_obs_steps:
            probe._obs, probe.labels = self._obs, list(self.labels)
        return probe

    def observations(self) -> np.ndarray:
        """(N, n_obs_steps, obs_dim): each probe's first observation, repeated as the policy
        runner pads a fresh history."""
        if self._obs is None:
            from ada_curriculum.policies.obs import flatten_obs

            probes = probe_tasks(self.per_region, self.seed)
            env = envs.make(self.env_name, tasks="full", seed=self.seed, **self.env_kwargs)
            try:
                first = [flatten_obs(env.reset(task=task, seed=self.seed + k).observation, self.policy.obs_frame)
                         for k, (task, _) in enumerate(probes)]
            finally:
                env.close()
            self._obs = np.repeat(np.stack(first)[:, None], self.policy.n_obs_steps, axis=1).astype(np.float32)
            self.labels = [label for _, label in probes]
        return self._obs

    def __call__(self, variables) -> tuple[np.ndarray, list[str]]:
        import jax

        obs = self.observations()
        if self._fn is None:
            self._fn = jax.jit(self.policy.embed)
        return np.asarray(self._fn(variables, obs), np.float64), list(self.labels)
