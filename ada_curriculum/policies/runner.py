"""Closed-loop acting: a batch of environments driven by one policy, chunk by chunk.

`PolicyRunner` keeps per-environment observation history and a queue of planned actions.
When an environment's queue runs dry it is replanned; the batch passed to the (jitted)
policy always has the full, fixed size, so nothing recompiles as episodes end at different
times. Diffusion policies see the last `n_obs_steps` observations; sequence policies see as
much of the episode as fits in `max_len`, earlier trials included.
"""

from __future__ import annotations

from collections import deque

import jax
import numpy as np

from ada_curriculum.policies.obs import flatten_obs


class PolicyRunner:
    def __init__(self, policy, variables, num_envs: int, seed: int = 0, **sampling):
        self.policy, self.num_envs = policy, num_envs
        self.variables = variables
        self._rng = jax.random.PRNGKey(seed)
        self._predict = jax.jit(lambda v, b, r: policy.predict_action(v, b, r, **sampling))
        self._seq = policy.kind == "transformer"
        self._history = int(policy.config.max_len) if self._seq else int(policy.n_obs_steps)
        self.reset()

    def set_variables(self, variables):
        """New weights (e.g. from the learner); plans already made are kept."""
        self.variables = variables

    def reset(self, i: int | None = None):
        """Forget env `i`'s episode (every env's if None)."""
        if i is None:
            n, h = self.num_envs, self._history
            self._obs = [deque(maxlen=h) for _ in range(n)]
            self._prev = [deque(maxlen=h) for _ in range(n)]
            self._trial = [deque(maxlen=h) for _ in range(n)]
            self._queue = [deque() for _ in range(n)]
            self._last_action = [np.zeros(self.policy.action_dim, np.float32) for _ in range(n)]
            return
        for history in (self._obs[i], self._prev[i], self._trial[i], self._queue[i]):
            history.clear()
        self._last_action[i] = np.zeros(self.policy.action_dim, np.float32)

    def act(self, observations: list[dict], active: list[bool] | None = None) -> np.ndarray:
        """Actions (num_envs, action_dim) for one step of every env (inactive envs get zeros)."""
        active = [True] * self.num_envs if active is None else active
        for j, obs in enumerate(observations):
            if not active[j]:
                continue
            self._obs[j].append(flatten_obs(obs))
            self._prev[j].append(self._last_action[j])
            self._trial[j].append(int(np.asarray(obs.get("trial_index", 0))))
        need = [j for j in range(self.num_envs) if active[j] and not self._queue[j]]
        if need:
            self._rng, key = jax.random.split(self._rng)
            chunk = np.asarray(self._predict(self.variables, self._batch(), key))
            for j in need:
                self._queue[j].extend(chunk[j])
        actions = np.zeros((self.num_envs, self.policy.action_dim), np.float32)
        for j in range(self.num_envs):
            if active[j]:
                actions[j] = self._queue[j].popleft()
                self._last_action[j] = actions[j]
        return actions

    def _batch(self) -> dict:
        n, d, a = self.num_envs, self.policy.obs_dim, self.policy.action_dim
        if not self._seq:
            obs = np.zeros((n, self._history, d), np.float32)
            for j in range(n):
                h = list(self._obs[j]) or [np.zeros(d, np.float32)]
                h = [h[0]] * (self._history - len(h)) + h  # pad by repeating the first
                obs[j] = np.stack(h)
            return {"obs": obs}
        # Pad the context to a power of two above the longest history, not to max_len: attention
        # cost grows with the square of it, and few distinct shapes keep recompiles rare.
        longest = max(len(h) for h in self._obs)
        L = min(self._history, 1 << max(4, (max(longest, 1) - 1).bit_length()))
        batch = {"obs": np.zeros((n, L, d), np.float32), "prev_action": np.zeros((n, L, a), np.float32),
                 "trial_index": np.zeros((n, L), np.int32), "mask": np.zeros((n, L), bool)}
        for j in range(n):
            m = len(self._obs[j])
            if m == 0:
                batch["mask"][j, 0] = True  # an idle row still needs one valid step
                continue
            batch["obs"][j, :m] = np.stack(self._obs[j])  # m <= L: L covers the longest history
            batch["prev_action"][j, :m] = np.stack(self._prev[j])
            batch["trial_index"][j, :m] = np.asarray(self._trial[j])
            batch["mask"][j, :m] = True
        return batch
