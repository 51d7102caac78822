"""The curriculum's typed config: which strategy, and each strategy's parameters.

Defaults follow the literature each strategy comes from (ADR for widening, PLR for plr); the
nested dataclasses become ``--curriculum.plr.temperature``-style options when the config is a
field of a command's config. ``validate()`` raises ``ConfigError`` ("field: reason"), a
``ValueError``, with nested fields named by their dotted path (``plr.temperature``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Optional

from ada_curriculum.config import ConfigError
from envs.task_space import FIELD_NAMES, PERIODS

STRATEGIES = ("none", "widening", "band", "plr")
MAX_BINS = 4096  # per-bin lists live in every checkpoint and metrics row
# Fields the saved state's layout depends on; a resumed run may change the others.
STRUCTURAL_FIELDS = ("strategy", "bins.dims", "bins.per_dim", "widening.dims", "widening.periodic")


def _check_dims(field: str, dims: tuple[str, ...]) -> None:
    if not dims:
        raise ConfigError(field, "expected at least one task dimension")
    for d in dims:
        if d not in FIELD_NAMES:
            raise ConfigError(field, f"{d!r} is not a task dimension (dimensions: {', '.join(FIELD_NAMES)})")
    if len(set(dims)) != len(dims):
        raise ConfigError(field, f"a dimension is listed twice in {', '.join(dims)}")


def _unit(field: str, value: float, *, open_low: bool = False) -> None:
    ok = math.isfinite(value) and (0 < value <= 1 if open_low else 0 <= value <= 1)
    if not ok:
        raise ConfigError(field, f"expected a number in {'(0' if open_low else '[0'}, 1], got {value!r}")


def _positive_int(field: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(field, f"expected a positive int, got {value!r}")


@dataclasses.dataclass(frozen=True)
class BinConfig:
    """The grid over task space that band and plr sample from, and that metrics report success on.

    Bins split each listed dimension of the curriculum's space into `per_dim` equal intervals
    (integer dimensions into groups of values); the other dimensions stay uniform.
    """

    dims: tuple[str, ...] = dataclasses.field(
        default=("banana_x", "banana_y", "target_x", "target_y"),
        metadata={"help": "task dimensions to bin; the first two make the dashboard heatmap"})
    per_dim: int = dataclasses.field(default=3, metadata={"min": 1, "help": "intervals per binned dimension"})
    window: int = dataclasses.field(default=20, metadata={"min": 1, "help": "recent episodes kept per bin"})

    def validate(self) -> None:
        _check_dims("dims", self.dims)
        _positive_int("per_dim", self.per_dim)
        _positive_int("window", self.window)
        if self.per_dim ** len(self.dims) > MAX_BINS:
            raise ConfigError("per_dim", f"{self.per_dim} intervals over {len(self.dims)} dimensions make "
                              f"{self.per_dim ** len(self.dims)} bins; at most {MAX_BINS}")


@dataclasses.dataclass(frozen=True)
class WideningConfig:
    """ADR-style expanding box (OpenAI et al. 2019, "Solving Rubik's Cube with a Robot Hand").

    Each listed dimension starts at the nominal task and each of its two boundaries moves out
    by `step` of the full range once the success of the last `window` episodes played on that
    boundary reaches `threshold` (at most one boundary per decision, see widening.py).
    Boundaries never move in (ADR's lower threshold is left out): the box only grows, so every
    sampled distribution contains the solved one.
    """

    dims: tuple[str, ...] = dataclasses.field(
        default=FIELD_NAMES, metadata={"help": "dimensions that widen; the others stay at the space's bounds"})
    step: float = dataclasses.field(default=0.1, metadata={"help": "boundary step, as a fraction of the full range (of the period if periodic)"})
    window: int = dataclasses.field(default=50, metadata={"min": 1, "help": "boundary episodes per decision (ADR's m)"})
    # 0 makes it a fixed schedule: a boundary moves whenever its window fills.
    threshold: float = dataclasses.field(default=0.8, metadata={"help": "boundary success that widens (ADR's t_H)"})
    boundary_prob: float = dataclasses.field(
        default=0.5, metadata={"help": "share of tasks pinned to a boundary (ADR's p_b); the rest fill the box"})
    periodic: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "widened dimensions treated as periodic (envs.task_space.PERIODS): the box "
                                      "spans one period around the nominal value and is sampled in every copy"})

    def validate(self) -> None:
        _check_dims("dims", self.dims)
        for d in self.periodic:
            if d not in self.dims:
                raise ConfigError("periodic", f"{d!r} is not a widened dimension (dims: {', '.join(self.dims)})")
            if d not in PERIODS:
                raise ConfigError("periodic", f"{d!r} has no period (periodic dimensions: {', '.join(PERIODS)})")
        if len(set(self.periodic)) != len(self.periodic):
            raise ConfigError("periodic", f"a dimension is listed twice in {', '.join(self.periodic)}")
        _unit("step", self.step, open_low=True)
        _positive_int("window", self.window)
        _unit("threshold", self.threshold)
        _unit("boundary_prob", self.boundary_prob)


@dataclasses.dataclass(frozen=True)
class BandConfig:
    """Success-band filtering (ADA's no-op-filter idea, Adaptive Agent Team 2023).

    Bins whose recent success lies in [low, high] are preferred; a bin is judged only after
    `min_episodes` recent episodes, and until then shares the `explore` mass.
    """

    low: float = dataclasses.field(default=0.1, metadata={"help": "lowest recent success still in the band"})
    high: float = dataclasses.field(default=0.9, metadata={"help": "highest recent success still in the band"})
    min_episodes: int = dataclasses.field(
        default=5, metadata={"min": 1, "help": "recent episodes before a bin is judged"})
    explore: float = dataclasses.field(default=0.2, metadata={"help": "probability mass of not-yet-judged bins"})
    out_weight: float = dataclasses.field(
        default=0.05, metadata={"help": "weight of an out-of-band bin relative to an in-band one (keeps it measured)"})

    def validate(self) -> None:
        _unit("low", self.low)
        _unit("high", self.high)
        if not self.low < self.high:
            raise ConfigError("high", f"expected high > low ({self.low}), got {self.high}")
        _positive_int("min_episodes", self.min_episodes)
        _unit("explore", self.explore)
        _unit("out_weight", self.out_weight)


@dataclasses.dataclass(frozen=True)
class PLRConfig:
    """Prioritized Level Replay (Jiang, Grefenstette, Rocktaschel 2021) over the bins.

    Replay distribution P = (1 - staleness_coef) P_S + staleness_coef P_C, with rank
    prioritisation P_S proportional to (1/rank(S_i))^(1/temperature) and staleness
    P_C proportional to c - C_i. The replay decision follows the paper's "proportionate" schedule
    (replay with probability = share of bins seen) or a "fixed" `replay_prob`.
    """

    temperature: float = dataclasses.field(default=0.1, metadata={"help": "beta of the rank prioritisation"})
    staleness_coef: float = dataclasses.field(default=0.1, metadata={"help": "rho, the weight of staleness"})
    replay_schedule: Literal["proportionate", "fixed"] = dataclasses.field(
        default="proportionate", metadata={"help": "when to replay a seen bin rather than try an unseen one"})
    replay_prob: float = dataclasses.field(default=0.5, metadata={"help": "replay probability of the fixed schedule"})

    def validate(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError("temperature", f"expected a number > 0, got {self.temperature!r}")
        _unit("staleness_coef", self.staleness_coef)
        if self.replay_schedule not in ("proportionate", "fixed"):
            raise ConfigError("replay_schedule", f"expected proportionate or fixed, got {self.replay_schedule!r}")
        _unit("replay_prob", self.replay_prob)


@dataclasses.dataclass(frozen=True)
class CurriculumConfig:
    """Which curriculum samples the actors' tasks, and how stale a result may be."""

    strategy: Literal["none", "widening", "band", "plr"] = dataclasses.field(
        default="none", metadata={"help": "none: fixed distribution; widening: ADR box; band: success band; plr"})
    max_staleness: Optional[int] = dataclasses.field(
        default=None, metadata={"min": 0, "help": "drop results this many policy versions behind (none: keep all)"})
    bins: BinConfig = dataclasses.field(default_factory=BinConfig)
    widening: WideningConfig = dataclasses.field(default_factory=WideningConfig)
    band: BandConfig = dataclasses.field(default_factory=BandConfig)
    plr: PLRConfig = dataclasses.field(default_factory=PLRConfig)

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError("strategy", f"expected one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        ms = self.max_staleness
        if ms is not None and (isinstance(ms, bool) or not isinstance(ms, int) or ms < 0):
            raise ConfigError("max_staleness", f"expected none or an int >= 0, got {self.max_staleness!r}")
        for name in ("bins", "widening", "band", "plr"):
            try:
                getattr(self, name).validate()
            except ConfigError as e:
                raise e.under(name) from None
        if self.band.min_episodes > self.bins.window:
            raise ConfigError("band.min_episodes", f"{self.band.min_episodes} exceeds bins.window "
                              f"{self.bins.window}: no bin would ever be judged")
