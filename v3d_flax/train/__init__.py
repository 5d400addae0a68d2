"""Training: configuration, pure steps, the loop, checkpoints, mesh and outputs."""

from v3d_flax.train.config import DEFAULT_DATASET, TrainConfig, parse_views, resolve
from v3d_flax.train.loop import TrainingDiverged, run

__all__ = ["TrainConfig", "DEFAULT_DATASET", "parse_views", "resolve", "run", "TrainingDiverged"]
