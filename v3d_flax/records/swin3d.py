"""torchvision's Video Swin Transformer (Liu et al. 2022): Swin3D-T, -S, -B."""

from v3d_flax.preprocessing import TORCHVISION_ROUNDING, Normalization, Recipe
from v3d_flax.registry import ModelSpec, Published, register_model
from v3d_flax.weights import torchvision_weights

# --- architecture: the tables and rules both frameworks' model files build from ---

PATCH_SIZE = (2, 4, 4)  # (T, H, W) of the patch embedding's strided conv
WINDOW_SIZE = (8, 7, 7)  # (T, H, W) attention window, in tokens
STOCHASTIC_DEPTH_PROB = 0.1  # of the last block; block i of n gets 0.1 * i / (n - 1)
# name -> embedding width, blocks per stage, heads per stage (widths double stage by stage)
SWIN3D = {
    "swin3d_t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "swin3d_s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "swin3d_b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}


def window_and_shift(size, window_size, shift_size):
    """torchvision's rule for one block on a (T, H, W) token map: an axis no longer than the window
    gets a window of the map's length and no shift; the others keep theirs."""
    window, shift = list(window_size), list(shift_size)
    for i, n in enumerate(size):
        if n <= window[i]:
            window[i], shift[i] = n, 0
    return tuple(window), tuple(shift)


def block_shift(block: int, window_size) -> tuple[int, int, int]:
    """The shift of block `block` of a stage: none on even blocks, half a window on odd ones."""
    return tuple(0 if block % 2 == 0 else w // 2 for w in window_size)


# --- records ---

# torchvision's `VideoClassification(crop_size=224, resize_size=256)`: the short side to 256 (the long
# side int(256 * long / short), floored), centre crop 224 (offset int(round(...))); its accuracies are of
# 32-frame clips at 15 fps, 12 clips per video. Normalised with ImageNet's mean and std.
SWIN3D_TEST = Recipe(frames=32, rate=1, resize=256, crop=224, clips=12, crops=1, fps=15.0, resize_rounding="floor",
                     **TORCHVISION_ROUNDING)
IMAGENET = Normalization("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

_VIEWS = "12 clips of 32 frames at 15 fps, video-level"
# torchvision's Kinetics-400 files, with its acc@1, acc@5 and file size (MB)
_WEIGHTS = {
    "swin3d_t": (torchvision_weights("kinetics400", "swin3d_t-7615ae03.pth", top1=77.715, top5=93.519,
                                     size_mb=121.543, views=_VIEWS),),
    "swin3d_s": (torchvision_weights("kinetics400", "swin3d_s-da41c237.pth", top1=79.521, top5=94.158,
                                     size_mb=218.288, views=_VIEWS),),
    "swin3d_b": (torchvision_weights("kinetics400", "swin3d_b_1k-24f7c7c6.pth", top1=79.427, top5=94.386,
                                     size_mb=364.134, views=_VIEWS),
                 torchvision_weights("kinetics400_imagenet22k", "swin3d_b_22k-7c6ae6fa.pth", top1=81.643,
                                     top5=95.574, size_mb=364.134, views=_VIEWS,
                                     notes="initialised from ImageNet-22k before Kinetics-400")),
}

# torchvision's num_params and GFLOPS ("_ops") at 32x224x224; our fvcore-style count (convs and every
# matrix product, the attention's two included) gives the same GMACs.
_PUBLISHED = {"swin3d_t": (28_158_070, 43.882), "swin3d_s": (49_816_678, 82.841), "swin3d_b": (88_048_984, 140.667)}

for _name, (_params, _gmacs) in _PUBLISHED.items():
    register_model(ModelSpec(
        name=_name, factory=f"v3d_flax.models.swin3d:{_name}", clip=(32, 224, 224), recipe=SWIN3D_TEST,
        normalization=IMAGENET, classifier="head", sources=("v3d", "torchvision"),
        published=Published(_params, _gmacs, 400, "torchvision"),
        resize_state="v3d_flax.models.swin3d:resize_state", weights=_WEIGHTS[_name]))
