"""PyTorchVideo's bottleneck ResNets: I3D-R50, Slow-R50, C2D-R50, CSN-R101, R(2+1)D-R50."""

from v3d_flax.preprocessing import PYTORCHVIDEO, PYTORCHVIDEO_ROUNDING, Recipe
from v3d_flax.registry import ModelSpec, Published, register_model

# name: canonical clip, test recipe (frames, rate), the hub head's fixed AvgPool3d kernel at that clip,
# the classifier's index in `blocks` (after a pool block in the nets that pool time after res2),
# published parameters (millions).
_MODELS = {
    "i3d_r50": ((8, 224, 224), (8, 8), (4, 7, 7), 6, 28.04),
    "slow_r50": ((8, 224, 224), (8, 8), (8, 7, 7), 5, 32.45),
    "c2d_r50": ((8, 224, 224), (8, 8), (4, 7, 7), 6, 24.33),
    "csn_r101": ((32, 224, 224), (32, 2), (4, 7, 7), 5, 22.21),
    "r2plus1d_r50": ((16, 224, 224), (16, 4), (4, 7, 7), 5, 28.11),
}

for _name, (_clip, (_frames, _rate), _kernel, _head, _params) in _MODELS.items():
    register_model(ModelSpec(
        name=_name, factory=f"v3d_flax.models.resnet50:{_name}", clip=_clip,
        recipe=Recipe(frames=_frames, rate=_rate, resize=256, crop=256, clips=10, crops=3, **PYTORCHVIDEO_ROUNDING),
        normalization=PYTORCHVIDEO, classifier=f"blocks.{_head}.proj", head_pool_kernel=_kernel,
        sources=("v3d", "pytorchvideo"), published=Published(_params, None, 400, "PyTorchVideo model zoo")))
