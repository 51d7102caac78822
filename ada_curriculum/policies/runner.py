"""Closed-loop acting: a batch of environments driven by one policy, chunk by chunk.

`PolicyRunner` keeps per-environment observation history and a queue of planned actions.
When an environment's queue runs dry it is replanned; the batch passed to the (jitted)
policy always has the full, fixed size, so nothing recompiles as episodes end at different
times. Diffusion policies see the last `n_obs_steps` observations; sequence policies see as
much of the episode as fits in `max_len`, earlier trials included.

When a trial ends (the observation's `trial_index` changes) the actions still queued from the
old trial are dropped and the env replans from the new trial's first observation: the scene
has been reset, so the rest of a chunk planned for the old one is meaningless there.

`memory="trial"` clears an env's history at each new trial, so a sequence policy sees the new
trial's index but none of the earlier attempts (nor the last one's reward, which the new trial's
first observation carries): the ablation that tells learning from the context apart from
conditioning on the trial index (`eval --memory trial`).

`trial_sampling` gives each trial index its own sampling arguments (the last entry serves every
later trial), e.g. a diffusion policy sampled more degraded in early trials than in late ones
(meta-learning data, see `degradation_schedule`). Rows that replan at once but sit in trials
with different sampling are predicted in one full-size call per distinct setting.

`chains=True` (a diffusion policy, one candidate) plans through `sample_chain` and keeps, per
env, the decision behind its current chunk (the observation history, the denoising chain and
its per-step log-likelihoods) until `take_decision` collects it: what a policy gradient through
the denoising steps (DPPO) trains on.

`act` replans each env the moment its queue runs dry, so envs whose episodes (or trials) end at
different times each cost a full-batch policy call. `act_aligned` shares chunk boundaries
instead: an env whose queue is empty while another active env still has queued actions is held
(the caller does not step it) until every active env's queue is empty, and one call then plans
them all. Holding costs no CPU (a held env is not stepped) and each env still executes whole
chunks open loop from its own observations, so the policy's behaviour per env is unchanged.
"""

from __future__ import annotations

import functools
from collections import deque
from typing import Sequence

import jax
import numpy as np

from ada_curriculum.policies.obs import flatten_obs


# What an env's context keeps when a new trial starts: the whole episode, or the new trial only.
MEMORY = ("episode", "trial")


def degradation_schedule(start: float, end: float, trials: int) -> list[float]:
    """Degradation level of each of `trials` trials: linear from `start` (trial 1) to `end`
    (trial k); one trial gets `start`. Levels as `DiffusionPolicy.degradation_params` reads them
    (0 full quality, 1 the fewest DDIM steps and the hottest noise)."""
    if trials < 1:
        raise ValueError(f"trials: must be >= 1, got {trials}")
    for name, v in (("start", start), ("end", end)):
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"degradation {name}: must be in [0, 1], got {v}")
    if trials == 1:
        return [float(start)]
    return [float(start + (end - start) * i / (trials - 1)) for i in range(trials)]


def degraded_sampling(policy, levels: Sequence[float]) -> list[dict]:
    """Per-trial sampling arguments (`num_inference_steps`, `temperature`) for a diffusion
    policy at the given degradation levels, for `PolicyRunner(trial_sampling=...)`."""
    if policy.kind != "diffusion":
        raise ValueError(f"policy: degraded sampling needs a diffusion policy, got {policy.kind!r}")
    out = []
    for level in levels:
        steps, temperature = policy.degradation_params(level)
        out.append({"num_inference_steps": int(steps), "temperature": float(temperature)})
    return out


@functools.lru_cache(maxsize=64)
def _jitted_predict(policy, sampling: tuple):
    """One jitted `predict_action` per (policy, sampling), shared by every runner in the process,
    so a new runner (another evaluation seed, a new rollout) reuses the compiled executables."""
    kwargs = dict(sampling)
    return jax.jit(lambda v, b, r: policy.predict_action(v, b, r, **kwargs))


@functools.lru_cache(maxsize=64)
def _jitted_chain(policy, sampling: tuple):
    steps = dict(sampling).get("num_inference_steps")
    return jax.jit(lambda v, b, r: policy.sample_chain(v, b, r, num_inference_steps=steps))


def _predict_fn(policy, sampling: tuple):
    try:
        return _jitted_predict(policy, sampling)
    except TypeError:  # an unhashable sampling value (e.g. an array): a runner-private jit
        kwargs = dict(sampling)
        return jax.jit(lambda v, b, r: policy.predict_action(v, b, r, **kwargs))


class PolicyRunner:
    def __init__(self, policy, variables, num_envs: int, seed: int = 0,
                 trial_sampling: Sequence[dict] | None = None, memory: str = "episode", chains: bool = False,
                 **sampling):
        if memory not in MEMORY:
            raise ValueError(f"memory: expected one of {', '.join(MEMORY)}, got {memory!r}")
        if chains and (policy.kind != "diffusion" or trial_sampling):
            raise ValueError("chains: recording denoising chains needs a diffusion policy and one sampling setting")
        self.chains = chains
        self._decisions: dict[int, dict] = {}
        self.policy, self.num_envs, self.memory = policy, num_envs, memory
        self.variables = variables
        self._rng = jax.random.PRNGKey(seed)
        self._seq = policy.kind == "transformer"
        self._history = int(policy.config.max_len) if self._seq else int(policy.n_obs_steps)
        self._trial_sampling_arg = trial_sampling
        self.set_sampling(**sampling)
        self.policy_calls = 0  # full-batch predictions made (each costs the same, however many rows use it)
        self.reset()

    def set_sampling(self, **sampling):
        """New sampling arguments (e.g. `num_candidates`), effective at each env's next replan;
        histories and queued actions are kept."""
        self.sampling = dict(sampling)
        trial_sampling, policy = self._trial_sampling_arg, self.policy
        # One sampling setting per trial index (the last one for every later trial), each with
        # its own jitted predict (a DDIM step count is static, so each one compiles once).
        self.trial_sampling = [dict(sampling, **s) for s in trial_sampling] if trial_sampling else [dict(sampling)]
        keys = [tuple(sorted(s.items())) for s in self.trial_sampling]
        self._setting = [keys.index(key) for key in keys]  # trial -> first equal setting
        if self.chains:
            unknown = set(sampling) - {"num_inference_steps", "num_candidates"}
            if unknown or sampling.get("num_candidates", 1) != 1:
                raise ValueError(f"sampling: a chain is recorded for one plain sample per replan (DDIM steps "
                                 f"only), got {sampling}")
            self._predicts = {0: _jitted_chain(policy, keys[0])}
        else:
            self._predicts = {i: _predict_fn(policy, keys[i]) for i in sorted(set(self._setting))}
        self._predict = self._predicts[0]  # the first trial's (the only one without trial_sampling)

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
            # Held: not stepped since its observation was taken in, so the next one is the same.
            self._held = [False] * n
            self._decisions = {}
            return
        for history in (self._obs[i], self._prev[i], self._trial[i], self._queue[i]):
            history.clear()
        self._decisions.pop(i, None)
        self._last_action[i] = np.zeros(self.policy.action_dim, np.float32)
        self._held[i] = False

    def sampling_for_trial(self, trial: int) -> dict:
        """The sampling arguments used in trial `trial` (0-based)."""
        return self.trial_sampling[self._setting[min(int(trial), len(self._setting) - 1)]]

    def act(self, observations: list[dict], active: list[bool] | None = None) -> np.ndarray:
        """Actions (num_envs, action_dim) for one step of every env (inactive envs get zeros);
        an env is replanned as soon as its queue runs dry."""
        return self._act(observations, active, align=False, max_steps=None)[0]

    def act_aligned(self, observations: list[dict], active: list[bool] | None = None,
                    max_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(actions (num_envs, action_dim), stepped (num_envs,) bool) with chunk boundaries shared
        by every active env: the caller steps exactly the `stepped` envs. A held env (active, not
        stepped) must be passed the same observation next call. At most `max_steps` envs are
        stepped (the rest are held, keeping their queued action), e.g. to end on a step budget."""
        return self._act(observations, active, align=True, max_steps=max_steps)

    def observed(self, j: int) -> tuple[np.ndarray, int]:
        """Env `j`'s latest observation as the policy sees it (flattened) and its trial index."""
        return self._obs[j][-1], self._trial[j][-1]

    def _act(self, observations, active, align: bool, max_steps: int | None):
        n = self.num_envs
        active = [True] * n if active is None else list(active)
        for j, obs in enumerate(observations):
            if not active[j] or self._held[j]:
                continue
            trial = int(np.asarray(obs.get("trial_index", 0)))
            if self._trial[j] and self._trial[j][-1] != trial:
                self._queue[j].clear()  # a new trial: the old trial's plan no longer applies
                if self.memory == "trial":
                    for history in (self._obs[j], self._prev[j], self._trial[j]):
                        history.clear()
                    self._last_action[j] = np.zeros(self.policy.action_dim, np.float32)
                    # As at an episode's start: no reward seen yet (not the last trial's outcome).
                    if "trial_reward" in obs:
                        obs = {**obs, "trial_reward": np.zeros_like(obs["trial_reward"])}
            self._obs[j].append(flatten_obs(obs, self.policy.obs_frame))
            self._prev[j].append(self._last_action[j])
            self._trial[j].append(trial)
        need = [j for j in range(n) if active[j] and not self._queue[j]]
        hold = set()
        if align and len(need) < sum(active):
            hold, need = set(need), []  # others still have queued actions: wait for them
        if need:
            groups: dict[int, list[int]] = {}
            for j in need:
                groups.setdefault(self._setting[min(self._trial[j][-1], len(self._setting) - 1)], []).append(j)
            batch = self._batch()
            for setting, rows in sorted(groups.items()):
                self._rng, key = jax.random.split(self._rng)
                out = self._predicts[setting](self.variables, batch, key)
                chunk = np.asarray(out[0] if self.chains else out)
                self.policy_calls += 1
                if self.chains:
                    chain, logp = np.asarray(out[1]), np.asarray(out[2])
                    for j in rows:
                        self._decisions[j] = {"obs": batch["obs"][j], "chain": chain[j], "logp": logp[j]}
                for j in rows:
                    self._queue[j].extend(chunk[j])
        stepped = np.array([active[j] and j not in hold for j in range(n)], bool)
        if max_steps is not None:
            stepped[np.flatnonzero(stepped)[max(int(max_steps), 0):]] = False
        actions = np.zeros((n, self.policy.action_dim), np.float32)
        for j in range(n):
            if stepped[j]:
                actions[j] = self._queue[j].popleft()
                self._last_action[j] = actions[j]
            if active[j]:
                self._held[j] = not stepped[j]
        return actions, stepped

    def take_decision(self, j: int) -> dict | None:
        """Env `j`'s decision planned since the last call (`chains=True`), or None: a dict of the
        observation history (n_obs_steps, D), the chain (S + 1, horizon, A) and its log-likelihoods (S,)."""
        return self._decisions.pop(j, None)

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
