"""On-disk episode store: a directory of NumPy ``.npz`` files and a JSON manifest.

Layout::

    DIR/
      manifest.json
      episode_000000.npz
      episode_000001.npz
      ...

``manifest.json``::

    {"format": "ada-curriculum-episodes", "version": 1,
     "env": "banana-place", "env_kwargs": {...},
     "episodes": [{"file": "episode_000000.npz", "length": T, "success": true,
                   "return": 1.0, "seed": 123, "task": {...}, "trials": 1,
                   "meta": {"trial_success": [true], "trial_steps": [57]}}, ...]}

``meta`` is optional (an object of JSON values): what the collector knows about the episode
beyond its arrays, e.g. per-trial success and steps, and for policy rollouts the degradation
level each trial was sampled at.

Each ``episode_XXXXXX.npz`` (compressed, loaded with ``allow_pickle=False``) holds:

    obs/<key>   (T+1, ...)  observations, including the final one
    action      (T, A)      float32
    reward      (T,)        float32
    discount    (T,)        float32
    step_type   (T+1,)      uint8, dm_env.StepType (0 FIRST, 1 MID, 2 LAST)

Row t of action/reward/discount is the transition from observation t to t+1.
The manifest is the source of truth: it is replaced atomically (temp file +
``os.replace``) after every episode, so a crash loses at most the episode being
written, and an npz file it does not list is ignored. No pickle anywhere.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

FORMAT = "ada-curriculum-episodes"
VERSION = 1
MANIFEST = "manifest.json"

_FILE_RE = re.compile(r"episode_\d{6,}\.npz")
_STEP_KEYS = ("action", "reward", "discount", "step_type")


class EpisodeStoreError(Exception):
    """A missing, corrupt or inconsistent store; the message is one line naming file and field."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


@dataclasses.dataclass
class Episode:
    """One episode of T steps: T+1 observations, T actions/rewards/discounts."""

    observations: dict[str, np.ndarray]  # each (T+1, ...)
    actions: np.ndarray  # (T, A)
    rewards: np.ndarray  # (T,)
    discounts: np.ndarray  # (T,)
    step_types: np.ndarray  # (T+1,)
    task: dict[str, Any]
    seed: int
    success: bool
    trials: int = 1
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # manifest "meta" (JSON values)

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))

    def trial_results(self) -> tuple[list[bool], list[int]]:
        """(success, steps) of each trial, from the arrays (see `trial_results`)."""
        return trial_results(self.observations.get("trial_index"), self.rewards)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The npz contents, with the store's dtypes; ValueError naming the field if inconsistent."""
        actions = np.asarray(self.actions, dtype=np.float32)
        if actions.ndim != 2:
            raise ValueError(f"episode: actions: expected shape (T, A), got {actions.shape}")
        t = actions.shape[0]
        arrays = {
            "action": actions,
            "reward": np.asarray(self.rewards, dtype=np.float32),
            "discount": np.asarray(self.discounts, dtype=np.float32),
            "step_type": np.asarray(self.step_types, dtype=np.uint8),
        }
        for name, want in (("reward", (t,)), ("discount", (t,)), ("step_type", (t + 1,))):
            if arrays[name].shape != want:
                raise ValueError(f"episode: {name}: expected shape {want}, got {arrays[name].shape}")
        if not self.observations:
            raise ValueError("episode: observations: no observation keys")
        for key, value in self.observations.items():
            value = np.asarray(value)
            if not key or value.dtype == object:
                raise ValueError(f"episode: observations[{key!r}]: expected a non-empty key and a numeric array")
            if value.ndim == 0 or value.shape[0] != t + 1:
                raise ValueError(f"episode: observations[{key!r}]: expected {t + 1} rows, got shape {value.shape}")
            arrays[f"obs/{key}"] = value
        return arrays


def action_trials(trial_index: np.ndarray | None, length: int) -> np.ndarray:
    """Trial of each of an episode's `length` actions, from the observations' `trial_index`.

    Action t is taken at observation t, so its trial is ``trial_index[t]``: the step that ends
    trial i returns the first observation of trial i + 1 (the env resets the scene within the
    step), but the action that led there still belongs to trial i. No `trial_index`: trial 0.
    """
    if trial_index is None:
        return np.zeros(length, np.int64)
    return np.asarray(trial_index, np.int64).reshape(-1)[:length]


def trial_results(trial_index: np.ndarray | None, rewards: np.ndarray) -> tuple[list[bool], list[int]]:
    """(success, steps) per trial of one episode: a trial succeeded iff one of its steps has a
    positive reward (the sparse reward arrives on the step that ends a successful trial)."""
    rewards = np.asarray(rewards).reshape(-1)
    trials = action_trials(trial_index, len(rewards))
    k = int(trials.max()) + 1 if len(trials) else 0
    success = [bool(np.any(rewards[trials == i] > 0)) for i in range(k)]
    steps = [int(np.sum(trials == i)) for i in range(k)]
    return success, steps


def _jsonable(value: Any, where: str) -> Any:
    """Plain JSON types from task/env parameters, which may hold NumPy scalars or arrays."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), where)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"{where}: not JSON-serializable ({type(value).__name__})")


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- manifest validation --------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_ENTRY_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "file": (lambda v: isinstance(v, str) and _FILE_RE.fullmatch(v) is not None, "an episode_XXXXXX.npz name"),
    "length": (lambda v: _is_int(v) and v >= 0, "a non-negative int"),
    "success": (lambda v: isinstance(v, bool), "true or false"),
    "return": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "seed": (_is_int, "an int"),
    "task": (lambda v: isinstance(v, dict), "an object"),
    "trials": (lambda v: _is_int(v) and v >= 1, "a positive int"),
}


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """Load and validate ``root/manifest.json``; EpisodeStoreError naming the field if bad."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise EpisodeStoreError(f"{path}: missing manifest (not an episode store)")
    try:
        data = json.loads(path.read_bytes())
    except OSError as e:
        raise EpisodeStoreError(f"{path}: cannot read manifest ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EpisodeStoreError(f"{path}: garbled manifest (invalid JSON: {e})") from None
    if not isinstance(data, dict):
        raise EpisodeStoreError(f"{path}: garbled manifest (expected a JSON object)")
    if data.get("format") != FORMAT:
        raise EpisodeStoreError(f"{path}: format: expected {FORMAT!r}, got {data.get('format')!r}")
    if data.get("version") != VERSION:
        raise EpisodeStoreError(f"{path}: version: unsupported version {data.get('version')!r} (expected {VERSION})")
    for name, check, want in (
        ("env", lambda v: isinstance(v, str), "a string"),
        ("env_kwargs", lambda v: isinstance(v, dict), "an object"),
        ("episodes", lambda v: isinstance(v, list), "a list"),
    ):
        if not check(data.get(name)):
            raise EpisodeStoreError(f"{path}: {name}: expected {want}, got {data.get(name)!r}")
    seen: set[str] = set()
    for i, entry in enumerate(data["episodes"]):
        if not isinstance(entry, dict):
            raise EpisodeStoreError(f"{path}: episodes[{i}]: expected an object, got {entry!r}")
        for name, (check, want) in _ENTRY_FIELDS.items():
            if name not in entry:
                raise EpisodeStoreError(f"{path}: episodes[{i}].{name}: missing")
            if not check(entry[name]):
                raise EpisodeStoreError(f"{path}: episodes[{i}].{name}: expected {want}, got {entry[name]!r}")
        if "meta" in entry and not isinstance(entry["meta"], dict):
            raise EpisodeStoreError(f"{path}: episodes[{i}].meta: expected an object, got {entry['meta']!r}")
        if entry["file"] in seen:
            raise EpisodeStoreError(f"{path}: episodes[{i}].file: {entry['file']} is listed twice")
        seen.add(entry["file"])
    return data


# ---- writing --------------------------------------------------------------------------


class EpisodeWriter:
    """Writes episodes into ``root``; the manifest is rewritten after every ``add``.

    An existing store is refused unless ``append=True``; when appending, the env name
    must match and the stored ``env_kwargs`` are kept.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        env_name: str,
        env_kwargs: Mapping[str, Any] | None = None,
        *,
        append: bool = False,
    ):
        self.root = Path(root)
        self._manifest_path = self.root / MANIFEST
        self._closed = False
        if self._manifest_path.exists():
            if not append:
                raise EpisodeStoreError(
                    f"{self._manifest_path}: an episode store already exists here (refusing to overwrite it)"
                )
            self._manifest = read_manifest(self.root)
            if self._manifest["env"] != env_name:
                raise EpisodeStoreError(
                    f"{self._manifest_path}: env: store holds {self._manifest['env']!r} episodes, not {env_name!r}"
                )
            return
        self._manifest = {
            "format": FORMAT,
            "version": VERSION,
            "env": env_name,
            "env_kwargs": _jsonable(dict(env_kwargs or {}), "env_kwargs"),
            "episodes": [],
        }
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EpisodeStoreError(f"{self.root}: cannot create store directory ({e.strerror})") from None
        self._write_manifest()

    def __len__(self) -> int:
        return len(self._manifest["episodes"])

    def add(self, episode: Episode) -> int:
        """Write one episode; returns its index in the store."""
        if self._closed:
            raise EpisodeStoreError(f"{self.root}: writer is closed")
        arrays = episode.to_arrays()
        entry = {
            "file": f"episode_{len(self):06d}.npz",
            "length": episode.length,
            "success": bool(episode.success),
            "return": episode.episode_return,
            "seed": int(episode.seed),
            "task": _jsonable(dict(episode.task), "task"),
            "trials": int(episode.trials),
        }
        if episode.meta:
            entry["meta"] = _jsonable(dict(episode.meta), "meta")
        _atomic_write(self.root / entry["file"], lambda fh: np.savez_compressed(fh, **arrays))
        # Commit in memory only once the new manifest is on disk, so a failed add leaves
        # writer and disk agreeing (the unlisted npz is ignored, and overwritten by the next add).
        manifest = {**self._manifest, "episodes": [*self._manifest["episodes"], entry]}
        self._write_manifest(manifest)
        self._manifest = manifest
        return len(self) - 1

    def close(self) -> None:
        if not self._closed:
            self._write_manifest()
            self._closed = True

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_manifest(self, manifest: dict[str, Any] | None = None) -> None:
        text = json.dumps(self._manifest if manifest is None else manifest, indent=1).encode() + b"\n"
        _atomic_write(self._manifest_path, lambda fh: fh.write(text))


# ---- reading --------------------------------------------------------------------------


class EpisodeStore:
    """Read-only view of a store; episodes are loaded from disk on access."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._manifest = read_manifest(self.root)

    @property
    def manifest(self) -> dict[str, Any]:
        return copy.deepcopy(self._manifest)

    @property
    def env_name(self) -> str:
        return self._manifest["env"]

    @property
    def env_kwargs(self) -> dict[str, Any]:
        return copy.deepcopy(self._manifest["env_kwargs"])

    def __len__(self) -> int:
        return len(self._manifest["episodes"])

    def __getitem__(self, index: int) -> Episode:
        entries = self._manifest["episodes"]
        if not -len(entries) <= index < len(entries):
            raise IndexError(f"episode index {index} out of range for {len(entries)} episodes")
        entry = entries[index]
        arrays = self._load(entry)
        obs = {k[len("obs/"):]: v for k, v in arrays.items() if k.startswith("obs/")}
        return Episode(
            observations=obs,
            actions=arrays["action"],
            rewards=arrays["reward"],
            discounts=arrays["discount"],
            step_types=arrays["step_type"],
            task=copy.deepcopy(entry["task"]),
            seed=entry["seed"],
            success=entry["success"],
            trials=entry["trials"],
            meta=copy.deepcopy(entry.get("meta", {})),
        )

    def __iter__(self) -> Iterator[Episode]:
        return self.iter()

    def iter(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self[i]

    def concat(self, keys: Sequence[str] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """All episodes stacked along axis 0, aligned on transitions.

        Keys: ``obs/<k>`` (the observation each action was taken at, rows 0..T-1),
        ``next_obs/<k>`` (rows 1..T), ``action``, ``reward``, ``discount`` and
        ``step_type`` (rows 0..T-1). Default: every ``obs/<k>`` plus the four step keys.
        Returns ``(arrays, boundaries)``: episode i is rows ``boundaries[i]:boundaries[i+1]``.
        """
        if not len(self):
            raise EpisodeStoreError(f"{self.root / MANIFEST}: episodes: the store is empty")
        parts: dict[str, list[np.ndarray]] = {}
        lengths = []
        for i, entry in enumerate(self._manifest["episodes"]):
            arrays = self._load(entry)
            if keys is None:
                keys = sorted(k for k in arrays if k.startswith("obs/")) + list(_STEP_KEYS)
            t = entry["length"]
            for key in keys:
                source, rows = key, slice(0, t)
                if key.startswith("next_obs/"):
                    source, rows = "obs/" + key[len("next_obs/"):], slice(1, t + 1)
                if source not in arrays:
                    if i == 0:
                        raise ValueError(f"concat: unknown key {key!r}")
                    raise EpisodeStoreError(f"{self.root / entry['file']}: {source}: missing array")
                parts.setdefault(key, []).append(arrays[source][rows])
            lengths.append(t)
        boundaries = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return {k: np.concatenate(v, axis=0) for k, v in parts.items()}, boundaries

    def _load(self, entry: Mapping[str, Any]) -> dict[str, np.ndarray]:
        path = self.root / entry["file"]
        if not path.is_file():
            raise EpisodeStoreError(f"{path}: missing episode file")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
            raise EpisodeStoreError(f"{path}: unreadable or truncated episode file ({type(e).__name__}: {e})") from None
        t = entry["length"]
        expected = {"action": (np.float32, t), "reward": (np.float32, t), "discount": (np.float32, t),
                    "step_type": (np.uint8, t + 1)}
        for key, (dtype, rows) in expected.items():
            if key not in arrays:
                raise EpisodeStoreError(f"{path}: {key}: missing array")
            a = arrays[key]
            if a.dtype != dtype:
                raise EpisodeStoreError(f"{path}: {key}: expected dtype {np.dtype(dtype)}, got {a.dtype}")
            if a.ndim == 0 or a.shape[0] != rows:
                raise EpisodeStoreError(
                    f"{path}: {key}: expected {rows} rows (manifest length {t}), got shape {a.shape}"
                )
        if arrays["action"].ndim != 2:
            raise EpisodeStoreError(f"{path}: action: expected shape (T, A), got {arrays['action'].shape}")
        obs_keys = [k for k in arrays if k.startswith("obs/")]
        if not obs_keys:
            raise EpisodeStoreError(f"{path}: obs: no observation arrays")
        for key in obs_keys:
            if arrays[key].ndim == 0 or arrays[key].shape[0] != t + 1:
                raise EpisodeStoreError(
                    f"{path}: {key}: expected {t + 1} rows (manifest length {t} + 1), got shape {arrays[key].shape}"
                )
        extra = sorted(set(arrays) - set(expected) - set(obs_keys))
        if extra:
            raise EpisodeStoreError(f"{path}: {extra[0]}: unexpected array")
        return arrays


# ---- recording ------------------------------------------------------------------------


class EpisodeRecorder:
    """Accumulates dm_env TimeSteps and actions into an Episode.

    ``start(ts)`` with the FIRST timestep, ``step(action, ts)`` after each env step,
    ``finish(...)`` to get the Episode. Observations are dicts of arrays (a bare array
    is stored under the key ``"observation"``); they are copied, since envs may reuse
    buffers. A missing reward/discount (None) is recorded as 0.0/1.0.
    """

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self._obs: list[dict[str, np.ndarray]] | None = None
        self._actions: list[np.ndarray] = []
        self._rewards: list[float] = []
        self._discounts: list[float] = []
        self._step_types: list[int] = []

    @property
    def length(self) -> int:
        return len(self._actions)

    def start(self, timestep: Any) -> None:
        self._clear()
        self._obs = [self._obs_dict(timestep.observation)]
        self._step_types = [int(timestep.step_type)]

    def step(self, action: Any, timestep: Any) -> None:
        if self._obs is None:
            raise RuntimeError("EpisodeRecorder.step() called before start()")
        if timestep.first():
            raise RuntimeError("EpisodeRecorder.step() got a FIRST timestep; call start() for a new episode")
        obs = self._obs_dict(timestep.observation)
        if obs.keys() != self._obs[0].keys():
            raise ValueError(f"observation keys changed mid-episode: {sorted(self._obs[0])} -> {sorted(obs)}")
        self._obs.append(obs)
        self._actions.append(np.array(action, dtype=np.float32).reshape(-1))
        self._rewards.append(0.0 if timestep.reward is None else float(timestep.reward))
        self._discounts.append(1.0 if timestep.discount is None else float(timestep.discount))
        self._step_types.append(int(timestep.step_type))

    def finish(self, task: Mapping[str, Any], seed: int, success: bool, trials: int = 1,
               meta: Mapping[str, Any] | None = None) -> Episode:
        if self._obs is None:
            raise RuntimeError("EpisodeRecorder.finish() called before start()")
        obs = {k: np.stack([o[k] for o in self._obs]) for k in self._obs[0]}
        if self._actions:
            actions = np.stack(self._actions)
        else:
            actions = np.zeros((0, 0), np.float32)
        episode = Episode(
            observations=obs,
            actions=actions,
            rewards=np.array(self._rewards, np.float32),
            discounts=np.array(self._discounts, np.float32),
            step_types=np.array(self._step_types, np.uint8),
            task=dict(task),
            seed=int(seed),
            success=bool(success),
            trials=int(trials),
            meta=dict(meta or {}),
        )
        self._clear()
        return episode

    @staticmethod
    def _obs_dict(observation: Any) -> dict[str, np.ndarray]:
        if isinstance(observation, Mapping):
            return {str(k): np.array(v) for k, v in observation.items()}
        return {"observation": np.array(observation)}
