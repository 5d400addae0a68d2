"""Training: configuration, pure steps, the loop, checkpoints, mesh and outputs."""

from v3d_flax.train.config import DEFAULT_DATASET, TrainConfig, parse_views, resolve

__all__ = ["TrainConfig", "DEFAULT_DATASET", "parse_views", "resolve", "run", "TrainingDiverged"]


def __getattr__(name: str):
    # The loop imports JAX, Flax and optax: loaded on first use, so that train.py's parser (which reads
    # v3d_flax.train.config) reports a usage error at once.
    if name in ("run", "TrainingDiverged"):
        import importlib

        return getattr(importlib.import_module("v3d_flax.train.loop"), name)
    raise AttributeError(f"module 'v3d_flax.train' has no attribute {name!r}")
