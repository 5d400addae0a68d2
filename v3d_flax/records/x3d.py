"""PyTorchVideo's X3D (Feichtenhofer 2020): XS, S, M, L."""

from v3d_flax.preprocessing import PYTORCHVIDEO, PYTORCHVIDEO_ROUNDING, Recipe
from v3d_flax.registry import ModelSpec, Published, register_model

# name: canonical clip (the paper's crops 160/160/224/312), test recipe (frames, rate, short side = crop:
# PyTorchVideo tests XS/S at 182), the hub head's fixed kernel (T, ceil(crop / 32), ceil(crop / 32)),
# published parameters (millions) and GMACs (X3D paper, Table 3, at the canonical clip).
_MODELS = {
    "x3d_xs": ((4, 160, 160), (4, 12, 182), (4, 5, 5), (3.79, 0.60)),
    "x3d_s": ((13, 160, 160), (13, 6, 182), (13, 5, 5), (3.79, 1.96)),
    "x3d_m": ((16, 224, 224), (16, 5, 256), (16, 7, 7), (3.79, 4.73)),
    "x3d_l": ((16, 312, 312), (16, 5, 356), (16, 10, 10), (6.15, 18.37)),
}

for _name, (_clip, (_frames, _rate, _crop), _kernel, _published) in _MODELS.items():
    register_model(ModelSpec(
        name=_name, factory=f"v3d_flax.models.x3d:{_name}", clip=_clip,
        recipe=Recipe(frames=_frames, rate=_rate, resize=_crop, crop=_crop, clips=10, crops=3, **PYTORCHVIDEO_ROUNDING),
        normalization=PYTORCHVIDEO, classifier="blocks.5.proj", head_pool_kernel=_kernel,
        sources=("v3d", "pytorchvideo"), published=Published(*_published, 400, "X3D paper, Table 3")))
