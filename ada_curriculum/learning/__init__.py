"""Learning: optimiser, train state and the pure `train_step(state, batch) -> (state, metrics)`."""

from ada_curriculum.learning.train_state import OptimConfig, TrainState, create_train_state, make_optimizer
from ada_curriculum.learning.train_step import make_train_step

__all__ = ["OptimConfig", "TrainState", "create_train_state", "make_optimizer", "make_train_step"]
