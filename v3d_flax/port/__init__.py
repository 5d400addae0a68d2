"""Weight porting between public checkpoints (PyTorch, TensorFlow, 2D image networks) and v3d Flax models.

`load_weights(model, path_or_state, source=...)` loads any source of `list_sources()`
(`v3d_flax.port.sources`); `from_torch` / `to_torch` are the PyTorch state_dict mechanics beneath.
The names below are imported on first use, so that `v3d_flax.port.sources` (plain data, read by the
command lines' parsers) does not import JAX.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "load_torch_checkpoint": "checkpoint", "unwrap_state_dict": "checkpoint",
    "PortError": "core", "PortReport": "core", "from_torch": "core", "rename_keys": "core", "to_torch": "core",
    "torch_shapes": "core", "torch_state": "core", "inflate_2d": "inflate", "from_tf_checkpoint": "tf_checkpoint",
    "identify_checkpoint": "identify", "load_weights": "load", "read_source": "load",
    "list_sources": "sources", "get_source": "sources", "sources_for": "sources",
}

__all__ = ["load_weights", "read_source", "list_sources", "get_source", "sources_for", "from_torch", "to_torch",
           "torch_state", "load_torch_checkpoint", "unwrap_state_dict", "rename_keys", "torch_shapes", "PortError",
           "PortReport", "from_tf_checkpoint", "inflate_2d", "identify_checkpoint"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"v3d_flax.port.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'v3d_flax.port' has no attribute {name!r}")
