"""Training windows cut from episodes, for both batch layouts of `policies/base.py`.

Episodes are held as flat arrays (all episodes concatenated, with offsets), and a batch is
cut with a handful of vectorised numpy gathers, so sampling costs microseconds per example
and never touches Python per step. Indices past an episode's ends are clamped (repeat the
first observation / last action), as Diffusion Policy pads its windows.

Per-action loss weights (multi-trial episodes, ADA-style meta-learning data): with
`only_successful`, an action's weight is 1 if the trial it belongs to succeeded and
`failed_trial_weight` (default 0) otherwise. Failed trials are never cut out of an episode:
they stay in the transformer's context, so later (better) trials are learned *conditioned on*
the earlier, worse attempts, while the loss imitates only what worked. For a one-trial store
this is exactly "train on successful demos only".
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ada_curriculum.episode_store import action_trials, trial_results
from ada_curriculum.policies.obs import flatten_obs, with_trial_reward


@dataclasses.dataclass
class EpisodeArrays:
    """One episode in policy units: T+1 flat observations, T actions."""

    obs: np.ndarray  # (T+1, obs_dim) float32
    action: np.ndarray  # (T, action_dim) float32
    trial_index: np.ndarray  # (T+1,) int32
    weight: float = 1.0
    action_weight: np.ndarray | None = None  # (T,) float32 per-action loss weight; None: all 1

    @property
    def length(self) -> int:
        return len(self.action)


def episode_arrays(episode, weight: float = 1.0, failed_trial_weight: float | None = None,
                   frame: str = "world") -> EpisodeArrays:
    """From an `episode_store.Episode` (or anything with observations/actions/rewards).

    `failed_trial_weight` not None: per-action weights, 1 in successful trials and this value
    in failed ones (trial success read from the rewards, see `episode_store.trial_results`).
    `frame`: the policy's observation frame (`policies.obs.FRAMES`).
    """
    obs = episode.observations
    trial = obs.get("trial_index")
    n = len(episode.actions) + 1
    action_weight = None
    if failed_trial_weight is not None:
        success, _ = trial_results(trial, episode.rewards)
        trials = action_trials(trial, n - 1)
        action_weight = np.where(np.asarray(success, bool)[trials], 1.0, float(failed_trial_weight)).astype(np.float32)
    return EpisodeArrays(
        obs=flatten_obs(with_trial_reward(obs, episode.rewards), frame),
        action=np.asarray(episode.actions, np.float32),
        trial_index=np.zeros(n, np.int32) if trial is None else np.asarray(trial, np.int32).reshape(n),
        weight=weight, action_weight=action_weight,
    )


def load_store(path, only_successful: bool = False, failed_trial_weight: float = 0.0,
               frame: str = "world") -> list[EpisodeArrays]:
    """Episodes of a store. `only_successful`: per-action weights from trial success (see the
    module docstring); an episode whose every action has weight 0 is left out."""
    from ada_curriculum.episode_store import EpisodeStore

    store = EpisodeStore(path)
    episodes = []
    for ep in store:
        arrays = episode_arrays(ep, failed_trial_weight=failed_trial_weight if only_successful else None,
                                frame=frame)
        if arrays.action_weight is None or np.any(arrays.action_weight > 0):
            episodes.append(arrays)
    if not episodes:
        raise ValueError(f"demos: no usable episodes in {path}")
    return episodes


class _Flat:
    def __init__(self, episodes: Sequence[EpisodeArrays]):
        if not episodes:
            raise ValueError("episodes: empty")
        lengths = np.array([e.length for e in episodes])
        if lengths.min() < 1:
            raise ValueError("episodes: an episode has no steps")
        self.lengths = lengths
        # Step rows (actions) and observation rows (one more per episode) in flat arrays.
        self.act_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.obs_start = self.act_start + np.arange(len(episodes))
        self.obs = np.concatenate([e.obs for e in episodes]).astype(np.float32)
        self.action = np.concatenate([e.action for e in episodes]).astype(np.float32)
        self.trial = np.concatenate([e.trial_index for e in episodes]).astype(np.int32)
        self.weight = np.array([e.weight for e in episodes], np.float32)
        self.action_weight = np.concatenate([
            np.ones(e.length, np.float32) if e.action_weight is None else np.asarray(e.action_weight, np.float32)
            for e in episodes])
        if len(self.action_weight) != len(self.action):
            raise ValueError("episodes: action_weight must have one entry per action")
        # Every (episode, t) pair is one sample: t is the step whose action is predicted.
        self.sample_episode = np.repeat(np.arange(len(episodes)), lengths)
        self.sample_t = np.concatenate([np.arange(n) for n in lengths])

    def __len__(self):
        return len(self.sample_t)


class DiffusionWindows:
    """Batches `{obs (B, n_obs_steps, D), action (B, horizon, A), weight (B,)}`; the weight is
    the episode's times the per-action weight of the step whose action is executed first."""

    def __init__(self, episodes: Sequence[EpisodeArrays], n_obs_steps: int, horizon: int):
        self.flat = _Flat(episodes)
        self.n_obs_steps, self.horizon = n_obs_steps, horizon

    def __len__(self):
        return len(self.flat)

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict:
        f = self.flat
        pick = rng.integers(0, len(f), batch_size)
        ep, t = f.sample_episode[pick], f.sample_t[pick]
        length = f.lengths[ep][:, None]
        first = t[:, None] - (self.n_obs_steps - 1)
        obs_t = np.clip(first + np.arange(self.n_obs_steps), 0, length)
        act_t = np.clip(first + np.arange(self.horizon), 0, length - 1)
        return {
            "obs": f.obs[f.obs_start[ep][:, None] + obs_t],
            "action": f.action[f.act_start[ep][:, None] + act_t],
            "weight": f.weight[ep] * f.action_weight[f.act_start[ep] + t],
        }


class SequenceWindows:
    """Left-aligned windows of up to `max_len` steps ending at a uniformly drawn step, or (with
    `whole_episodes`) whole episodes drawn uniformly.

    A window keeps as much earlier context as fits, so in multi-trial episodes later trials
    see the earlier ones. The loss covers every position of a window, so with windows ending at
    a uniform step, step t of an episode of T steps is counted in proportion to T - t: early
    trials outweigh late ones. Whole episodes (every episode must fit in `max_len`) count every
    step once per draw and every episode equally, whatever its length (failed trials run to
    the time limit and would otherwise weigh more); each position still sees exactly the
    causal context it has when acting. Trial boundaries are marked by `trial_index` (the model embeds it and
    flags where it changes). A chunk never reaches across a boundary: entries in the next trial
    (after the env has reset the scene) are masked out of `action_mask`, as the runner drops
    queued actions when a trial ends. `action_weight (B, L, k)` is each chunk entry's per-action
    loss weight.
    """

    def __init__(self, episodes: Sequence[EpisodeArrays], max_len: int, n_action_steps: int,
                 whole_episodes: bool = False):
        self.flat = _Flat(episodes)
        self.max_len, self.k = max_len, n_action_steps
        self.whole_episodes = bool(whole_episodes)
        if self.whole_episodes and self.flat.lengths.max() > max_len:
            raise ValueError(f"whole_episodes: an episode of {self.flat.lengths.max()} steps does not fit in "
                             f"max_len={max_len}")

    def __len__(self):
        return len(self.flat)

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict:
        f, L, k = self.flat, self.max_len, self.k
        if self.whole_episodes:
            ep = rng.integers(0, len(f.lengths), batch_size)
            end = f.lengths[ep] - 1
        else:
            pick = rng.integers(0, len(f), batch_size)
            ep, end = f.sample_episode[pick], f.sample_t[pick]
        start = np.maximum(end - L + 1, 0)
        pos = start[:, None] + np.arange(L)  # (B, L) step index within the episode
        mask = pos <= end[:, None]
        length = f.lengths[ep][:, None]
        t = np.minimum(pos, length - 1)
        obs = f.obs[f.obs_start[ep][:, None] + t]
        trial = f.trial[f.obs_start[ep][:, None] + t]
        prev_t = np.maximum(t - 1, 0)
        prev_action = np.where((pos > 0)[..., None], f.action[f.act_start[ep][:, None] + prev_t], 0.0)
        chunk_t = pos[..., None] + np.arange(k)  # (B, L, k)
        chunk_rows = f.act_start[ep][:, None, None] + np.minimum(chunk_t, length[..., None] - 1)
        # Action row r is taken at observation r, so its trial is that observation's trial index.
        chunk_trial = f.trial[f.obs_start[ep][:, None, None] + np.minimum(chunk_t, length[..., None] - 1)]
        action_mask = (chunk_t < length[..., None]) & mask[..., None] & (chunk_trial == trial[..., None])
        chunk = f.action[chunk_rows]
        zero = ~mask
        return {
            "obs": np.where(zero[..., None], 0.0, obs).astype(np.float32),
            "prev_action": np.where(zero[..., None], 0.0, prev_action).astype(np.float32),
            "trial_index": np.where(zero, 0, trial).astype(np.int32),
            "mask": mask,
            "action": chunk.astype(np.float32),
            "action_mask": action_mask,
            "action_weight": np.where(action_mask, f.action_weight[chunk_rows], 0.0).astype(np.float32),
            "weight": f.weight[ep],
        }


def windows_for(policy, episodes: Sequence[EpisodeArrays], whole_episodes: bool = False):
    """The window sampler matching a policy's batch layout (`whole_episodes`: sequence policies
    only, see `SequenceWindows`)."""
    if policy.kind == "diffusion":
        return DiffusionWindows(episodes, policy.config.n_obs_steps, policy.config.horizon)
    if policy.kind == "transformer":
        # No window longer than the longest episode: padding would only cost compute.
        window = min(policy.config.max_len, max(e.length for e in episodes))
        return SequenceWindows(episodes, window, policy.config.n_action_steps, whole_episodes=whole_episodes)
    raise ValueError(f"policy: no window layout for kind {policy.kind!r}")


def stack_for_normalizer(episodes: Sequence[EpisodeArrays]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([e.obs for e in episodes]), np.concatenate([e.action for e in episodes])
