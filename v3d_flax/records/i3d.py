"""DeepMind's Inception-v1 I3D (Carreira & Zisserman 2017), in piergiaj/pytorch-i3d's layout."""

from v3d_flax.preprocessing import DEEPMIND, TORCHVISION_ROUNDING, Recipe
from v3d_flax.registry import ModelSpec, Published, register_model

register_model(ModelSpec(
    name="i3d",
    factory="v3d_flax.models.i3d:i3d",
    clip=(64, 224, 224),
    # DeepMind publishes "short side 256, centre crop 224" without the rounding: the nearest long side
    # and torchvision's centre rule are kept.
    recipe=Recipe(frames=64, rate=1, resize=256, crop=224, clips=1, crops=1, fps=25.0, resize_rounding="round",
                  **TORCHVISION_ROUNDING),
    normalization=DEEPMIND,
    classifier="logits.conv3d",
    sources=("v3d", "pytorch-i3d"),
    published=Published(12_697_264, None, 400, "piergiaj/pytorch-i3d (no MAC count published)"),
))
