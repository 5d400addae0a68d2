"""v3d_torch_ref: the PyTorch (NCDHW) reference of every v3d model, torchvision/PyTorchVideo key names.

Needs PyTorch: `pip install 'v3d[torch]'` (install torch==2.13.0 first, see the README).
"""

from v3d_flax.extras import require as _require

_require("torch", "v3d_torch_ref (the PyTorch reference)")

from v3d_torch_ref.registry import create_model, list_models  # noqa: E402

__all__ = ["create_model", "list_models"]
