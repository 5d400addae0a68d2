"""Model registry: one name -> factory table shared in spirit with `v3d_torch_ref.registry`.

Factories are referenced as "module:function" strings and imported on first use, so that
importing `v3d_flax` stays cheap and each family lives in its own file.
"""

from __future__ import annotations

import importlib

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
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    module, attr = _MODELS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def create_model(name: str, *, num_classes: int, rngs: nnx.Rngs, **kwargs) -> nnx.Module:
    """Build the Flax model `name` (NDHWC input, logits output) with freshly initialised weights."""
    model = get_factory(name)(num_classes=num_classes, rngs=rngs, **kwargs)
    model.arch = name
    return model
