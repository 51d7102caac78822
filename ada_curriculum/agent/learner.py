"""The learner: mixed demo/online batches from replay -> `train_step` -> published weights.

It owns the train state and writes the Orbax checkpoints (the coordinator says when, and
what non-array state goes into the checkpoint's meta). The acting weights it publishes are the
EMA weights, tagged with the number of updates that produced them (the version).
"""

from __future__ import annotations

import functools
import queue
import threading
import time

import jax
import numpy as np

from ada_curriculum.checkpointing import Checkpointer
from ada_curriculum.learning import TrainState, make_train_step


class Learner:
    def __init__(self, policy, objective, optimizer, optim_cfg, state: TrainState, batches, variable_source,
                 checkpoint_dir: str | None = None, publish_every: int = 10, stall_timeout: float = 60.0):
        self.policy = policy
        self.variable_source = variable_source
        self.publish_every = publish_every
        self.stall_timeout = stall_timeout
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        threading.Thread(target=self._fill, args=(batches,), name="replay-batches", daemon=True).start()
        self._checkpointer = Checkpointer(checkpoint_dir) if checkpoint_dir else None

        # The objective wraps the policy's own loss with the RL weighting of each window.
        loss = functools.partial(objective, policy)
        self._step = jax.jit(make_train_step(loss, optimizer, optim_cfg), donate_argnums=0)
        # The step donates the state's buffers. A state that came through Ray can be zero-copy
        # views of the object store's read-only memory (CPU device_put aliases aligned numpy
        # arrays); donating those crashes the process, so train on copies this process owns.
        self.state = jax.tree_util.tree_map(lambda x: jax.numpy.array(x, copy=True), state)
        self.updates = int(state.step)
        self.stalls = 0
        self._publish()

    def _publish(self):
        from ada_curriculum.agent import remote

        variables = jax.device_get(self.state.ema_variables)
        remote.call(self.variable_source, "publish", variables, self.updates)

    def version(self) -> int:
        return self.updates

    def step(self, num_updates: int) -> dict:
        """Run up to `num_updates` updates; returns averaged metrics and timing."""
        totals: dict[str, float] = {}
        done = 0
        t0 = time.perf_counter()
        wait = 0.0
        for _ in range(num_updates):
            t_wait = time.perf_counter()
            batch = self._next_batch()
            wait += time.perf_counter() - t_wait
            if batch is None:
                self.stalls += 1
                break
            self.state, metrics = self._step(self.state, batch)
            self.updates += 1
            done += 1
            if self.updates % self.publish_every == 0:
                self._publish()
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v
        out = {k: float(v) / max(done, 1) for k, v in jax.device_get(totals).items()}
        seconds = time.perf_counter() - t0
        out.update(updates=self.updates, updates_done=done, learner_seconds=seconds, sample_wait_seconds=wait,
                   stalls=self.stalls, clip_count=int(self.state.clip_count), skip_count=int(self.state.skip_count))
        return out

    def _next_batch(self):
        """The next replay batch, or None when replay gives nothing within the stall timeout."""
        try:
            batch = self._queue.get(timeout=self.stall_timeout)
        except queue.Empty:
            return None
        if isinstance(batch, BaseException):
            raise RuntimeError(f"replay batches failed: {batch!r}") from batch
        return batch

    def _fill(self, batches):
        # Sampling blocks while the replay rate limiter holds the learner back; a thread keeps
        # that wait off the update loop and lets the loop notice a stall instead of hanging.
        try:
            for batch in batches:
                self._queue.put({k: np.asarray(v) for k, v in batch.items()})
        except BaseException as e:  # noqa: BLE001 - handed to the update loop
            self._queue.put(e)

    def save(self, step: int, meta: dict) -> bool:
        self._publish()
        return self._checkpointer.save(step, self.state, meta) if self._checkpointer else False

    def close(self):
        if self._checkpointer is not None:
            self._checkpointer.close()
