"""Replay buffer of training windows: a Reverb server with a demo and an online table.

This is the only module that imports `reverb` (and TensorFlow, for Reverb's tf.data
dataset), so swapping the replay backend is a one-file change. Arrays go in and come out
as numpy.

An item is one fixed-size window of an episode (see `window_spec`): `window` consecutive
steps of `obs` and `action`, plus per-window scalars (`weight`, `success`, `version`,
`task`, `trial`). `ReplayClient.add_episode` writes every step of an episode to the server
once and creates one item per real step that references a slice of those steps, so
overlapping windows share storage. Windows are padded as in Diffusion Policy (and
`data/windows.py`): the first step is repeated `n_obs_steps - 1` times before the episode
and the last step is repeated after it, so real step t yields the window starting at
t - (n_obs_steps - 1); the learner uses `obs[:, :n_obs_steps]` and `action[:, :horizon]`.

With `layout="sequence"` (the transformer's), an item is instead a left-aligned window of
`window` steps of one multi-trial episode in the sequence batch format of `policies/base.py`
(`obs`, `prev_action`, `trial_index`, `mask`, the action chunk `action (window, chunk, A)`,
`action_mask`, per-entry `action_weight`), cut exactly as `data/windows.SequenceWindows` cuts it
(see `sequence_spec`): an episode that fits in the window is one item, the whole episode padded
at the end; a longer one gives one full window ending at every step from `window - 1` on.
`action_weight` is the loss weight of the action each chunk entry holds (the trial's success),
so failed trials stay in the context with weight 0.

With `layout="chain"` (a policy gradient through the denoising steps, DPPO) the demo table
holds diffusion windows and the online table one item per planned chunk (see `chain_spec`):
the observation history it was planned from, the denoising chain that produced it, each step's
log-likelihood under the acting weights, and the episode's advantage. `add_decisions` writes an
episode's decisions; `chain_batches` serves demo windows and decisions in one batch.

Tables: `demo` never evicts (adding past `demo_table_size` raises `ReplayFullError`) and
only needs one item to sample; `online` evicts FIFO and is rate limited so each online
window is sampled about `samples_per_insert` times on average. With
`online_sampler="weight"` the online table samples each window in proportion to its training
weight (self-imitation learning's prioritised replay): windows of failed episodes (weight 0)
are not drawn at all once any window has a positive weight, so the whole online share of a
batch is spent on the windows the objective learns from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Literal

import numpy as np
import reverb
import tensorflow as tf

from ada_curriculum.config import ConfigError


def _feed_options() -> tf.data.Options:
    """tf.data settings for the learner's batch stream: one thread of its own and no autotuning.

    The learner consumes a few percent of what Reverb serves (a batch per update), so a
    pipeline on one thread keeps up, and on a small machine every further tf.data thread (and
    the autotuner's) takes cycles from XLA's update running beside it.
    """
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = False
    return options


# Windows created between partial flushes of an episode's writes (see `add_episode`).
_FLUSH_EVERY = 32


class ReplayFullError(RuntimeError):
    """Adding to the demo table would evict demos."""


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    demo_table_size: int = 200_000  # demos are never evicted: inserting past this is an error
    online_table_size: int = 100_000  # FIFO eviction of online windows
    # Online table: target samples per inserted window. Low, because on a CPU machine a learner
    # update costs far more than the env steps that feed it: at 8, acting starves (the learner
    # blocks actors' inserts or takes the cores); at 2, each online window is trained on about
    # twice and acting keeps up (demo windows come on top, from their own table).
    samples_per_insert: float = 2.0
    min_size_to_sample: int = 256  # online table: no sampling below this many windows
    # How far (in samples) the online sample count may drift from samples_per_insert * inserts
    # either way. The learner may run error_buffer samples ahead (16 batches of 256) before
    # blocking; actors may run error_buffer / samples_per_insert windows ahead (2048 at the
    # default ratio, a few dozen episodes) before their add_episode blocks. Too small makes
    # actors and learner run in lockstep; too large lets the ratio drift.
    error_buffer: float = 4096.0
    # "uniform", or "weight": sample online windows in proportion to their weight (see the module
    # docstring). With binary success weights the online part of the loss still averages over
    # successes, but a batch holds about 1 / success-rate times as many of them (at 30% success a
    # uniform batch spends 70% of its online windows on weight-0 failures), so online windows
    # also weigh more against the demo windows.
    online_sampler: Literal["uniform", "weight"] = dataclasses.field(default="uniform", metadata={
        "help": "online windows drawn uniformly, or in proportion to their weight (prioritised self-imitation)"})

    def validate(self):
        for name in ("demo_table_size", "online_table_size", "min_size_to_sample"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"expected a positive int, got {value!r}")
        if self.min_size_to_sample > self.online_table_size:
            raise ConfigError("min_size_to_sample", f"{self.min_size_to_sample} exceeds "
                              f"online_table_size {self.online_table_size}: sampling would never start")
        if self.online_sampler not in ("uniform", "weight"):
            raise ConfigError("online_sampler", f"expected 'uniform' or 'weight', got {self.online_sampler!r}")
        if not self.samples_per_insert > 0:
            raise ConfigError("samples_per_insert", f"expected > 0, got {self.samples_per_insert!r}")
        # Reverb's own bound: a smaller buffer can block inserts and samples for good.
        if not self.error_buffer >= max(1.0, self.samples_per_insert):
            raise ConfigError("error_buffer", f"expected >= max(1, samples_per_insert) = "
                              f"{max(1.0, self.samples_per_insert)}, got {self.error_buffer!r}")


def window_spec(obs_dim: int, action_dim: int, task_dim: int, window: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Field name -> (shape, dtype) of one window (one replay item)."""
    f32 = np.dtype(np.float32)
    return {
        "obs": ((window, obs_dim), f32),
        "action": ((window, action_dim), f32),
        "weight": ((), f32),  # training weight, e.g. 1 for a success, 0 for a failure
        "success": ((), f32),
        "version": ((), np.dtype(np.int64)),  # policy version that acted; -1 for demos
        "task": ((task_dim,), f32),
        "trial": ((), np.dtype(np.int32)),
    }


LAYOUTS = ("diffusion", "sequence", "chain")
CHAIN_PREFIX = "ppo/"  # keys of a chain batch's decisions, beside the demo windows' own keys


def chain_spec(obs_dim: int, action_dim: int, task_dim: int, n_obs_steps: int, horizon: int,
               steps: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Field name -> (shape, dtype) of one decision (the chain layout's online item)."""
    f32 = np.dtype(np.float32)
    return {
        "obs": ((n_obs_steps, obs_dim), f32),  # the history the chunk was planned from
        "chain": ((steps + 1, horizon, action_dim), f32),  # x_T .. x_0, normalised action space
        "logp": ((steps,), f32),  # each denoising step's log-likelihood under the acting weights
        "advantage": ((), f32),
        "success": ((), f32),
        "version": ((), np.dtype(np.int64)),
        "task": ((task_dim,), f32),
    }


def sequence_spec(obs_dim: int, action_dim: int, task_dim: int, window: int,
                  chunk: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Field name -> (shape, dtype) of one sequence window (the transformer's replay item)."""
    f32, i32 = np.dtype(np.float32), np.dtype(np.int32)
    return {
        "obs": ((window, obs_dim), f32),
        "prev_action": ((window, action_dim), f32),
        "trial_index": ((window,), i32),
        "mask": ((window,), np.dtype(bool)),  # real steps (left-aligned), then padding
        "action": ((window, chunk, action_dim), f32),  # the chunk a_t .. a_{t+chunk-1} at each step
        "action_mask": ((window, chunk), np.dtype(bool)),  # chunk entries inside the episode and trial
        "action_weight": ((window, chunk), f32),  # each entry's loss weight (its trial's success)
        "weight": ((), f32),
        "success": ((), f32),  # the episode's (its last trial's) success
        "version": ((), np.dtype(np.int64)),
        "task": ((task_dim,), f32),
        "trial": ((), i32),  # trial of the window's last real step
    }


def sequence_steps(obs, action, trial, action_weight, chunk: int) -> dict[str, np.ndarray]:
    """Per-step rows of an episode's sequence windows, plus one padding row (index T): row t
    is what every window holds at step t (nothing in it depends on where the window starts),
    so the windows of `data/windows.SequenceWindows` are slices of these rows, padded at the
    end with the padding row. obs (>= T, D), action (T, A), trial (>= T,), action_weight (T,)."""
    action = np.asarray(action, np.float32)
    T = len(action)
    trial = np.asarray(trial, np.int32)[:T]
    t = np.arange(T)
    chunk_t = t[:, None] + np.arange(chunk)  # (T, chunk)
    rows = np.minimum(chunk_t, T - 1)
    action_mask = (chunk_t < T) & (trial[rows] == trial[:, None])
    prev = np.concatenate([np.zeros((1, action.shape[1]), np.float32), action[:-1]])
    steps = {
        "obs": np.asarray(obs, np.float32)[:T], "prev_action": prev, "trial_index": trial,
        "mask": np.ones(T, bool), "action": action[rows], "action_mask": action_mask,
        "action_weight": np.where(action_mask, np.asarray(action_weight, np.float32)[rows], 0.0).astype(np.float32),
        "trial": trial,
    }
    # Padding (as SequenceWindows pads): zeros, masked out, the chunk clamped to the last action.
    pad = {"obs": np.zeros_like(steps["obs"][0]), "prev_action": np.zeros_like(prev[0]), "trial_index": np.int32(0),
           "mask": np.bool_(False), "action": np.repeat(action[-1:], chunk, axis=0),
           "action_mask": np.zeros(chunk, bool), "action_weight": np.zeros(chunk, np.float32),
           "trial": trial[-1]}
    return {k: np.concatenate([v, np.asarray(pad[k])[None]]) for k, v in steps.items()}


def _signature(spec) -> dict[str, tf.TensorSpec]:
    return {k: tf.TensorSpec(shape, tf.as_dtype(dtype), name=k) for k, (shape, dtype) in spec.items()}


def _spec_of(signature) -> dict:
    return {k: (tuple(s.shape.as_list()), np.dtype(s.dtype.as_numpy_dtype)) for k, s in signature.items()}


def _tables_info(client: reverb.Client) -> dict[str, dict]:
    out = {}
    for name, t in client.server_info().items():
        rl = t.rate_limiter_info
        out[name] = {
            "size": int(t.current_size),
            "max_size": int(t.max_size),
            "num_inserts": int(rl.insert_stats.completed),  # totals, kept across checkpoints
            "num_samples": int(rl.sample_stats.completed),
            "rate_limiter": {
                "samples_per_insert": float(rl.samples_per_insert),
                "min_size_to_sample": int(rl.min_size_to_sample),
                # Samples block when inserts * samples_per_insert - samples would drop
                # below min_diff; inserts block when it would exceed max_diff.
                "min_diff": float(rl.min_diff),
                "max_diff": float(rl.max_diff),
            },
        }
    return out


class ReplayServer:
    """A Reverb server holding the demo and online tables (plain args and return values, so
    it can run as a Ray actor; clients connect from other processes through `address`)."""

    DEMO, ONLINE = "demo", "online"

    def __init__(self, config: ReplayConfig, obs_dim: int, action_dim: int, task_dim: int, window: int,
                 port: int | None = None, checkpoint_dir: str | None = None, layout: str = "diffusion",
                 chunk: int | None = None, n_obs_steps: int | None = None, chain_steps: int | None = None):
        config.validate()
        if layout not in LAYOUTS:
            raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
        if layout == "sequence":
            if not chunk or chunk < 1:
                raise ValueError(f"chunk: the sequence layout needs the action chunk length, got {chunk!r}")
            spec = sequence_spec(obs_dim, action_dim, task_dim, window, chunk)
        else:
            spec = window_spec(obs_dim, action_dim, task_dim, window)
        online_spec = spec
        if layout == "chain":
            if not n_obs_steps or not chain_steps or not 1 <= n_obs_steps <= window or chain_steps < 1:
                raise ValueError(f"n_obs_steps/chain_steps: the chain layout needs the observation history "
                                 f"(1..{window}) and the DDIM steps (>= 1), got {n_obs_steps!r}/{chain_steps!r}")
            online_spec = chain_spec(obs_dim, action_dim, task_dim, n_obs_steps, window, chain_steps)
        self._specs = {self.DEMO: spec, self.ONLINE: online_spec}
        signature = _signature(spec)
        online_limiter = reverb.rate_limiters.SampleToInsertRatio(
            samples_per_insert=config.samples_per_insert, min_size_to_sample=config.min_size_to_sample,
            error_buffer=config.error_buffer)
        # Priority exponent 1: P(window) = weight / sum of weights.
        online_sampler = (reverb.selectors.Prioritized(1.0) if config.online_sampler == "weight"
                          else reverb.selectors.Uniform())
        tables = [
            reverb.Table(self.DEMO, sampler=reverb.selectors.Uniform(), remover=reverb.selectors.Fifo(),
                         max_size=config.demo_table_size, rate_limiter=reverb.rate_limiters.MinSize(1),
                         signature=signature),
            reverb.Table(self.ONLINE, sampler=online_sampler, remover=reverb.selectors.Fifo(),
                         max_size=config.online_table_size, rate_limiter=online_limiter,
                         signature=_signature(online_spec)),
        ]
        # Without a directory Reverb checkpoints into a fresh temp dir (nothing to restore,
        # and the dir is left behind).
        checkpointer = None if checkpoint_dir is None else reverb.checkpointers.DefaultCheckpointer(str(checkpoint_dir))
        # The server loads the latest checkpoint in checkpoint_dir, if any, before serving.
        self._server = reverb.Server(tables, port=port, checkpointer=checkpointer)
        self._client = reverb.Client(self.address)
        try:
            self._check_restored(config)
        except Exception:
            self.stop()
            raise

    def _check_restored(self, config: ReplayConfig):
        # A restored table keeps the options it was checkpointed with (sizes, rate limiter,
        # signature) whatever we passed in, so refuse a checkpoint that disagrees with config.
        infos = self._client.server_info()
        offset = config.samples_per_insert * config.min_size_to_sample
        expected = {
            (self.DEMO, "demo_table_size"): (infos[self.DEMO].max_size, config.demo_table_size),
            (self.ONLINE, "online_table_size"): (infos[self.ONLINE].max_size, config.online_table_size),
            (self.ONLINE, "samples_per_insert"): (infos[self.ONLINE].rate_limiter_info.samples_per_insert,
                                                  config.samples_per_insert),
            (self.ONLINE, "min_size_to_sample"): (infos[self.ONLINE].rate_limiter_info.min_size_to_sample,
                                                  config.min_size_to_sample),
            (self.ONLINE, "error_buffer"): (infos[self.ONLINE].rate_limiter_info.max_diff - offset,
                                            config.error_buffer),
        }
        sampler = infos[self.ONLINE].sampler_options.WhichOneof("distribution")
        want_sampler = "prioritized" if config.online_sampler == "weight" else "uniform"
        if sampler != want_sampler:
            raise ConfigError("online_sampler", f"the checkpoint in the replay checkpoint_dir samples its online table "
                              f"{sampler}, but the config asks for {config.online_sampler!r}; use a matching config "
                              "or a new checkpoint_dir")
        for (table, field), (got, want) in expected.items():
            if not np.isclose(got, want):
                raise ConfigError(field, f"the checkpoint in the replay checkpoint_dir has {got} for table "
                                  f"{table!r} but the config asks for {want}; use a matching config or a new checkpoint_dir")
        for table in (self.DEMO, self.ONLINE):
            got = _spec_of(infos[table].signature)
            if got != self._specs[table]:
                raise ValueError(f"window spec: the checkpointed table {table!r} holds {got}, "
                                 f"expected {self._specs[table]}")

    @property
    def address(self) -> str:
        return f"localhost:{self._server.port}"

    def get_address(self) -> str:
        """`address` as a method, for Ray actor handles (they expose only methods)."""
        return self.address

    def checkpoint(self) -> str:
        """Writes all tables (data, items, rate limiter counts) to a new subdirectory of
        checkpoint_dir, which Reverb then keeps as its only checkpoint; returns its path."""
        return self._client.checkpoint()

    def info(self) -> dict:
        return _tables_info(self._client)

    def stop(self):
        self._server.stop()


class ReplayClient:
    """Writes episodes into, and samples windows from, a `ReplayServer` at `address`.

    One client per thread for writing: `add_episode` uses a single TrajectoryWriter.
    """

    def __init__(self, address: str, window: int, n_obs_steps: int):
        if not 1 <= n_obs_steps <= window:
            raise ValueError(f"n_obs_steps: expected 1 <= n_obs_steps <= window ({window}), got {n_obs_steps}")
        self.address, self.window, self.n_obs_steps = address, window, n_obs_steps
        self._client = reverb.Client(address)
        self._specs = {name: _spec_of(t.signature) for name, t in self._client.server_info().items()}
        for name, spec in self._specs.items():
            if "chain" in spec:  # a decision, not a window
                if spec["obs"][0][0] != n_obs_steps:
                    raise ValueError(f"n_obs_steps: the server's {name!r} table holds decisions planned from "
                                     f"{spec['obs'][0][0]} observations, not {n_obs_steps}")
            elif spec["obs"][0][0] != window:
                raise ValueError(f"window: the server's {name!r} table holds windows of "
                                 f"{spec['obs'][0][0]} steps, not {window}")
        # Sequence windows (a `mask` field), decisions in the online table (`chain`), or diffusion windows.
        self.layout = ("sequence" if any("mask" in spec for spec in self._specs.values())
                       else "chain" if any("chain" in spec for spec in self._specs.values()) else "diffusion")
        self._writers: dict = {}  # created on first use: windows (both tables of a layout) and decisions

    def add_episode(self, table: str, obs, action, weight: float, success: bool, version: int, task,
                    trial_index=0, action_weight=None) -> int:
        """Adds the windows of one episode; returns the number of windows (diffusion: = steps T).

        obs: (T+1, D) or (T, D), row t observed before action row t (only the first T rows
        are used); action: (T, A); task: (task_dim,); trial_index: per step (T,) or (T+1,),
        or one int; action_weight (sequence layout only): each action's loss weight (T,)
        (default 1), e.g. the success of its trial. Blocks while the online table's rate
        limiter holds inserts back.
        """
        spec = self._spec(table)
        if "chain" in spec:
            raise ValueError(f"table: {table!r} holds decisions (chain layout); write them with add_decisions")
        action = np.asarray(action, np.float32)
        obs = np.asarray(obs, np.float32)
        T = len(action)
        task = np.asarray(task, np.float32)
        if action.ndim != 2 or action.shape[1] != spec["action"][0][-1]:
            raise ValueError(f"action: expected shape (T, {spec['action'][0][-1]}), got {action.shape}")
        if obs.ndim != 2 or obs.shape[1] != spec["obs"][0][1] or len(obs) not in (T, T + 1):
            raise ValueError(f"obs: expected shape ({T} or {T + 1}, {spec['obs'][0][1]}), got {obs.shape}")
        if task.shape != spec["task"][0]:
            raise ValueError(f"task: expected shape {spec['task'][0]}, got {task.shape}")
        trial = np.asarray(trial_index, np.int32)
        if trial.ndim == 0:
            trial = np.full(T, trial, np.int32)
        if trial.ndim != 1 or len(trial) not in (T, T + 1):
            raise ValueError(f"trial_index: expected an int or shape ({T},) or ({T + 1},), got {trial.shape}")
        if T == 0:
            return 0
        if self.layout == "sequence":
            action_weight = np.ones(T, np.float32) if action_weight is None else np.asarray(action_weight, np.float32)
            if action_weight.shape != (T,):
                raise ValueError(f"action_weight: expected shape ({T},), got {action_weight.shape}")
            return self._add_sequence(table, spec, obs, action, trial, action_weight,
                                      {"weight": np.float32(weight), "success": np.float32(success),
                                       "version": np.int64(version), "task": task})
        if action_weight is not None:
            raise ValueError("action_weight: only the sequence layout has per-action weights (a diffusion "
                             "window's weight is `weight`)")
        if table == ReplayServer.DEMO:
            self._check_demo_room(T)

        W, pad = self.window, self.n_obs_steps - 1
        # Padded step i holds real step idx[i]; the window of real step t starts at padded step t.
        idx = np.clip(np.arange(T - 1 + W) - pad, 0, T - 1)
        # Straight to Reverb's C++ writer: the Python wrapper's per-step structure flattening and
        # history bookkeeping cost more than the writes (an actor pays this for every env step).
        # Columns in the signature's flattened (sorted-key) order; the per-episode constants are
        # written once, with the first step, and every window references that one cell.
        columns = sorted(spec)
        per_step = {"obs": obs, "action": action, "trial": trial}
        constants = {"weight": np.float32(weight), "success": np.float32(success),
                     "version": np.int64(version), "task": task}
        steps = {k: [] for k in per_step}
        squeeze = [k not in ("obs", "action") for k in columns]
        # Every window of the episode carries its weight: a prioritised table samples by it (a
        # uniform one ignores priorities).
        priority = max(float(weight), 0.0)
        writer = self._get_writer()._writer  # the C++ writer (the wrapper owns and closes it)
        try:
            for i, t in enumerate(idx):
                refs = writer.Append([per_step[k][t] if k in per_step else constants[k] if i == 0 else None
                                      for k in columns])
                if i == 0:
                    const_refs = {k: refs[c] for c, k in enumerate(columns) if k in constants}
                for c, k in enumerate(columns):
                    if k in per_step:
                        steps[k].append(refs[c])
                if i >= W - 1:
                    # Scalars come from the window's real step, which is `pad` steps into it.
                    item = [steps[k][-W:] if k in ("obs", "action") else [steps[k][pad - W]] if k in per_step
                            else [const_refs[k]] for k in columns]
                    writer.CreateItem(table, priority, item, squeeze)
                    if (i - W + 2) % _FLUSH_EVERY == 0:
                        # Keep the items in flight bounded (Reverb warns, and buffers, past ~50),
                        # rather than sending a whole episode's windows before one final flush.
                        writer.Flush(_FLUSH_EVERY // 2, -1)
            writer.EndEpisode(True, None)  # flushes: returns once the server holds every item
        except BaseException:
            self._close_writer("windows")  # its buffers are mid-episode; start the next episode afresh
            raise
        return T

    def add_decisions(self, table: str, obs, chain, logp, advantage, success: bool, version: int, task) -> int:
        """Adds one episode's decisions (chain layout); returns their number.

        obs: (N, n_obs_steps, D) histories the chunks were planned from; chain: (N, S + 1,
        horizon, A); logp: (N, S); advantage: one per episode or (N,); task: (task_dim,).
        """
        spec = self._spec(table)
        if "chain" not in spec:
            raise ValueError(f"table: {table!r} holds windows; decisions need the chain layout's online table")
        obs, chain, logp = (np.asarray(x, np.float32) for x in (obs, chain, logp))
        n = len(chain)
        advantage = np.broadcast_to(np.asarray(advantage, np.float32), (n,))
        rows = {"obs": obs, "chain": chain, "logp": logp}
        for k, x in rows.items():
            if x.shape != (n, *spec[k][0]):
                raise ValueError(f"{k}: expected shape ({n}, {', '.join(map(str, spec[k][0]))}), got {x.shape}")
        task = np.asarray(task, np.float32)
        if task.shape != spec["task"][0]:
            raise ValueError(f"task: expected shape {spec['task'][0]}, got {task.shape}")
        if n == 0:
            return 0
        constants = {"success": np.float32(success), "version": np.int64(version), "task": task}
        columns = sorted(spec)
        writer = self._get_writer("decisions")._writer
        try:
            for i in range(n):
                values = {**constants, "advantage": advantage[i], **{k: x[i] for k, x in rows.items()}}
                refs = writer.Append([values[k] for k in columns])
                writer.CreateItem(table, 1.0, [[r] for r in refs], [True] * len(columns))
            writer.EndEpisode(True, None)
        except BaseException:
            self._close_writer("decisions")
            raise
        return n

    def _add_sequence(self, table: str, spec: dict, obs, action, trial, action_weight, constants: dict) -> int:
        """The sequence windows of one episode (see the module docstring); returns their number."""
        W, T = self.window, len(action)
        chunk = spec["action"][0][1]
        rows = sequence_steps(obs, action, trial, action_weight, chunk)
        # Real steps, then (an episode shorter than the window) padding up to the window.
        idx = np.concatenate([np.arange(T), np.full(max(W - T, 0), T)])
        ends = [T - 1] if T <= W else list(range(W - 1, T))
        if table == ReplayServer.DEMO:
            self._check_demo_room(len(ends))
        columns = sorted(spec)
        per_step = [k for k in columns if k in rows]
        squeeze = [k in constants or k == "trial" for k in columns]
        steps = {k: [] for k in per_step}
        writer = self._get_writer()._writer
        created = 0
        try:
            for i, t in enumerate(idx):
                refs = writer.Append([rows[k][t] if k in rows else constants[k] if i == 0 else None for k in columns])
                if i == 0:
                    const_refs = {k: refs[c] for c, k in enumerate(columns) if k in constants}
                for c, k in enumerate(columns):
                    if k in rows:
                        steps[k].append(refs[c])
                end = min(i, T - 1)  # the last real step of the window that ends at appended step i
                if i >= W - 1 and (T > W or i == len(idx) - 1):
                    item = [[steps[k][end]] if k == "trial" else steps[k][-W:] if k in rows else [const_refs[k]]
                            for k in columns]
                    # Priority: the window's share of weighted chunk entries (its loss mass),
                    # for a table that samples by weight.
                    lo = max(end - W + 1, 0)
                    entries = rows["action_mask"][lo:end + 1]
                    priority = max(float(constants["weight"]), 0.0) * float(
                        rows["action_weight"][lo:end + 1].sum() / max(entries.sum(), 1))
                    writer.CreateItem(table, priority, item, squeeze)
                    created += 1
                    if created % _FLUSH_EVERY == 0:
                        writer.Flush(_FLUSH_EVERY // 2, -1)
            writer.EndEpisode(True, None)
        except BaseException:
            self._close_writer("windows")
            raise
        assert created == len(ends)
        return created

    def sample(self, table: str, batch_size: int, timeout_ms: int | None = None) -> dict[str, np.ndarray]:
        """One batch, blocking until the table's rate limiter allows it; with `timeout_ms`,
        raises TimeoutError if a sample waits longer than that."""
        ds = self._windows(table, batch_size, timeout_ms, max_samples=batch_size, workers=1)
        for batch in ds.batch(batch_size, drop_remainder=True).as_numpy_iterator():
            return batch
        raise TimeoutError(f"replay table {table!r}: no {batch_size} samples within {timeout_ms} ms")

    def dataset(self, table: str, batch_size: int, prefetch: int = 2,
                timeout_ms: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Endless batches (the learner's path). Sampling, batching and prefetching run in
        tf.data's C++ threads; with `timeout_ms`, the iterator ends when a sample waits longer."""
        ds = self._windows(table, batch_size, timeout_ms).batch(batch_size, drop_remainder=True)
        return ds.prefetch(prefetch).as_numpy_iterator()

    def mixed_batches(self, batch_size: int, demo_fraction: float, prefetch: int = 2,
                      timeout_ms: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Endless batches of round(batch_size * demo_fraction) demo windows followed by
        online windows, with a bool `is_demo` (batch_size,) key."""
        if not 0.0 <= demo_fraction <= 1.0:
            raise ValueError(f"demo_fraction: expected a value in [0, 1], got {demo_fraction}")
        n_demo = round(batch_size * demo_fraction)
        parts = []
        for table, n, is_demo in ((ReplayServer.DEMO, n_demo, True), (ReplayServer.ONLINE, batch_size - n_demo, False)):
            if n > 0:
                part = self._windows(table, n, timeout_ms, workers=1).batch(n, drop_remainder=True)
                parts.append(part.map(lambda b, n=n, is_demo=is_demo: {**b, "is_demo": tf.fill([n], is_demo)}))
        if len(parts) == 2:
            ds = tf.data.Dataset.zip(tuple(parts)).map(
                lambda d, o: {k: tf.concat([d[k], o[k]], axis=0) for k in d})
        else:
            ds = parts[0]
        return ds.prefetch(prefetch).with_options(_feed_options()).as_numpy_iterator()

    def chain_batches(self, batch_size: int, demo_fraction: float, prefetch: int = 2,
                      timeout_ms: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Endless batches (chain layout) of round(batch_size * demo_fraction) demo windows under
        their own keys and the rest decisions under `CHAIN_PREFIX` keys (`ppo/obs`, `ppo/chain`, ...)."""
        if self.layout != "chain":
            raise ValueError(f"layout: chain batches need the chain layout, the server holds {self.layout}")
        if not 0.0 <= demo_fraction < 1.0:
            raise ValueError(f"demo_fraction: expected a value in [0, 1), got {demo_fraction}")
        n_demo = round(batch_size * demo_fraction)
        n_online = batch_size - n_demo
        online = self._windows(ReplayServer.ONLINE, n_online, timeout_ms, workers=1).batch(n_online, drop_remainder=True)
        online = online.map(lambda b: {CHAIN_PREFIX + k: v for k, v in b.items()})
        if n_demo:
            demo = self._windows(ReplayServer.DEMO, n_demo, timeout_ms, workers=1).batch(n_demo, drop_remainder=True)
            ds = tf.data.Dataset.zip((demo, online)).map(lambda d, o: {**d, **o})
        else:
            ds = online
        return ds.prefetch(prefetch).with_options(_feed_options()).as_numpy_iterator()

    def info(self) -> dict:
        return _tables_info(self._client)

    def checkpoint(self) -> str:
        return self._client.checkpoint()

    def close(self):
        self._close_writer()

    def _spec(self, table: str) -> dict:
        if table not in self._specs:
            raise ValueError(f"table: expected one of {sorted(self._specs)}, got {table!r}")
        return self._specs[table]

    def _check_demo_room(self, n: int):
        # Reverb would silently FIFO-evict demos; check first (fine with one demo loader at a time).
        t = self._client.server_info()[ReplayServer.DEMO]
        if t.current_size + n > t.max_size:
            raise ReplayFullError(f"demo table holds {t.current_size} of {t.max_size} windows; adding {n} "
                                  f"more would evict demos (raise demo_table_size)")

    def _windows(self, table: str, in_flight: int, timeout_ms: int | None, max_samples: int = -1,
                 workers: int = -1) -> tf.data.Dataset:
        self._spec(table)
        ds = reverb.TrajectoryDataset.from_table_signature(
            self.address, table,
            # ~2 batches in flight per worker: enough to hide latency, small enough to keep
            # sampling close to uniform over the current table.
            max_in_flight_samples_per_worker=2 * in_flight,
            num_workers_per_iterator=workers,
            rate_limiter_timeout_ms=-1 if timeout_ms is None else timeout_ms,
            max_samples=max_samples)
        return ds.map(lambda s: s.data)  # drop Reverb's per-sample info (key, probability, ...)

    def _get_writer(self, kind: str = "windows"):
        # A writer's columns are fixed by its first append, so windows and decisions (two
        # signatures) each have their own.
        if kind not in self._writers:
            # A window spans W steps, so the writer keeps references to the last W steps.
            self._writers[kind] = self._client.trajectory_writer(num_keep_alive_refs=self.window)
        return self._writers[kind]

    def _close_writer(self, kind: str | None = None):
        for k in [kind] if kind else list(self._writers):
            writer = self._writers.pop(k, None)
            if writer is not None:
                writer.close()
