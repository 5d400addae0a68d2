"""SlowFast (PyTorchVideo's create_slowfast) in Flax NNX, NDHWC; module paths equal PyTorchVideo's keys.

Input: a (slow, fast) pair of NDHWC clips, the fast one `alpha` times longer (PyTorchVideo's order);
`pack_pathways` makes the pair from one clip exactly as PyTorchVideo's PackPathway transform does.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from v3d_flax.layers import BatchNorm, Conv3d, Linear, avg_pool3d, check_video_input, max_pool3d

SLOW_CONV_A_T = (1, 1, 3, 3)  # temporal kernel of conv_a in res2..res5, slow pathway
FAST_CONV_A_T = (3, 3, 3, 3)
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
ALPHA = 4  # frame-rate ratio fast / slow of the published models
# PyTorchVideo's hub SlowFast heads average with these fixed stride-1 kernels (built for 8/32 x 224);
# pass them as head_pool_kernels to reproduce its outputs exactly at other sizes (its 256 test crops).
PYTORCHVIDEO_HEAD_POOL_KERNELS = ((8, 7, 7), (32, 7, 7))


def slow_indices(num_frames: int, alpha: int = ALPHA) -> np.ndarray:
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


def pack_pathways(clip, alpha: int = ALPHA):
    """(slow, fast) from one NDHWC clip (numpy or jax) of T frames: fast is the clip, slow its
    T // alpha frames at `slow_indices(T, alpha)` (PyTorchVideo's PackPathway)."""
    if getattr(clip, "ndim", None) != 5:
        raise ValueError(f"pack_pathways expects an NDHWC clip (batch, frames, height, width, channels), "
                         f"got shape {getattr(clip, 'shape', type(clip))}")
    idx = slow_indices(clip.shape[1], alpha)
    return clip[:, idx], clip


class Bottleneck(nnx.Module):
    """conv_a (kT x 1 x 1) - BN - ReLU - conv_b (1 x 3 x 3, spatial stride) - BN - ReLU - conv_c (1x1x1) - BN."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, kt: int, stride: int, *, rngs: nnx.Rngs):
        self.conv_a = Conv3d(dim_in, dim_inner, (kt, 1, 1), 1, (kt // 2, 0, 0), rngs=rngs)
        self.norm_a = BatchNorm(dim_inner)
        self.conv_b = Conv3d(dim_inner, dim_inner, (1, 3, 3), (1, stride, stride), (0, 1, 1), rngs=rngs)
        self.norm_b = BatchNorm(dim_inner)
        self.conv_c = Conv3d(dim_inner, dim_out, 1, rngs=rngs)
        self.norm_c = BatchNorm(dim_out)

    def __call__(self, x):
        x = jax.nn.relu(self.norm_a(self.conv_a(x)))
        x = jax.nn.relu(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class ResBlock(nnx.Module):
    """branch2(x) + shortcut(x), ReLU; the shortcut is a strided 1x1x1 conv + BN when shapes change."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, kt: int, stride: int, *, rngs: nnx.Rngs):
        project = dim_in != dim_out or stride != 1
        self.branch1_conv = Conv3d(dim_in, dim_out, 1, (1, stride, stride), rngs=rngs) if project else None
        self.branch1_norm = BatchNorm(dim_out) if project else None
        self.branch2 = Bottleneck(dim_in, dim_inner, dim_out, kt, stride, rngs=rngs)

    def __call__(self, x):
        shortcut = x if self.branch1_conv is None else self.branch1_norm(self.branch1_conv(x))
        return jax.nn.relu(self.branch2(x) + shortcut)


class ResStage(nnx.Module):
    def __init__(self, depth: int, dim_in: int, dim_inner: int, dim_out: int, kt: int, stride: int, *,
                 rngs: nnx.Rngs):
        self.res_blocks = nnx.List(
            [ResBlock(dim_in if i == 0 else dim_out, dim_inner, dim_out, kt, stride if i == 0 else 1, rngs=rngs)
             for i in range(depth)])

    def __call__(self, x):
        for block in self.res_blocks:
            x = block(x)
        return x


class Stem(nnx.Module):
    """conv (kT x 7 x 7, spatial stride 2) - BN - ReLU - max-pool (1 x 3 x 3, spatial stride 2)."""

    def __init__(self, in_channels: int, out_channels: int, kt: int, *, rngs: nnx.Rngs):
        self.conv = Conv3d(in_channels, out_channels, (kt, 7, 7), (1, 2, 2), (kt // 2, 3, 3), rngs=rngs)
        self.norm = BatchNorm(out_channels)

    def __call__(self, x):
        return max_pool3d(jax.nn.relu(self.norm(self.conv(x))), (1, 3, 3), (1, 2, 2), (0, 1, 1))


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

    def __init__(self, pool_kernels=None):
        self.pool_kernels = None if pool_kernels is None else tuple(tuple(k) for k in pool_kernels)

    def __call__(self, x):
        if self.pool_kernels is None:
            pooled = [jnp.mean(xi, axis=(1, 2, 3), keepdims=True) for xi in x]
        else:
            maps = [tuple(xi.shape[1:4]) for xi in x]
            if any(k > n for m, kernel in zip(maps, self.pool_kernels) for k, n in zip(kernel, m)):
                raise ValueError(f"SlowFast head_pool_kernels {self.pool_kernels} exceed the final maps {maps}; "
                                 "use bigger clips or head_pool_kernels=None (global pooling)")
            pooled = [avg_pool3d(xi, k, 1) for xi, k in zip(x, self.pool_kernels)]
            if len({p.shape[1:4] for p in pooled}) != 1:
                raise ValueError(f"SlowFast head_pool_kernels {self.pool_kernels} pool the final maps {maps} "
                                 f"to different sizes {[p.shape[1:4] for p in pooled]}")
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
    with `pack_pathways` as PyTorchVideo's transform does. `head_pool_kernels=None` averages each
    pathway's last map globally (any clip size); PyTorchVideo's hub models use fixed stride-1
    kernels `PYTORCHVIDEO_HEAD_POOL_KERNELS` (pass them to reproduce its outputs at other sizes,
    e.g. its 256 test crops).
    """

    def __init__(self, *, depth: int = 50, num_classes: int = 400, alpha: int = ALPHA, beta_inv: int = 8,
                 fusion_ratio: int = 2, fusion_kernel: int = 7, dropout: float = 0.5, in_channels: int = 3,
                 head_pool_kernels=None, rngs: nnx.Rngs):
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth}")
        self.alpha, self.in_channels = alpha, in_channels
        slow_dim, fast_dim = 64, 64 // beta_inv
        fuse = partial(FuseFastToSlow, ratio=fusion_ratio, kt=fusion_kernel, alpha=alpha, rngs=rngs)
        blocks = [MultiPathWayWithFuse([Stem(in_channels, slow_dim, 1, rngs=rngs),
                                        Stem(in_channels, fast_dim, 5, rngs=rngs)], fuse(fast_dim))]
        dim_in, dim_out = slow_dim, 256
        for i, depth_i in enumerate(DEPTHS[depth]):
            stride = 1 if i == 0 else 2
            slow = ResStage(depth_i, dim_in + dim_in * fusion_ratio // beta_inv, dim_out // 4, dim_out,
                            SLOW_CONV_A_T[i], stride, rngs=rngs)
            fast = ResStage(depth_i, dim_in // beta_inv, dim_out // 4 // beta_inv, dim_out // beta_inv,
                            FAST_CONV_A_T[i], stride, rngs=rngs)
            blocks.append(MultiPathWayWithFuse([slow, fast], fuse(dim_out // beta_inv) if i < 3 else None))
            dim_in, dim_out = dim_out, dim_out * 2
        blocks.append(PoolConcatPathway(head_pool_kernels))
        self.num_features = dim_in + dim_in // beta_inv
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

    def forward_pooled(self, x) -> jax.Array:
        """The concatenated pooled map (B, t, h, w, 2304) that the head projects (1x1x1 when global)."""
        x = self._check(x)
        for block in list(self.blocks)[:5]:
            x = block(x)
        return self.blocks[5](x)

    def forward_features(self, x) -> jax.Array:
        """Pooled features (B, slow + fast channels) before dropout and the classifier."""
        return jnp.mean(self.forward_pooled(x), axis=(1, 2, 3))

    def __call__(self, x) -> jax.Array:
        return self.blocks[6](self.forward_pooled(x))


slowfast_r50 = partial(SlowFast, depth=50, fusion_kernel=7)
slowfast_r101 = partial(SlowFast, depth=101, fusion_kernel=5)
