"""torchvision's S3D (Xie et al. 2018, "Rethinking Spatiotemporal Feature Learning"): Inception-v1 with
every 3x3x3 / 7x7x7 conv separated into a 1xkxk spatial and a kx1x1 temporal conv.

torchvision's S3D has no feature gating: it is the paper's plain S3D, not S3D-G (whose self-gating
multiplies features by a sigmoid of their pooled context); nothing here gates either.
"""

from v3d_flax.preprocessing import TORCHVISION_KINETICS, TORCHVISION_ROUNDING, Recipe
from v3d_flax.registry import ModelSpec, Published, register_model
from v3d_flax.weights import torchvision_weights

# --- architecture: the tables and rules both frameworks' model files build from ---

S3D_BN_EPS = 1e-3
S3D_BN_MOMENTUM = 0.001  # PyTorch's convention (weight of the new batch)
S3D_DROPOUT = 0.2
S3D_HEAD_POOL = (2, 7, 7)  # the head's AvgPool3d window (stride 1, no padding)
S3D_NUM_FEATURES = 1024

# `features`, index by index:
#   ("sep", out, k, stride, pad): a separable conv, 1xkxk (stride (1, s, s), pad (0, p, p)) then kx1x1
#                                 (stride (s, 1, 1), pad (p, 0, 0)), each conv-BN-ReLU;
#   ("conv", out): a 1x1x1 conv-BN-ReLU;
#   ("pool", kernel, stride, pad): a max-pool (floor mode, padded with -inf);
#   ("inception", (b0, b1_mid, b1_out, b2_mid, b2_out, b3)): a separable Inception block.
S3D_FEATURES = (
    ("sep", 64, 7, 2, 3),
    ("pool", (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ("conv", 64),
    ("sep", 192, 3, 1, 1),
    ("pool", (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ("inception", (64, 96, 128, 16, 32, 32)),
    ("inception", (128, 128, 192, 32, 96, 64)),
    ("pool", (3, 3, 3), (2, 2, 2), (1, 1, 1)),
    ("inception", (192, 96, 208, 16, 48, 64)),
    ("inception", (160, 112, 224, 24, 64, 64)),
    ("inception", (128, 128, 256, 24, 64, 64)),
    ("inception", (112, 144, 288, 32, 64, 64)),
    ("inception", (256, 160, 320, 32, 128, 128)),
    ("pool", (2, 2, 2), (2, 2, 2), (0, 0, 0)),
    ("inception", (256, 160, 320, 32, 128, 128)),
    ("inception", (384, 192, 384, 48, 128, 128)),
)


def inception_out(widths: tuple[int, ...]) -> int:
    """Channels a separable Inception block of `widths` concatenates: b0 + b1_out + b2_out + b3."""
    b0, _, b1, _, b2, b3 = widths
    return b0 + b1 + b2 + b3


def _out(n: int, kernel: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - kernel) // stride + 1


def s3d_map_size(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """(t, h, w) of the trunk's last map for a frames x height x width clip (a size below 1: no map)."""
    size = [frames, height, width]
    for layer in S3D_FEATURES:
        if layer[0] == "sep":
            _, _, k, s, p = layer
            size = [_out(size[0], k, s, p), _out(size[1], k, s, p), _out(size[2], k, s, p)]
        elif layer[0] == "pool":
            _, kernel, stride, pad = layer
            size = [_out(n, k, s, p) for n, k, s, p in zip(size, kernel, stride, pad)]
    return tuple(size)


def _smallest(axis: int, need: int) -> int:
    """The smallest input size along `axis` (0: frames, 1: height, 2: width) whose map is >= `need` there."""
    return next(n for n in range(1, 4096) if s3d_map_size(*(n if a == axis else 4096 for a in range(3)))[axis] >= need)


def s3d_min_clip(kernel: tuple[int, int, int] = S3D_HEAD_POOL) -> tuple[int, int]:
    """(frames, side): the shortest clip and the smallest square crop whose trunk map covers `kernel`.

    torchvision's weights metadata documents 14 frames and 224x224 (`min_temporal_size`, `min_size`) for
    its (2, 7, 7) head; the arithmetic gives 13 frames and 209 pixels (torchvision runs them too).
    """
    return _smallest(0, kernel[0]), max(_smallest(1, kernel[1]), _smallest(2, kernel[2]))


def check_s3d_clip(shape: tuple[int, ...], kernel: tuple[int, int, int] | None, name: str = "S3D") -> None:
    """ValueError unless an NDHWC clip of `shape` leaves the trunk a map that covers the head's `kernel`
    (None: global pooling, any map of at least one position), naming the smallest clip the model takes."""
    t, h, w = shape[1:4]
    size = s3d_map_size(t, h, w)
    need = (1, 1, 1) if kernel is None else tuple(kernel)
    if any(n < k for n, k in zip(size, need)):
        frames, height, width = (_smallest(a, k) for a, k in enumerate(need))
        pool = "global pooling" if kernel is None else f"head_pool_kernel {tuple(kernel)}"
        raise ValueError(f"{name} with {pool} takes clips of at least {frames} frames and {height}x{width} pixels "
                         f"(the trunk's map must be at least {need}); got {t}x{h}x{w} frames x pixels, whose map "
                         f"is {size}")


# --- records ---

# torchvision's `VideoClassification(resize_size=(256, 256), crop_size=(224, 224))`: every frame resized
# to 256x256 (aspect not kept), centre crop 224. Its published accuracy is clip-level: one clip of 128
# frames at 15 fps per video (torchvision's UniformClipSampler takes the video's first clip; v3d centres
# its one clip).
TORCHVISION_S3D_TEST = Recipe(frames=128, rate=1, resize=(256, 256), crop=224, clips=1, crops=1, fps=15.0,
                              **TORCHVISION_ROUNDING)

register_model(ModelSpec(
    name="s3d", factory="v3d_flax.models.s3d:s3d",
    clip=(16, 224, 224),  # torchvision's params / GFLOPS are counted at this clip
    recipe=TORCHVISION_S3D_TEST, normalization=TORCHVISION_KINETICS, classifier="classifier.1",
    head_pool_kernel=S3D_HEAD_POOL, sources=("v3d", "torchvision"),
    published=Published(8_320_048, 17.98, 400, "torchvision"),
    weights=(torchvision_weights("kinetics400", "s3d-d76dad2f.pth", top1=68.368, top5=88.050, size_mb=32.0,
                                 views="1 clip of 128 frames at 15 fps, clip-level"),)))
