"""PyTorchVideo's SlowFast (Feichtenhofer et al. 2019): R50 and R101, alpha 4."""

from v3d_flax.preprocessing import PYTORCHVIDEO, PYTORCHVIDEO_ROUNDING, Recipe
from v3d_flax.registry import ModelSpec, Published, register_model

for _name, _published in (("slowfast_r50", Published(34.57, 65.71, 400, "PyTorchVideo model zoo")),
                          ("slowfast_r101", None)):
    register_model(ModelSpec(
        name=_name, factory=f"v3d_flax.models.slowfast:{_name}", clip=(32, 256, 256),
        recipe=Recipe(frames=32, rate=2, resize=256, crop=256, clips=10, crops=3, pathways=2, alpha=4,
                      **PYTORCHVIDEO_ROUNDING),
        normalization=PYTORCHVIDEO, classifier="blocks.6.proj",
        head_pool_kernel=((8, 7, 7), (32, 7, 7)),  # (slow, fast) at the 256 test crop
        sources=("v3d", "pytorchvideo"), published=_published))
