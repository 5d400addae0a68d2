"""torchvision's video ResNets (Tran et al. 2018): R3D, MC3, R(2+1)D."""

from v3d_flax.preprocessing import TORCHVISION_KINETICS, TORCHVISION_ROUNDING, Recipe
from v3d_flax.registry import ModelSpec, Published, register_model
from v3d_flax.weights import torchvision_weights

# --- architecture: the tables and rules both frameworks' model files build from ---

VIDEO_RESNET_WIDTHS = (64, 128, 256, 512)
_R3D = dict(stem="r3d", conv_kinds=("3d",) * 4)
_MC3 = dict(stem="r3d", conv_kinds=("3d", "no_temporal", "no_temporal", "no_temporal"))
_R2PLUS1D = dict(stem="r2plus1d", conv_kinds=("2plus1d",) * 4)
# name -> the VideoResNet arguments: stem, the residual blocks' conv kind per stage, blocks per stage.
VIDEO_RESNETS = {
    "r3d_18": dict(layers=(2, 2, 2, 2), **_R3D),
    "r3d_34": dict(layers=(3, 4, 6, 3), **_R3D),
    "mc3_18": dict(layers=(2, 2, 2, 2), **_MC3),
    "r2plus1d_18": dict(layers=(2, 2, 2, 2), **_R2PLUS1D),
    "r2plus1d_34": dict(layers=(3, 4, 6, 3), **_R2PLUS1D),
}


# --- records ---

# torchvision's `VideoClassification` preset: resize to 128x171, centre crop 112 (offset int(round(...)));
# clips of 16 frames at 15 fps, 5 clips per video in its published evaluation.
TORCHVISION_TEST = Recipe(frames=16, rate=1, resize=(128, 171), crop=112, clips=5, crops=1, fps=15.0,
                          **TORCHVISION_ROUNDING)
_COMMON = dict(clip=(16, 112, 112), recipe=TORCHVISION_TEST, normalization=TORCHVISION_KINETICS, classifier="fc",
               sources=("v3d", "torchvision"))


# torchvision's Kinetics-400 files, with its acc@1, acc@5 and file size (MB)
_WEIGHTS = {"r3d_18": torchvision_weights("kinetics400", "r3d_18-b3b3357e.pth", top1=63.200, top5=83.479,
                                          size_mb=127.4),
            "mc3_18": torchvision_weights("kinetics400", "mc3_18-a90a0ba3.pth", top1=63.960, top5=84.130,
                                          size_mb=44.7),
            "r2plus1d_18": torchvision_weights("kinetics400", "r2plus1d_18-91a641e6.pth", top1=67.463, top5=86.175,
                                               size_mb=120.3)}

for _name, _published in (("r3d_18", (33_371_472, 40.70)), ("r3d_34", None), ("mc3_18", (11_695_440, 43.34)),
                          ("r2plus1d_18", (31_505_325, 40.52)), ("r2plus1d_34", None)):
    register_model(ModelSpec(
        name=_name, factory=f"v3d_flax.models.resnet3d:{_name}",
        published=Published(*_published, 400, "torchvision") if _published else None,
        weights=(_WEIGHTS[_name],) if _name in _WEIGHTS else (), **_COMMON))
