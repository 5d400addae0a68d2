"""Weight porting between PyTorch checkpoints and v3d Flax models."""

from v3d_flax.port.checkpoint import load_torch_checkpoint, unwrap_state_dict
from v3d_flax.port.core import PortError, PortReport, from_torch, rename_keys, to_torch, torch_shapes
from v3d_flax.port.inflate import inflate_2d
from v3d_flax.port.tf_checkpoint import from_tf_checkpoint

__all__ = ["from_torch", "to_torch", "load_torch_checkpoint", "unwrap_state_dict", "rename_keys",
           "torch_shapes", "PortError", "PortReport", "from_tf_checkpoint", "inflate_2d"]
