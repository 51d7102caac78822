"""Curriculum scheduling over the task space: pure functions over a JSON-ready state.

Strategies (``CurriculumConfig.strategy``): "none" (a fixed distribution), "widening" (an
ADR-style box growing from the nominal task), "band" (prefer bins of middling success) and
"plr" (Prioritized Level Replay over bins). `TaskSource` (agent/task_source.py) holds a state
and is what actors call. Modules: config, state (layout and resume checks), scheduler
(dispatch), widening, band, plr, bins, constraints, metrics.
"""

from ada_curriculum.curriculum.config import (
    BandConfig, BinConfig, CurriculumConfig, PLRConfig, WideningConfig,
)
from ada_curriculum.curriculum.metrics import metrics
from ada_curriculum.curriculum.scheduler import (
    bin_weights, coverage, coverage_complete, done, init, restore, sample, sample_episodes, sampling_space, update,
)
from ada_curriculum.curriculum.state import StateError

__all__ = [
    "BandConfig", "BinConfig", "CurriculumConfig", "PLRConfig", "StateError", "WideningConfig", "bin_weights",
    "coverage", "coverage_complete", "done", "init", "metrics", "restore", "sample", "sample_episodes",
    "sampling_space", "update",
]
