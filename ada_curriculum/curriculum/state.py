"""The curriculum state: a JSON-ready dict, and the checks a saved one must pass to be resumed.

Layout (every value is a JSON number, string, bool, list or dict, so ``json.loads(json.dumps(s))
== s`` and a round trip reproduces the next samples exactly):

    format, version        "ada-curriculum/curriculum-state", 1
    strategy               "none" | "widening" | "band" | "plr" (also config["strategy"])
    config                 the CurriculumConfig as a dict (config.to_dict)
    space, min_separation  the task space the curriculum works in: {dim: [low, high]}, metres
    space_hash             TaskSpace.fingerprint() of that space; a resume over another space is refused
    rng                    numpy PCG64 bit_generator state (tasks and env seeds come from it)
    sampled                tasks drawn so far (PLR's episode clock c)
    episodes, successes    results kept
    dropped_stale          results dropped for being more than max_staleness versions behind
    off_space              kept results whose task lies outside `space` (counted, not binned)
    latest_version         newest policy version seen (from the learner or from results); -1: none
    bins                   per-bin counts: shape, feasible, episodes, successes, recent (last outcomes)
    widening               (widening only) lo, hi ({dim: value}), stage, buffers ({"dim/side": outcomes})
    plr                    (plr only) last_sampled: per bin, the value of `sampled` after its last draw
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping

import numpy as np

from ada_curriculum.config import ConfigError, from_dict, to_dict
from ada_curriculum.curriculum import widening
from ada_curriculum.curriculum.bins import BinGrid
from ada_curriculum.curriculum.config import STRUCTURAL_FIELDS, CurriculumConfig
from envs.task_space import FIELD_NAMES, FULL, TaskSpace

FORMAT = "ada-curriculum/curriculum-state"
VERSION = 1
COUNTERS = ("sampled", "episodes", "successes", "dropped_stale", "off_space")
_KEYS = ("format", "version", "strategy", "config", "space", "min_separation", "space_hash", "rng", *COUNTERS,
         "latest_version", "bins")


class StateError(ValueError):
    """A saved curriculum state that cannot be resumed; the message starts with the field."""


def plain(value):
    """`value` as JSON would give it back (tuples become lists), failing on what JSON cannot hold."""
    return json.loads(json.dumps(value, allow_nan=False))


def config_dict(cfg: CurriculumConfig) -> dict:
    return plain(to_dict(cfg))


def space_of(state: Mapping) -> TaskSpace:
    """The TaskSpace a state was made over (rebuilt from its bounds)."""
    # Bounds keep their JSON types (an int stays an int): the fingerprint hashes them as given.
    dims = tuple(dataclasses.replace(d, low=state["space"][d.name][0], high=state["space"][d.name][1])
                 for d in FULL.dimensions)
    return TaskSpace(dimensions=dims, min_separation=state["min_separation"])


def config_of(state: Mapping) -> CurriculumConfig:
    return _config_from_json(json.dumps(state["config"], sort_keys=True))


@functools.lru_cache(maxsize=32)
def _config_from_json(text: str) -> CurriculumConfig:
    # Memo of a pure function (configs are frozen): parsing and validating on every sample
    # call would cost more than the sampling.
    return from_dict(CurriculumConfig, json.loads(text))


def private_copy(state: Mapping) -> dict:
    """A deep copy of a JSON-plain state (much faster than copy.deepcopy for nested lists)."""
    return json.loads(json.dumps(state))


def rng_of(state: Mapping) -> np.random.Generator:
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state["rng"]
    return rng


def _lookup(data: Mapping, path: str):
    for part in path.split("."):
        data = data[part]
    return data


def check(state: Mapping, space: TaskSpace, config: CurriculumConfig | None = None) -> dict:
    """A validated private copy of a saved `state`, to continue over `space`.

    `config`, when given, replaces the saved config; only fields the state's layout depends on
    (STRUCTURAL_FIELDS) must match. Raises StateError naming the first bad field.
    """
    if not isinstance(state, Mapping):
        raise StateError(f"state: expected a mapping, got {type(state).__name__}")
    if state.get("format") != FORMAT:
        raise StateError(f"format: expected {FORMAT!r}, got {state.get('format')!r}")
    if state.get("version") != VERSION:
        raise StateError(f"version: this code reads curriculum state version {VERSION}, got {state.get('version')!r}")
    for key in _KEYS:
        if key not in state:
            raise StateError(f"{key}: missing from the curriculum state")
    if state["space_hash"] != space.fingerprint():
        raise StateError(f"space_hash: the state was made over task space {state['space_hash']}, this run's is "
                         f"{space.fingerprint()}; a curriculum cannot continue over a different space")
    try:
        new = plain(dict(state))
    except (TypeError, ValueError) as e:
        raise StateError(f"state: not JSON-serialisable ({e})") from None
    try:
        rebuilt = space_of(new).fingerprint()
    except (KeyError, TypeError, ValueError) as e:
        raise StateError(f"space: unreadable ({e})") from None
    if rebuilt != new["space_hash"]:
        raise StateError("space: the bounds do not match space_hash")
    try:
        saved = config_of(new)
    except ConfigError as e:
        raise StateError(f"config.{e}") from None
    if new["strategy"] != saved.strategy:
        raise StateError(f"strategy: {new['strategy']!r} differs from config.strategy {saved.strategy!r}")
    if config is not None:
        config.validate()
        for path in STRUCTURAL_FIELDS:
            # Through the parsed config, so a state saved before a field existed reads its default.
            was, now = _lookup(config_dict(saved), path), _lookup(config_dict(config), path)
            if was != now:
                raise StateError(f"{path}: the state was made with {was!r}, this run's config has {now!r}")
        new["config"] = config_dict(config)
    cfg = config_of(new)
    try:
        rng_of(new)
    except (KeyError, TypeError, ValueError) as e:
        raise StateError(f"rng: not a numpy PCG64 state ({e})") from None
    for key in COUNTERS:
        if isinstance(new[key], bool) or not isinstance(new[key], int) or new[key] < 0:
            raise StateError(f"{key}: expected an int >= 0, got {new[key]!r}")
    if isinstance(new["latest_version"], bool) or not isinstance(new["latest_version"], int):
        raise StateError(f"latest_version: expected an int, got {new['latest_version']!r}")
    _check_bins(new, space, cfg)
    if cfg.strategy == "widening":
        _check_widening(new, space, cfg)
    if cfg.strategy == "plr":
        ls = new.get("plr", {}).get("last_sampled")
        if not isinstance(ls, list) or len(ls) != len(new["bins"]["episodes"]):
            raise StateError("plr.last_sampled: expected one entry per bin")
    return new


def _check_bins(new: dict, space: TaskSpace, cfg: CurriculumConfig) -> None:
    grid = BinGrid.make(space, cfg.bins.dims, cfg.bins.per_dim)
    b = new["bins"]
    if b.get("shape") != list(grid.shape):
        raise StateError(f"bins.shape: expected {list(grid.shape)}, got {b.get('shape')!r}")
    for key in ("feasible", "episodes", "successes", "recent"):
        if not isinstance(b.get(key), list) or len(b[key]) != grid.size:
            raise StateError(f"bins.{key}: expected a list of {grid.size} entries")
    for recent in b["recent"]:
        del recent[:-cfg.bins.window]  # a resumed run may keep a shorter window


def _check_widening(new: dict, space: TaskSpace, cfg: CurriculumConfig) -> None:
    w = new.get("widening")
    if not isinstance(w, dict) or not all(k in w for k in ("lo", "hi", "stage", "buffers")):
        raise StateError("widening: missing or incomplete (lo, hi, stage, buffers)")
    start = widening.init(space, cfg.widening)
    for n in FIELD_NAMES:
        lo, hi = w["lo"].get(n), w["hi"].get(n)
        d = space[n]
        # A resumable box lies in the space and contains the nominal start (boxes only grow).
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float))
                and d.low <= lo <= start["lo"][n] and start["hi"][n] <= hi <= d.high):
            raise StateError(f"widening.lo.{n}: box [{lo}, {hi}] must lie in [{d.low}, {d.high}] "
                             f"and contain [{start['lo'][n]}, {start['hi'][n]}]")
    for key in start["buffers"]:
        w["buffers"].setdefault(key, [])
