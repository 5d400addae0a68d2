"""v3d_flax: classic 3D-CNN video models in JAX / Flax NNX (NDHWC)."""

from v3d_flax.registry import create_model, list_models

# Kept equal to pyproject.toml's version (tests/test_install.py checks both and the installed metadata).
__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "list_weights"]


def __getattr__(name: str):
    # imported on first use, so that `python -m v3d_flax.weights` runs the module once
    if name == "list_weights":
        from v3d_flax.weights import list_weights

        return list_weights
    raise AttributeError(f"module 'v3d_flax' has no attribute {name!r}")
