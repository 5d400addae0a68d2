"""Read PyTorch checkpoint files safely (no pickled code is executed)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

_WRAPPER_KEYS = ("state_dict", "model_state", "model", "module")


def unwrap_state_dict(obj: Any) -> dict[str, Any]:
    """Strip the usual wrappers: {"state_dict"|"model_state"|"model": ...} and a DataParallel "module." prefix."""
    while isinstance(obj, dict):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"checkpoint holds no state_dict (found {type(obj).__name__})")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a .pt/.pth/.pkl/.pickle (torch.load with weights_only=True) or .safetensors file.

    Returns the unwrapped state_dict as numpy arrays (floating tensors as float32).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        state = load_file(path)
    else:
        from v3d_flax.extras import require

        torch = require("torch", f"reading the PyTorch checkpoint {path!r}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError for unsafe pickles, RuntimeError for non-torch files
            raise ValueError(f"could not read {path!r} as a PyTorch checkpoint with weights_only=True: {e}") from e
    state = unwrap_state_dict(state)
    from v3d_flax.port.core import _to_numpy

    return {k: _to_numpy(v) for k, v in state.items() if hasattr(v, "shape")}
