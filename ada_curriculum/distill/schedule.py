"""When to start the next generation, and how strongly the student is pulled to its teacher.

`DistillConfig` is the typed config (it becomes ``--distill.*`` options as a field of a
command's config); `kickstart_weight(cfg, updates_since_switch)` is the weight of the
kickstarting term (Schmitt et al. 2018, "Kickstarting Deep Reinforcement Learning") as a pure
function of the updates since the current student started, so a resumed run recomputes it
from its counters instead of saving it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Literal, Optional

from ada_curriculum.config import ConfigError

# Every preset name any policy family knows; which ones a family accepts is checked where the
# family is known (`generations.check_generations`), since this config does not know it.
KNOWN_PRESETS = ("tiny", "small", "base", "large")
SCHEDULES = ("anneal", "hard_stop")
TARGETS = ("noise", "action")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _non_negative_int(field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(field, f"expected an int >= 0, got {value!r}")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Small-to-large distillation: a chain of model sizes, each student kickstarted by the last."""

    enabled: bool = dataclasses.field(default=False, metadata={"help": "grow the model through the generations"})
    generations: tuple[str, ...] = dataclasses.field(
        default=("small", "base", "large"),
        metadata={"help": "policy presets in order; the first is the model the run starts with"})
    # Either trigger starts the next generation (whichever comes first); a switch also waits
    # until the current student has taken over acting, so every teacher is the best model so far.
    switch_every_updates: Optional[int] = dataclasses.field(
        default=None, metadata={"min": 1, "help": "start the next generation this many updates after the last switch"})
    switch_on_coverage: Optional[float] = dataclasses.field(
        default=None, metadata={"help": "start generation g+1 once curriculum coverage >= (g+1) x this"})
    weight: float = dataclasses.field(default=1.0, metadata={"min": 0.0, "help": "initial kickstarting weight"})
    schedule: Literal["anneal", "hard_stop"] = dataclasses.field(
        default="anneal", metadata={"help": "anneal: constant, then linear to 0; hard_stop: constant, then 0"})
    constant_updates: int = dataclasses.field(
        default=1000, metadata={"min": 0, "help": "updates at the full weight after a switch"})
    anneal_updates: int = dataclasses.field(
        default=4000, metadata={"min": 0, "help": "updates of the linear anneal to 0 (schedule anneal)"})
    handover_margin: float = dataclasses.field(
        default=0.05, metadata={"min": -1.0, "max": 1.0,
                                "help": "actors switch to the student once its success >= the teacher's - this "
                                        "(negative: the student must beat the teacher by that much)"})
    # What "the teacher's actions" means for a diffusion policy (the transformer always matches
    # its action outputs): "noise" compares the two eps-predictions on the same noised chunk
    # and timestep (one forward pass each); "action" compares the chunks both denoise from the
    # same initial noise (backpropagates through the student's whole sampling chain).
    target: Literal["noise", "action"] = dataclasses.field(
        default="noise", metadata={"help": "diffusion: match the teacher's noise predictions or its denoised chunks"})
    denoise_steps: Optional[int] = dataclasses.field(
        default=None, metadata={"min": 1, "help": "DDIM steps of target=action (none: the policy's)"})
    # Custom sizes (tiny test models, or a chain the presets do not have): one U-Net width list
    # per generation, levels joined by "x"; each generation keeps its preset's other settings.
    down_dims: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "diffusion: U-Net widths per generation overriding the presets', "
                                      "e.g. 16x32,32x64 (empty: the presets')"})

    def __post_init__(self):
        # A list from JSON would make the config unhashable.
        object.__setattr__(self, "generations", tuple(self.generations))
        object.__setattr__(self, "down_dims", tuple(self.down_dims))

    def validate(self) -> None:
        gens = self.generations
        if len(gens) < 2:
            raise ConfigError("generations", f"expected at least two presets (teacher and student), got {list(gens)}")
        for g in gens:
            if g not in KNOWN_PRESETS:
                raise ConfigError("generations", f"{g!r} is not a preset (presets: {', '.join(KNOWN_PRESETS)})")
        if len(set(gens)) != len(gens):
            raise ConfigError("generations", f"a preset is listed twice in {', '.join(gens)}")
        every = self.switch_every_updates
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ConfigError("switch_every_updates", f"expected none or an int >= 1, got {every!r}")
        cov = self.switch_on_coverage
        if cov is not None:
            if not (_finite(cov) and 0 < cov <= 1):
                raise ConfigError("switch_on_coverage", f"expected none or a number in (0, 1], got {cov!r}")
            if cov * (len(gens) - 1) > 1 + 1e-9:
                raise ConfigError("switch_on_coverage", f"{cov} x {len(gens) - 1} switches exceeds coverage 1: "
                                                        "the last generation would never start")
        if self.enabled and every is None and cov is None:
            raise ConfigError("switch_every_updates", "distillation needs a switch trigger: set "
                                                      "switch_every_updates and/or switch_on_coverage")
        if not (_finite(self.weight) and self.weight >= 0):
            raise ConfigError("weight", f"expected a number >= 0, got {self.weight!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError("schedule", f"expected one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        _non_negative_int("constant_updates", self.constant_updates)
        _non_negative_int("anneal_updates", self.anneal_updates)
        if not (_finite(self.handover_margin) and -1 <= self.handover_margin <= 1):
            raise ConfigError("handover_margin", f"expected a number in [-1, 1], got {self.handover_margin!r}")
        if self.target not in TARGETS:
            raise ConfigError("target", f"expected one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.down_dims:
            if len(self.down_dims) != len(gens):
                raise ConfigError("down_dims", f"expected one width list per generation ({len(gens)}), "
                                               f"got {len(self.down_dims)}")
            for g in range(len(gens)):
                self.widths(g)
        steps = self.denoise_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ConfigError("denoise_steps", f"expected none or an int >= 1, got {steps!r}")

    def widths(self, g: int) -> tuple[int, ...]:
        """Generation g's U-Net widths from `down_dims` (() when the preset's apply)."""
        if not self.down_dims:
            return ()
        text = self.down_dims[g]
        try:
            dims = tuple(int(d) for d in str(text).split("x"))
        except ValueError:
            dims = ()
        if not dims or any(d < 1 for d in dims):
            raise ConfigError("down_dims", f"expected widths like 16x32 per generation, got {text!r}")
        return dims


def kickstart_weight(cfg: DistillConfig, updates_since_switch: int) -> float:
    """The kickstarting weight `updates_since_switch` updates into a generation.

    anneal: `weight` for `constant_updates`, then linearly to 0 over `anneal_updates`.
    hard_stop: `weight` for `constant_updates`, then 0.
    """
    u = updates_since_switch
    if isinstance(u, bool) or not isinstance(u, numbers.Integral) or u < 0:
        raise ValueError(f"updates_since_switch: expected an int >= 0, got {u!r}")
    u = int(u)
    if u < cfg.constant_updates:
        return float(cfg.weight)
    if cfg.schedule == "hard_stop" or cfg.anneal_updates == 0:
        return 0.0
    remaining = 1.0 - (u - cfg.constant_updates) / cfg.anneal_updates
    return float(cfg.weight) * max(remaining, 0.0)


def kickstart_ends(cfg: DistillConfig) -> int:
    """Updates after a switch from which the weight is 0 for good (the teacher is no longer in the loss)."""
    return cfg.constant_updates + (cfg.anneal_updates if cfg.schedule == "anneal" else 0)
