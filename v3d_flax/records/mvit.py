"""torchvision's Multiscale Vision Transformers (Fan et al. 2021; Li et al. 2022): MViT-B v1, MViTv2-S."""

from __future__ import annotations

from typing import NamedTuple

from v3d_flax.preprocessing import PYTORCHVIDEO, TORCHVISION_ROUNDING, Recipe
from v3d_flax.registry import ModelSpec, Published, register_model
from v3d_flax.weights import torchvision_weights

# --- architecture: the tables and rules both frameworks' model files build from ---


class BlockConfig(NamedTuple):
    """One MultiscaleBlock: heads, channels in and out, Q and K/V pooling kernels and strides (T, H, W).
    torchvision's empty kernel / stride lists (no pooling) are (1, 1, 1) here: the same network."""

    num_heads: int
    dim_in: int
    dim_out: int
    kernel_q: tuple[int, int, int]
    kernel_kv: tuple[int, int, int]
    stride_q: tuple[int, int, int]
    stride_kv: tuple[int, int, int]


_HEADS = (1, 2, 2) + (4,) * 11 + (8, 8)
_STRIDE_KV = ((1, 8, 8),) + ((1, 4, 4),) * 2 + ((1, 2, 2),) * 11 + ((1, 1, 1),) * 2
_Q_POOLED = (1, 3, 14)  # the blocks that halve H and W (the stage transitions)
_ONE, _THREE, _HALF = (1, 1, 1), (3, 3, 3), (1, 2, 2)


def _blocks(dims_in, dims_out, kernel_q_everywhere: bool) -> tuple[BlockConfig, ...]:
    return tuple(BlockConfig(_HEADS[i], dims_in[i], dims_out[i],
                             _THREE if kernel_q_everywhere or i in _Q_POOLED else _ONE, _THREE,
                             _HALF if i in _Q_POOLED else _ONE, _STRIDE_KV[i]) for i in range(16))


# name -> the MViT arguments of torchvision's mvit_v1_b / mvit_v2_s builders
MVIT_CONFIGS = {
    "mvit_v1_b": dict(
        blocks=_blocks((96,) + (192,) * 2 + (384,) * 11 + (768,) * 2, (192,) * 2 + (384,) * 11 + (768,) * 3, False),
        residual_pool=False, residual_with_cls_embed=False, rel_pos_embed=False, proj_after_attn=False),
    "mvit_v2_s": dict(
        blocks=_blocks((96,) * 2 + (192,) * 2 + (384,) * 11 + (768,), (96,) + (192,) * 2 + (384,) * 11 + (768,) * 2,
                       True),
        residual_pool=True, residual_with_cls_embed=False, rel_pos_embed=True, proj_after_attn=True),
}
PATCH_KERNEL, PATCH_STRIDE, PATCH_PADDING = (3, 7, 7), (2, 4, 4), (1, 3, 3)


def pooled(grid, kernel, stride):
    """The (T, H, W) grid after a pooling conv (padding kernel // 2) of `kernel` and `stride`."""
    return tuple((n + 2 * (k // 2) - k) // s + 1 for n, k, s in zip(grid, kernel, stride))


def patch_grid(num_frames: int, crop_size: int) -> tuple[int, int, int]:
    """The token grid after `conv_proj`; ValueError unless it is torchvision's (T / 2, S / 4, S / 4),
    which its position tables and token reshapes assume (an even clip length, a crop divisible by 4)."""
    if num_frames < 2 or num_frames % 2 or crop_size < 4 or crop_size % 4:
        raise ValueError(f"MViT takes an even num_frames and a crop_size divisible by 4 (its patch grid is "
                         f"T/2 x S/4 x S/4), got num_frames={num_frames}, crop_size={crop_size}")
    return num_frames // 2, crop_size // 4, crop_size // 4


def block_grids(blocks, num_frames: int, crop_size: int):
    """Per block: (its input grid, its K/V grid, its output grid, torchvision's `input_size` for it).

    The grids follow the pooling convs; torchvision sizes the v2 relative position tables from its own
    running `input_size` (floor division by the Q stride), which differs from the pooled grid for odd
    sizes; the attention then interpolates the tables to the grids, as torchvision does."""
    grid = table = patch_grid(num_frames, crop_size)
    out = []
    for cfg in blocks:
        q = pooled(grid, cfg.kernel_q, cfg.stride_q)
        out.append((grid, pooled(grid, cfg.kernel_kv, cfg.stride_kv), q, table))
        grid, table = q, tuple(n // s for n, s in zip(table, cfg.stride_q))
    return out


def rel_pos_lengths(table_grid, cfg: BlockConfig) -> tuple[int, int]:
    """torchvision's (spatial, temporal) lengths of a block's rel_pos_h/w and rel_pos_t tables."""
    size = max(table_grid[1:])
    spatial = 2 * max(size // cfg.stride_q[1], size // cfg.stride_kv[1]) - 1
    return spatial, 2 * table_grid[0] - 1


# --- records ---

# torchvision's weights' transforms: VideoClassification(resize_size=(256,), crop_size=(224, 224)),
# mean 0.45 and std 0.225; its figures are video-level, 16-frame clips at 7.5 fps, 5 clips per video.
# F.resize gives the long side int(256 * long / short): the floor (ours divides first: the same up
# to one float rounding at exact integers).
TORCHVISION_MVIT_TEST = Recipe(frames=16, rate=1, resize=256, crop=224, clips=5, crops=1, fps=7.5,
                               resize_rounding="floor", **TORCHVISION_ROUNDING)

_WEIGHTS = {
    "mvit_v1_b": torchvision_weights("kinetics400", "mvit_v1_b-dbeb1030.pth", top1=78.477, top5=93.582,
                                     size_mb=139.8),
    "mvit_v2_s": torchvision_weights("kinetics400", "mvit_v2_s-ae3be167.pth", top1=80.757, top5=94.665,
                                     size_mb=131.9),
}
# torchvision's num_params and GFLOPS (fvcore's count: multiply-adds of convs, linears and attention
# matmuls, the v2 relative-position einsums included) at 16x224x224
_PUBLISHED = {"mvit_v1_b": (36_610_672, 70.599), "mvit_v2_s": (34_537_744, 64.224)}

for _name, _published in _PUBLISHED.items():
    register_model(ModelSpec(
        name=_name, factory=f"v3d_flax.models.mvit:{_name}", clip=(16, 224, 224), recipe=TORCHVISION_MVIT_TEST,
        normalization=PYTORCHVIDEO, classifier="head.1", sources=("v3d", "torchvision"),
        clip_kwargs=("num_frames", "crop_size"), published=Published(*_published, 400, "torchvision"),
        resize_state="v3d_flax.models.mvit:resize_state", weights=(_WEIGHTS[_name],)))
