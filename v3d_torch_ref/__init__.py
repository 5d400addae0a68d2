"""v3d_torch_ref: the PyTorch (NCDHW) reference of every v3d model, torchvision/PyTorchVideo key names."""

from v3d_torch_ref.registry import create_model, list_models

__all__ = ["create_model", "list_models"]
