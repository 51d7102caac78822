"""ada-curriculum: scripted demos -> pretrained policy -> actor-learner RL with a curriculum."""

__version__ = "0.1.0"
