"""v3d_flax: classic 3D-CNN video models in JAX / Flax NNX (NDHWC)."""

from v3d_flax.registry import create_model, list_models

__all__ = ["create_model", "list_models"]
