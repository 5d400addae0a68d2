"""C3D (Tran et al. 2015): the Sports-1M model of the C3D paper, in DavideA/c3d-pytorch's layout."""

from v3d_flax.preprocessing import TORCHVISION_KINETICS, Recipe
from v3d_flax.registry import ModelSpec, Published, register_model
from v3d_flax.weights import Weights, WeightsFile

# --- architecture: the tables and rules both frameworks' model files build from ---

# (name, out channels) of the eight 3x3x3 convs, and the max-pool (name, kernel = stride, padding)
# after a stage.
C3D_CONVS = (("conv1", 64), ("conv2", 128), ("conv3a", 256), ("conv3b", 256),
             ("conv4a", 512), ("conv4b", 512), ("conv5a", 512), ("conv5b", 512))
C3D_POOLS = {"conv1": ("pool1", (1, 2, 2), (0, 0, 0)), "conv2": ("pool2", (2, 2, 2), (0, 0, 0)),
             "conv3b": ("pool3", (2, 2, 2), (0, 0, 0)), "conv4b": ("pool4", (2, 2, 2), (0, 0, 0)),
             "conv5b": ("pool5", (2, 2, 2), (0, 1, 1))}


def c3d_convs(in_channels: int = 3) -> list[tuple[str, int, int]]:
    """(name, in, out) of C3D's eight convs for `in_channels` input channels."""
    convs, cin = [], in_channels
    for name, cout in C3D_CONVS:
        convs.append((name, cin, cout))
        cin = cout
    return convs


def c3d_pooled_shape(num_frames: int, crop_size: int) -> tuple[int, int, int]:
    """(T, H, W) after pool5 for a num_frames x crop_size x crop_size clip (convs keep the size)."""
    t, h, w = num_frames, crop_size, crop_size
    for _, kernel, pad in C3D_POOLS.values():
        t, h, w = ((n + 2 * p - k) // k + 1 for n, k, p in zip((t, h, w), kernel, pad))
    if min(t, h, w) < 1:
        raise ValueError(f"C3D needs clips of at least 16 frames and 16x16 pixels, "
                         f"got {num_frames}x{crop_size}x{crop_size}")
    return t, h, w


# --- records ---

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
    # minutes on a CPU (with SGD, or dropout 0.5, it stays near chance; see the README).
    cpu_defaults=dict(steps=500, optimizer="adamw", lr=1e-4, warmup_steps=30, label_smoothing=0.0, dropout=0.0),
    published=Published(79_991_015, 38.55, 487, "C3D paper / DavideA's c3d.pickle"),
    weights=(Weights(
        name="sports1m",
        # the address DavideA/c3d-pytorch's README gives; the host serves it over plain http only
        files=(WeightsFile("http://imagelab.ing.unimore.it/files/c3d_pytorch/c3d.pickle"),),
        source="c3d-sports1m", file_format="PyTorch state_dict (torch.save) of the Caffe C3D: conv1..conv5b, fc6..fc8",
        dataset="Sports-1M", num_classes=487, classes="sports1m", repository="https://github.com/DavideA/c3d-pytorch",
        license="repository: MIT (its LICENSE)",
        notes="trained on Caffe inputs (0-255 minus the mean clip; the mean clip is not shipped), which the default "
              "normalisation does not reproduce; class names: the repository's labels.txt; no accuracy, checksum or "
              "file size published; served over plain http (its SHA-256 is recorded at the first download)"),),
))
