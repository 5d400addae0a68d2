"""C3D (Tran et al. 2015): the Sports-1M model of the C3D paper, in DavideA/c3d-pytorch's layout."""

from v3d_flax.preprocessing import TORCHVISION_KINETICS, Recipe
from v3d_flax.registry import ModelSpec, Published, register_model

register_model(ModelSpec(
    name="c3d",
    factory="v3d_flax.models.c3d:c3d",
    clip=(16, 112, 112),
    # Caffe's VideoDataLayer: frames resized to 128x171, crops at (side - crop) / 2 in integer arithmetic.
    recipe=Recipe(frames=16, rate=1, resize=(128, 171), crop=112, clips=10, crops=1,
                  center_rounding="floor", three_crop_rounding="floor"),
    # The Sports-1M weights were trained on Caffe inputs (0-255 minus a mean clip, no std), which no
    # normalisation of [0, 1] RGB reproduces; models trained here follow torchvision's video convention.
    normalization=TORCHVISION_KINETICS,
    classifier="fc8",
    num_classes=487,
    sources=("v3d", "c3d-sports1m"),
    clip_kwargs=("num_frames", "crop_size"),  # fc6's fan-in follows the clip
    feature_layers=("fc7", "fc6"),
    # No normalisation layers: from scratch it needs AdamW at a small rate and no dropout to learn within
    # minutes on a CPU (SGD, or dropout 0.5, left it near chance after 200 steps; see the README).
    cpu_defaults=dict(steps=500, optimizer="adamw", lr=1e-4, warmup_steps=30, label_smoothing=0.0, dropout=0.0),
    published=Published(79_991_015, 38.55, 487, "C3D paper / DavideA's c3d.pickle"),
))
