"""Model registry of the PyTorch reference; the same names as `v3d_flax.registry`."""

from __future__ import annotations

import importlib

from torch import nn

_MODELS: dict[str, str] = {
    "c3d": "v3d_torch_ref.models.c3d:c3d",
    "r3d_18": "v3d_torch_ref.models.resnet3d:r3d_18",
    "r3d_34": "v3d_torch_ref.models.resnet3d:r3d_34",
    "mc3_18": "v3d_torch_ref.models.resnet3d:mc3_18",
    "r2plus1d_18": "v3d_torch_ref.models.resnet3d:r2plus1d_18",
    "r2plus1d_34": "v3d_torch_ref.models.resnet3d:r2plus1d_34",
    "i3d": "v3d_torch_ref.models.i3d:i3d",
    "slowfast_r50": "v3d_torch_ref.models.slowfast:slowfast_r50",
    "slowfast_r101": "v3d_torch_ref.models.slowfast:slowfast_r101",
    "x3d_xs": "v3d_torch_ref.models.x3d:x3d_xs",
    "x3d_s": "v3d_torch_ref.models.x3d:x3d_s",
    "x3d_m": "v3d_torch_ref.models.x3d:x3d_m",
    "x3d_l": "v3d_torch_ref.models.x3d:x3d_l",
    "i3d_r50": "v3d_torch_ref.models.resnet50:i3d_r50",
    "slow_r50": "v3d_torch_ref.models.resnet50:slow_r50",
    "c2d_r50": "v3d_torch_ref.models.resnet50:c2d_r50",
    "csn_r101": "v3d_torch_ref.models.resnet50:csn_r101",
    "r2plus1d_r50": "v3d_torch_ref.models.resnet50:r2plus1d_r50",
}


def list_models() -> list[str]:
    """Names accepted by `create_model`, sorted."""
    return sorted(_MODELS)


def create_model(name: str, *, num_classes: int, **kwargs) -> nn.Module:
    """Build the PyTorch reference model `name` (NCDHW input, logits output)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    module, attr = _MODELS[name].split(":")
    return getattr(importlib.import_module(module), attr)(num_classes=num_classes, **kwargs)
