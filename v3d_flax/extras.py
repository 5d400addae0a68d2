"""Optional dependencies: which pip extra provides each, and one clear error when one is missing.

The core install (`pip install v3d`) covers models, weight porting from .safetensors and inference
with Flax checkpoints. Two extras add the rest (`[test]` has both):

- `train`: TensorFlow, TensorFlow Datasets, TensorBoard and matplotlib, for `train.py` and
  `python -m v3d_flax.data`;
- `torch`: PyTorch, for `v3d_torch_ref`, reading .pth/.pt/.pickle checkpoints and writing .pth.

Modules of an extra are imported only inside the functions that need them, through `require`.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# extra -> the top-level modules it provides (import names, not pip names)
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("tensorflow", "tensorflow_datasets", "tensorboard", "matplotlib"),
    "torch": ("torch",),
}


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def message(extra: str, purpose: str) -> str:
    """The one line shown when `purpose` needs a module of `extra` that is not installed."""
    return f"{purpose} needs the [{extra}] extra: pip install 'v3d[{extra}]'"


def _extra_of(module: str) -> str:
    top = module.split(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if top in modules), "test")


def require(module: str, purpose: str) -> ModuleType:
    """`importlib.import_module(module)`, or MissingExtraError naming the extra to install when
    `module` (or its top-level package) is not installed. Other import failures pass through."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != module.split(".")[0]:
            raise  # something else is missing (a broken install): keep the real error
        raise MissingExtraError(message(_extra_of(module), purpose), name=e.name) from e


def missing(extra: str, purpose: str) -> str | None:
    """None when every module of `extra` can be imported, else the line that says what to install.
    Looks modules up without importing them (cheap: no TensorFlow start-up)."""
    for module in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return message(extra, purpose)
    return None
