"""torchvision's video ResNets (Tran et al. 2018): R3D, MC3, R(2+1)D."""

from v3d_flax.preprocessing import TORCHVISION_KINETICS, TORCHVISION_ROUNDING, Recipe
from v3d_flax.registry import ModelSpec, Published, register_model

# torchvision's `VideoClassification` preset: resize to 128x171, centre crop 112 (offset int(round(...)));
# clips of 16 frames at 15 fps, 5 clips per video in its published evaluation.
TORCHVISION_TEST = Recipe(frames=16, rate=1, resize=(128, 171), crop=112, clips=5, crops=1, fps=15.0,
                          **TORCHVISION_ROUNDING)
_COMMON = dict(clip=(16, 112, 112), recipe=TORCHVISION_TEST, normalization=TORCHVISION_KINETICS, classifier="fc",
               sources=("v3d", "torchvision"))

for _name, _published in (("r3d_18", (33_371_472, 40.70)), ("r3d_34", None), ("mc3_18", (11_695_440, 43.34)),
                          ("r2plus1d_18", (31_505_325, 40.52)), ("r2plus1d_34", None)):
    register_model(ModelSpec(
        name=_name, factory=f"v3d_flax.models.resnet3d:{_name}",
        published=Published(*_published, 400, "torchvision") if _published else None, **_COMMON))
