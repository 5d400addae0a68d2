"""Training: configuration, pure steps, the loop, checkpoints, mesh and outputs.

The command line is `v3d_flax.train.cli` (`python -m v3d_flax.train`, `train.py`, `v3d-train`).
"""

from v3d_flax.train.config import DEFAULT_DATASET, TrainConfig, parse_views, resolve

__all__ = ["TrainConfig", "DEFAULT_DATASET", "parse_views", "resolve", "run", "run_resolved", "TrainingDiverged"]


def __getattr__(name: str):
    # The loop imports JAX, Flax and optax: loaded on first use, so that the command line's parser
    # (which reads v3d_flax.train.config) reports a usage error at once.
    if name in ("run", "run_resolved", "TrainingDiverged"):
        import importlib

        return getattr(importlib.import_module("v3d_flax.train.loop"), name)
    raise AttributeError(f"module 'v3d_flax.train' has no attribute {name!r}")
