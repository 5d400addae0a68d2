"""Model registry of the PyTorch reference: names only, the same as `v3d_flax.registry`'s.

Each family module in `v3d_torch_ref.models` ends with `MODELS = {name: factory}`; the registry
collects them from every module of that package, so adding a family touches no file here.
"""

from __future__ import annotations

import importlib
import pkgutil

from torch import nn

_FACTORIES: dict = {}


def _factories() -> dict:
    if not _FACTORIES:
        from v3d_torch_ref import models

        for info in sorted(pkgutil.iter_modules(models.__path__), key=lambda m: m.name):
            module = importlib.import_module(f"{models.__name__}.{info.name}")
            for name, factory in getattr(module, "MODELS", {}).items():
                if name in _FACTORIES:
                    raise ValueError(f"model {name!r} is registered twice")
                _FACTORIES[name] = factory
    return _FACTORIES


def list_models() -> list[str]:
    """Names accepted by `create_model`, sorted."""
    return sorted(_factories())


def get_factory(name: str):
    """The factory of `name`; ValueError listing the names otherwise."""
    factories = _factories()
    if name not in factories:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    return factories[name]


def create_model(name: str, *, num_classes: int, **kwargs) -> nn.Module:
    """Build the PyTorch reference model `name` (NCDHW input, logits output)."""
    return get_factory(name)(num_classes=num_classes, **kwargs)
