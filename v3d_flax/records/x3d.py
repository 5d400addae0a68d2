"""PyTorchVideo's X3D (Feichtenhofer 2020): XS, S, M, L."""

import math

from v3d_flax.preprocessing import PYTORCHVIDEO, PYTORCHVIDEO_ROUNDING, Recipe
from v3d_flax.registry import ModelSpec, Published, register_model
from v3d_flax.weights import pytorchvideo_weights

# --- architecture: the tables and rules both frameworks' model files build from ---

X3D_DEPTH_FACTORS = {"x3d_xs": 2.2, "x3d_s": 2.2, "x3d_m": 2.2, "x3d_l": 5.0}  # XS/S/M differ in clip only


def round_width(width: float, multiplier: float, min_width: int = 8, divisor: int = 8) -> int:
    """PyTorchVideo's channel rounding: width * multiplier to a multiple of divisor, not below 90%."""
    width *= multiplier
    out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if out < 0.9 * width:
        out += divisor
    return int(out)


def x3d_dims(width_factor: float = 2.0, depth_factor: float = 2.2, bottleneck_factor: float = 2.25,
             stem_dim_in: int = 12):
    """(stem width, [(depth, dim_inner, dim_out) per stage]) as create_x3d computes them."""
    stage_dims = [stem_dim_in]
    for _ in range(3):
        stage_dims.append(round_width(stage_dims[-1], 2.0))
    stages = []
    for base, repeats in zip(stage_dims, (1, 2, 5, 3)):
        dim_out = round_width(base, width_factor)
        stages.append((int(math.ceil(depth_factor * repeats)), int(bottleneck_factor * dim_out), dim_out))
    return round_width(stem_dim_in, width_factor), stages


# --- records ---

# name: canonical clip (the paper's crops 160/160/224/312), test recipe (frames, rate, short side = crop:
# PyTorchVideo tests XS/S at 182), the hub head's fixed kernel (T, ceil(crop / 32), ceil(crop / 32)),
# published parameters (millions) and GMACs (X3D paper, Table 3, at the canonical clip).
_MODELS = {
    "x3d_xs": ((4, 160, 160), (4, 12, 182), (4, 5, 5), (3.79, 0.60)),
    "x3d_s": ((13, 160, 160), (13, 6, 182), (13, 5, 5), (3.79, 1.96)),
    "x3d_m": ((16, 224, 224), (16, 5, 256), (16, 7, 7), (3.79, 4.73)),
    "x3d_l": ((16, 312, 312), (16, 5, 356), (16, 10, 10), (6.15, 18.37)),
}

# PyTorchVideo's Kinetics-400 checkpoints; X3D-L is in its hub, not on its zoo page, the top-1 the X3D paper's.
_WEIGHTS = {
    "x3d_xs": pytorchvideo_weights("kinetics400", "kinetics/X3D_XS.pyth", top1=69.12, top5=88.63),
    "x3d_s": pytorchvideo_weights("kinetics400", "kinetics/X3D_S.pyth", top1=73.33, top5=91.27),
    "x3d_m": pytorchvideo_weights("kinetics400", "kinetics/X3D_M.pyth", top1=75.94, top5=92.72),
    "x3d_l": pytorchvideo_weights("kinetics400", "kinetics/X3D_L.pyth", views=None, top1=77.44,
                                  figures="X3D paper", notes="top-5 and the paper's views not recorded"),
}

for _name, (_clip, (_frames, _rate, _crop), _kernel, _published) in _MODELS.items():
    register_model(ModelSpec(
        name=_name, factory=f"v3d_flax.models.x3d:{_name}", clip=_clip,
        recipe=Recipe(frames=_frames, rate=_rate, resize=_crop, crop=_crop, clips=10, crops=3, **PYTORCHVIDEO_ROUNDING),
        normalization=PYTORCHVIDEO, classifier="blocks.5.proj", head_pool_kernel=_kernel,
        sources=("v3d", "pytorchvideo"), published=Published(*_published, 400, "X3D paper, Table 3"),
        weights=(_WEIGHTS[_name],)))
