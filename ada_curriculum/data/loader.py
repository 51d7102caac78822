"""Background batch prefetching, so sampling and host-to-device copies overlap the update."""

from __future__ import annotations

import queue
import threading

import jax
import numpy as np


class Prefetcher:
    """Iterates device-resident batches from `sampler.sample(rng, batch_size)` on a thread."""

    def __init__(self, sampler, batch_size: int, seed: int, depth: int = 2):
        self._sampler, self._batch_size = sampler, batch_size
        self._rng = np.random.default_rng(seed)
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                batch = jax.device_put(self._sampler.sample(self._rng, self._batch_size))
                while not self._stop.is_set():
                    try:
                        self._queue.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # surfaced to the consumer on its next call
            self._error = e
            self._queue.put(None)

    def __iter__(self):
        return self

    def __next__(self):
        batch = self._queue.get()
        if batch is None:
            raise RuntimeError(f"batch prefetch failed: {self._error!r}") from self._error
        return batch

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
