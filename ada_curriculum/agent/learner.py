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
                 checkpoint_dir: str | None = None, publish_every: int = 10, stall_timeout: float = 60.0,
                 generation=None, teacher_variables=None, updates: int | None = None):
        self.variable_source = variable_source
        self.publish_every = publish_every
        self.stall_timeout = stall_timeout
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        threading.Thread(target=self._fill, args=(batches,), name="replay-batches", daemon=True).start()
        self._checkpointer = Checkpointer(checkpoint_dir) if checkpoint_dir else None
        self._base_objective, self._optimizer, self._optim_cfg = objective, optimizer, optim_cfg
        # The run's update count (the published version). Not `state.step`: a distillation
        # student's state starts at step 0 when the run is hundreds of updates in.
        self.updates = int(state.step) if updates is None else int(updates)
        self.stalls = 0
        self._train(policy, state, generation, teacher_variables)
        if self.generation is not None and self.generation.acting == "teacher":
            self._publish_teacher()
        self._publish()

    # -- what is trained, with which objective -------------------------------------------------
    def _train(self, policy, state, generation, teacher_variables):
        """Train `policy` from `state` in `generation` (a `distill.Generation`, or None)."""
        self.policy, self.generation = policy, generation
        # The step donates the state's buffers. A state that came through Ray can be zero-copy
        # views of the object store's read-only memory (CPU device_put aliases aligned numpy
        # arrays); donating those crashes the process, so train on copies this process owns.
        self.state = jax.tree_util.tree_map(lambda x: jax.numpy.array(x, copy=True), state)
        # On the device once: it enters every kickstarting update's batch.
        self.teacher = None if teacher_variables is None else jax.device_put(teacher_variables)
        self._kickstarting = None
        self._compile()

    def _compile(self):
        """The jitted step for the current objective: the base one, or kickstarting while the
        teacher is in the loss. Called at a switch and once when the weight has annealed to 0,
        so a student past its kickstart runs the plain step."""
        g = self.generation
        kickstarting = g is not None and self.teacher is not None and g.kickstarting(self.updates)
        if kickstarting == self._kickstarting:
            return
        if self._kickstarting:
            self.teacher = None  # out of the loss for good (it was published for acting at the switch)
        objective = self._base_objective
        if kickstarting:
            from ada_curriculum.distill import Kickstarting

            objective = Kickstarting(objective, g.teacher_policy, g.cfg.target, g.cfg.denoise_steps)
        optim_cfg = self._optim_cfg
        if g is not None and g.index > 0:
            optim_cfg = optim_cfg.from_scratch()  # a student starts untrained
        # The objective wraps the policy's own loss with the RL weighting of each window.
        loss = functools.partial(objective, self.policy)
        self._step = jax.jit(make_train_step(loss, self._optimizer, optim_cfg), donate_argnums=0)
        self._kickstarting = kickstarting

    def _inputs(self, batch):
        """The batch plus the kickstarting weight at this update and the teacher's variables."""
        if not self._kickstarting:
            return batch
        from ada_curriculum.distill import with_teacher

        return with_teacher(batch, self.teacher, self.generation.weight(self.updates))

    def start_generation(self, generation, seed: int = 0) -> dict:
        """Distillation switch: snapshot the current weights (EMA, what the actors act with) as
        the teacher at `generation.teacher_path`, and train `generation.policy` from fresh
        variables that share the teacher's normaliser, with the kickstarting objective."""
        from ada_curriculum.distill import init_student, save_teacher
        from ada_curriculum.learning import create_train_state

        teacher = jax.device_get(self.state.ema_variables)
        save_teacher(generation.teacher_path, teacher,
                     {"preset": generation.teacher_policy.config.preset, "generation": generation.index - 1,
                      "updates": self.updates})
        rng_init, rng_state = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), generation.index))
        state = create_train_state(init_student(generation.policy, teacher, rng_init), self._optimizer, rng_state)
        self._train(generation.policy, state, generation, teacher)
        self._publish_teacher()
        self._publish()
        return {"updates": self.updates, "teacher_path": generation.teacher_path}

    def set_acting(self, acting: str) -> None:
        """Distillation handover ("student"): the actors get the student's weights from now on."""
        import dataclasses

        self.generation = dataclasses.replace(self.generation, acting=acting)
        self._publish()

    def _publish_teacher(self):
        from ada_curriculum.agent import remote

        g = self.generation
        remote.call(self.variable_source, "publish", self.teacher, g.switch_updates, g.teacher_policy, g.index - 1,
                    ("acting",))

    def _publish(self):
        from ada_curriculum.agent import remote

        variables = jax.device_get(self.state.ema_variables)
        acting = self.generation is None or self.generation.acting == "student"
        remote.call(self.variable_source, "publish", variables, self.updates, self.policy,
                    0 if self.generation is None else self.generation.index,
                    ("acting", "student") if acting else ("student",))

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
            self._compile()  # the kickstart may have just ended
            self.state, metrics = self._step(self.state, self._inputs(batch))
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
        # that wait off the update loop and lets the loop notice a stall instead of hanging. The
        # host-to-device transfer happens here too, so it overlaps the running update instead of
        # delaying the next one's dispatch.
        try:
            for batch in batches:
                self._queue.put(jax.device_put({k: np.asarray(v) for k, v in batch.items()}))
        except BaseException as e:  # noqa: BLE001 - handed to the update loop
            self._queue.put(e)

    def save(self, step: int, meta: dict) -> bool:
        self._publish()
        return self._checkpointer.save(step, self.state, meta) if self._checkpointer else False

    def close(self):
        if self._checkpointer is not None:
            self._checkpointer.close()
