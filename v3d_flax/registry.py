"""Model registry: one name -> factory table shared in spirit with `v3d_torch_ref.registry`.

Factories are referenced as "module:function" strings and imported on first use, so that
importing `v3d_flax` stays cheap and each family lives in its own file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the command lines read the names below without importing JAX
    from flax import nnx

# name -> "module:factory". Names follow torchvision / PyTorchVideo hub names.
_MODELS: dict[str, str] = {
    "c3d": "v3d_flax.models.c3d:c3d",
    "r3d_18": "v3d_flax.models.resnet3d:r3d_18",
    "r3d_34": "v3d_flax.models.resnet3d:r3d_34",
    "mc3_18": "v3d_flax.models.resnet3d:mc3_18",
    "r2plus1d_18": "v3d_flax.models.resnet3d:r2plus1d_18",
    "r2plus1d_34": "v3d_flax.models.resnet3d:r2plus1d_34",
    "i3d": "v3d_flax.models.i3d:i3d",
    "slowfast_r50": "v3d_flax.models.slowfast:slowfast_r50",
    "slowfast_r101": "v3d_flax.models.slowfast:slowfast_r101",
    "x3d_xs": "v3d_flax.models.x3d:x3d_xs",
    "x3d_s": "v3d_flax.models.x3d:x3d_s",
    "x3d_m": "v3d_flax.models.x3d:x3d_m",
    "x3d_l": "v3d_flax.models.x3d:x3d_l",
    "i3d_r50": "v3d_flax.models.resnet50:i3d_r50",
    "slow_r50": "v3d_flax.models.resnet50:slow_r50",
    "c2d_r50": "v3d_flax.models.resnet50:c2d_r50",
    "csn_r101": "v3d_flax.models.resnet50:csn_r101",
    "r2plus1d_r50": "v3d_flax.models.resnet50:r2plus1d_r50",
}


# name -> canonical clip (frames, height, width) of its published recipe; SlowFast: the fast pathway's.
CANONICAL_CLIPS: dict[str, tuple[int, int, int]] = {
    "c3d": (16, 112, 112),
    "r3d_18": (16, 112, 112),
    "r3d_34": (16, 112, 112),
    "mc3_18": (16, 112, 112),
    "r2plus1d_18": (16, 112, 112),
    "r2plus1d_34": (16, 112, 112),
    "i3d": (64, 224, 224),
    "slowfast_r50": (32, 256, 256),
    "slowfast_r101": (32, 256, 256),
    "x3d_xs": (4, 160, 160),
    "x3d_s": (13, 160, 160),
    "x3d_m": (16, 224, 224),
    "x3d_l": (16, 312, 312),
    "i3d_r50": (8, 224, 224),
    "slow_r50": (8, 224, 224),
    "c2d_r50": (8, 224, 224),
    "csn_r101": (32, 224, 224),
    "r2plus1d_r50": (16, 224, 224),
}


def list_models() -> list[str]:
    """Names accepted by `create_model`, sorted."""
    return sorted(_MODELS)


def get_factory(name: str):
    """The factory function registered under `name`; ValueError listing the names otherwise."""
    if name not in _MODELS:
        from v3d_flax.cli import unknown_model_message

        raise ValueError(unknown_model_message(name))
    module, attr = _MODELS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def create_model(name: str, *, num_classes: int, rngs: nnx.Rngs, **kwargs) -> nnx.Module:
    """Build the Flax model `name` (NDHWC input, logits output) with freshly initialised weights.

    The random weights are drawn in one jitted program (`v3d_flax.layers.build_batched`), with the
    values an eager build from the same `rngs` gives. To load a checkpoint, build the structure
    without any draws with `abstract_model`.
    """
    from v3d_flax.layers import build_batched

    model = build_batched(get_factory(name), num_classes=num_classes, rngs=rngs, **kwargs)
    model.arch = name
    return model


def abstract_model(name: str, *, num_classes: int, rngs: nnx.Rngs | None = None, **kwargs) -> nnx.Module:
    """`create_model`'s structure without its weights: what ``nnx.eval_shape(lambda: create_model(...))``
    gives (arrays as jax.ShapeDtypeStruct), but built without tracing and without drawing any random
    weight; for reading shapes, or for filling in a checkpoint's arrays."""
    from flax import nnx
    from v3d_flax.layers import build_abstract

    model = build_abstract(get_factory(name), num_classes=num_classes, rngs=nnx.Rngs(0) if rngs is None else rngs,
                           **kwargs)
    model.arch = name
    return model
