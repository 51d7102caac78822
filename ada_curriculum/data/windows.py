"""Training windows cut from episodes, for both batch layouts of `policies/base.py`.

Episodes are held as flat arrays (all episodes concatenated, with offsets), and a batch is
cut with a handful of vectorised numpy gathers, so sampling costs microseconds per example
and never touches Python per step. Indices past an episode's ends are clamped (repeat the
first observation / last action), as Diffusion Policy pads its windows.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ada_curriculum.policies.obs import flatten_obs


@dataclasses.dataclass
class EpisodeArrays:
    """One episode in policy units: T+1 flat observations, T actions."""

    obs: np.ndarray  # (T+1, obs_dim) float32
    action: np.ndarray  # (T, action_dim) float32
    trial_index: np.ndarray  # (T+1,) int32
    weight: float = 1.0

    @property
    def length(self) -> int:
        return len(self.action)


def episode_arrays(episode, weight: float = 1.0) -> EpisodeArrays:
    """From an `episode_store.Episode` (or anything with observations/actions)."""
    obs = episode.observations
    trial = obs.get("trial_index")
    n = len(episode.actions) + 1
    return EpisodeArrays(
        obs=flatten_obs(obs), action=np.asarray(episode.actions, np.float32),
        trial_index=np.zeros(n, np.int32) if trial is None else np.asarray(trial, np.int32).reshape(n),
        weight=weight,
    )


def load_store(path, only_successful: bool = False) -> list[EpisodeArrays]:
    from ada_curriculum.episode_store import EpisodeStore

    store = EpisodeStore(path)
    episodes = [episode_arrays(ep) for ep in store if ep.success or not only_successful]
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
        # Every (episode, t) pair is one sample: t is the step whose action is predicted.
        self.sample_episode = np.repeat(np.arange(len(episodes)), lengths)
        self.sample_t = np.concatenate([np.arange(n) for n in lengths])

    def __len__(self):
        return len(self.sample_t)


class DiffusionWindows:
    """Batches `{obs (B, n_obs_steps, D), action (B, horizon, A), weight (B,)}`."""

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
            "weight": f.weight[ep],
        }


class SequenceWindows:
    """Left-aligned windows of up to `max_len` steps ending at a uniformly drawn step.

    A window keeps as much earlier context as fits, so in multi-trial episodes later trials
    see the earlier ones.
    """

    def __init__(self, episodes: Sequence[EpisodeArrays], max_len: int, n_action_steps: int):
        self.flat = _Flat(episodes)
        self.max_len, self.k = max_len, n_action_steps

    def __len__(self):
        return len(self.flat)

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict:
        f, L, k = self.flat, self.max_len, self.k
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
        action_mask = (chunk_t < length[..., None]) & mask[..., None]
        chunk = f.action[f.act_start[ep][:, None, None] + np.minimum(chunk_t, length[..., None] - 1)]
        zero = ~mask
        return {
            "obs": np.where(zero[..., None], 0.0, obs).astype(np.float32),
            "prev_action": np.where(zero[..., None], 0.0, prev_action).astype(np.float32),
            "trial_index": np.where(zero, 0, trial).astype(np.int32),
            "mask": mask,
            "action": chunk.astype(np.float32),
            "action_mask": action_mask,
            "weight": f.weight[ep],
        }


def windows_for(policy, episodes: Sequence[EpisodeArrays]):
    """The window sampler matching a policy's batch layout."""
    if policy.kind == "diffusion":
        return DiffusionWindows(episodes, policy.config.n_obs_steps, policy.config.horizon)
    if policy.kind == "transformer":
        # No window longer than the longest episode: padding would only cost compute.
        window = min(policy.config.max_len, max(e.length for e in episodes))
        return SequenceWindows(episodes, window, policy.config.n_action_steps)
    raise ValueError(f"policy: no window layout for kind {policy.kind!r}")


def stack_for_normalizer(episodes: Sequence[EpisodeArrays]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([e.obs for e in episodes]), np.concatenate([e.action for e in episodes])
