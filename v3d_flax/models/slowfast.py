"""SlowFast (PyTorchVideo's create_slowfast) in Flax NNX, NDHWC; module paths equal PyTorchVideo's keys.

Input: a (slow, fast) pair of NDHWC clips, the fast one `alpha` times longer (PyTorchVideo's order);
`pack_pathways` makes the pair from one clip exactly as PyTorchVideo's PackPathway transform does.
Each pathway's stem and stages are the ResNet-50 family's (`v3d_flax.models.resnet50`: `Stem`,
`ResStage` of 1x3x3 bottlenecks), as PyTorchVideo builds both from the same blocks.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from v3d_flax.records.slowfast import SLOWFAST_ALPHA, SLOWFAST_CONV_A_KT, SLOWFAST_MODELS, slowfast_stages
from v3d_flax.layers import BatchNorm, Conv3d, Linear, avg_pool3d, check_video_input
from v3d_flax.models.resnet50 import ResStage, Stem


def slow_indices(num_frames: int, alpha: int = SLOWFAST_ALPHA) -> np.ndarray:
    """Frame indices of the slow pathway: PyTorchVideo's uniform_temporal_subsample of T // alpha frames.

    That is torch.linspace(0, T - 1, n) cast to long (truncation). torch computes linspace in float32
    as start + i * step for the first half and end - (n - 1 - i) * step for the second half, so the
    same float32 arithmetic is reproduced here to truncate exactly as torch does.
    """
    n = num_frames // alpha
    if num_frames < 1 or n < 1:
        raise ValueError(f"need at least alpha={alpha} frames to build the slow pathway, got {num_frames}")
    if n == 1:
        return np.zeros(1, np.int64)
    start, end = np.float32(0), np.float32(num_frames - 1)
    step = np.float32((end - start) / np.float32(n - 1))
    i = np.arange(n)
    half = n // 2
    values = np.where(i < half, start + step * i.astype(np.float32),
                      end - step * (n - 1 - i).astype(np.float32)).astype(np.float32)
    return np.clip(values, 0, num_frames - 1).astype(np.int64)


def pack_pathways(clip, alpha: int = SLOWFAST_ALPHA):
    """(slow, fast) from one NDHWC clip (numpy or jax) of T frames: fast is the clip, slow its
    T // alpha frames at `slow_indices(T, alpha)` (PyTorchVideo's PackPathway)."""
    if getattr(clip, "ndim", None) != 5:
        raise ValueError(f"pack_pathways expects an NDHWC clip (batch, frames, height, width, channels), "
                         f"got shape {getattr(clip, 'shape', type(clip))}")
    idx = slow_indices(clip.shape[1], alpha)
    return clip[:, idx], clip


class FuseFastToSlow(nnx.Module):
    """Lateral connection: a strided temporal conv of the fast features, concatenated to the slow ones."""

    def __init__(self, fast_dim: int, ratio: int, kt: int, alpha: int, *, rngs: nnx.Rngs):
        self.conv_fast_to_slow = Conv3d(fast_dim, fast_dim * ratio, (kt, 1, 1), (alpha, 1, 1), (kt // 2, 0, 0),
                                        rngs=rngs)
        self.norm = BatchNorm(fast_dim * ratio)

    def __call__(self, x):
        slow, fast = x
        fuse = jax.nn.relu(self.norm(self.conv_fast_to_slow(fast)))
        if fuse.shape[1] != slow.shape[1]:
            raise ValueError(f"SlowFast fusion: the fast pathway gives {fuse.shape[1]} frames after its temporal "
                             f"stride but the slow pathway has {slow.shape[1]}; give the fast clip alpha x the "
                             f"slow clip's frames")
        return jnp.concatenate([slow, fuse], axis=-1), fast


class MultiPathWayWithFuse(nnx.Module):
    def __init__(self, multipathway_blocks: list, multipathway_fusion):
        self.multipathway_blocks = nnx.List(multipathway_blocks)
        self.multipathway_fusion = multipathway_fusion

    def __call__(self, x):
        x = tuple(block(xi) for block, xi in zip(self.multipathway_blocks, x))
        return x if self.multipathway_fusion is None else self.multipathway_fusion(x)


class PoolConcatPathway(nnx.Module):
    """Average each pathway's final map (globally, or with a fixed stride-1 kernel) and concatenate."""

    def __init__(self, pool_kernel=None):
        self.pool_kernel = None if pool_kernel is None else tuple(tuple(k) for k in pool_kernel)

    def __call__(self, x):
        if self.pool_kernel is None:
            pooled = [jnp.mean(xi, axis=(1, 2, 3), keepdims=True) for xi in x]
        else:
            maps = [tuple(xi.shape[1:4]) for xi in x]
            if any(k > n for m, kernel in zip(maps, self.pool_kernel) for k, n in zip(kernel, m)):
                raise ValueError(f"SlowFast head_pool_kernel {self.pool_kernel}: the kernels exceed the final maps "
                                 f"{maps}; use bigger clips or head_pool_kernel=None (global pooling)")
            pooled = [avg_pool3d(xi, k, 1) for xi, k in zip(x, self.pool_kernel)]
            if len({p.shape[1:4] for p in pooled}) != 1:
                raise ValueError(f"SlowFast head_pool_kernel {self.pool_kernel}: the kernels pool the final maps "
                                 f"{maps} to different sizes {[p.shape[1:4] for p in pooled]}")
        return jnp.concatenate(pooled, axis=-1)


class Head(nnx.Module):
    def __init__(self, in_features: int, num_classes: int, dropout: float, *, rngs: nnx.Rngs):
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.proj = Linear(in_features, num_classes, rngs=rngs)

    def __call__(self, x):
        """(B, t, h, w, C) pooled map -> logits averaged over its t*h*w positions."""
        return jnp.mean(self.proj(self.dropout(x)), axis=(1, 2, 3))


class SlowFast(nnx.Module):
    """Two-pathway ResNet (slow: few frames, wide; fast: `alpha` x frames, `beta_inv` x thinner).

    Called on a (slow, fast) pair of NDHWC clips, or on one clip (the fast pathway), which is split
    with `pack_pathways` as PyTorchVideo's transform does. `head_pool_kernel=None` averages each
    pathway's last map globally (any clip size); PyTorchVideo's hub models use a fixed stride-1
    kernel per pathway, the record's `head_pool_kernel` (pass it as a (slow, fast) pair to reproduce
    its outputs at other sizes, e.g. its 256 test crops).
    """

    def __init__(self, *, depth: int = 50, num_classes: int = 400, alpha: int = SLOWFAST_ALPHA, beta_inv: int = 8,
                 fusion_ratio: int = 2, fusion_kernel: int = 7, dropout: float = 0.5, in_channels: int = 3,
                 head_pool_kernel=None, rngs: nnx.Rngs):
        stages = slowfast_stages(depth, beta_inv, fusion_ratio)
        self.alpha, self.in_channels = alpha, in_channels
        slow_dim, fast_dim = 64, 64 // beta_inv
        fuse = partial(FuseFastToSlow, ratio=fusion_ratio, kt=fusion_kernel, alpha=alpha, rngs=rngs)
        blocks = [MultiPathWayWithFuse([Stem(in_channels, slow_dim, 1, True, rngs=rngs),
                                        Stem(in_channels, fast_dim, 5, True, rngs=rngs)], fuse(fast_dim))]
        for i, (depth_i, spatial_stride, slow_dims, fast_dims) in enumerate(stages):
            stride = (1, spatial_stride, spatial_stride)
            slow = ResStage(depth_i, *slow_dims, (SLOWFAST_CONV_A_KT["slow"][i],), "spatial", stride, rngs=rngs)
            fast = ResStage(depth_i, *fast_dims, (SLOWFAST_CONV_A_KT["fast"][i],), "spatial", stride, rngs=rngs)
            blocks.append(MultiPathWayWithFuse([slow, fast], fuse(fast_dims[-1]) if i < 3 else None))
        blocks.append(PoolConcatPathway(head_pool_kernel))
        self.num_features = stages[-1][2][-1] + stages[-1][3][-1]  # res5's slow + fast widths
        blocks.append(Head(self.num_features, num_classes, dropout, rngs=rngs))
        self.blocks = nnx.List(blocks)

    def _check(self, x):
        if getattr(x, "ndim", None) == 5:  # one clip, as a generic training loop feeds it: pack it
            x = pack_pathways(x, self.alpha)
        if not isinstance(x, (tuple, list)) or len(x) != 2:
            raise ValueError("SlowFast expects a (slow, fast) pair of NDHWC clips, or one NDHWC clip that "
                             f"pack_pathways splits, got {getattr(x, 'shape', type(x).__name__)}")
        slow, fast = x
        check_video_input(slow, channels=self.in_channels, name="SlowFast (slow pathway)")
        check_video_input(fast, channels=self.in_channels, name="SlowFast (fast pathway)")
        if fast.shape[1] != slow.shape[1] * self.alpha or fast.shape[0] != slow.shape[0]:
            raise ValueError(f"SlowFast: the fast clip must have alpha={self.alpha} x the slow clip's frames "
                             f"(and the same batch), got slow {tuple(slow.shape)} and fast {tuple(fast.shape)}")
        return tuple(x)

    def forward_map(self, x) -> tuple[jax.Array, jax.Array]:
        """The last stage's (slow, fast) feature maps, (B, t, h, w, 2048) and (B, alpha t, h, w, 256)."""
        x = self._check(x)
        for block in list(self.blocks)[:5]:
            x = block(x)
        return x

    def forward_features(self, x) -> jax.Array:
        """Pooled features (B, slow + fast channels) before dropout and the classifier."""
        return jnp.mean(self.blocks[5](self.forward_map(x)), axis=(1, 2, 3))

    def __call__(self, x) -> jax.Array:
        return self.blocks[6](self.blocks[5](self.forward_map(x)))


slowfast_r50 = partial(SlowFast, **SLOWFAST_MODELS["slowfast_r50"])
slowfast_r101 = partial(SlowFast, **SLOWFAST_MODELS["slowfast_r101"])
