"""PyTorchVideo's bottleneck ResNet family in Flax NNX (NDHWC): i3d_r50, slow_r50, c2d_r50, csn_r101,
r2plus1d_r50. Module paths equal PyTorchVideo's state_dict keys, so its hub checkpoints port with an
empty key map:

- `blocks.0`: stem `conv` (kT x 7 x 7, spatial stride 2), `norm`, ReLU, optional 1x3x3 max-pool;
- stages `blocks.i.res_blocks.j` with `branch1_conv`/`branch1_norm` (projection shortcut) and
  `branch2.conv_{a,b,c}`/`branch2.norm_{a,b,c}` (bottleneck; R(2+1)D's `conv_b` is `conv_t`, `norm`,
  ReLU, `conv_xy`: temporal first);
- c2d_r50 / i3d_r50 put a (2, 1, 1) max-pool after the first stage as `blocks.2`;
- the head (`blocks.5` or `blocks.6`): average pool, dropout, `proj`.

The hub models pool the last map with a fixed AvgPool3d kernel built for the canonical clip (the
record's `head_pool_kernel`, `v3d_flax.registry.model_spec(name)`); here the default is a global
average, which equals it at that clip and also works at other clip sizes. Pass `head_pool_kernel=`
to reproduce the fixed pool elsewhere.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from v3d_flax.records.resnet50 import RESNET50_SPECS, ArchSpec, bottleneck_stages
from v3d_flax.layers import BatchNorm, Conv3d, Linear, MaxPool3d, avg_pool3d, check_video_input, max_pool3d


class Conv2plus1d(nnx.Module):
    """PyTorchVideo's (2+1)D conv as R(2+1)D-50 uses it: `conv_t` (3x1x1, temporal stride) - `norm` -
    ReLU - `conv_xy` (1x3x3, spatial stride), all `channels` wide."""

    def __init__(self, channels: int, stride: tuple, *, rngs: nnx.Rngs):
        self.conv_t = Conv3d(channels, channels, (3, 1, 1), (stride[0], 1, 1), (1, 0, 0), rngs=rngs)
        self.norm = BatchNorm(channels)
        self.conv_xy = Conv3d(channels, channels, (1, 3, 3), (1, stride[1], stride[2]), (0, 1, 1), rngs=rngs)

    def __call__(self, x):
        return self.conv_xy(jax.nn.relu(self.norm(self.conv_t(x))))


def make_conv_b(kind: str, channels: int, stride: tuple, *, rngs: nnx.Rngs):
    """The bottleneck's middle conv (`conv_b`), carrying the block's stride."""
    if kind == "spatial":
        return Conv3d(channels, channels, (1, 3, 3), stride, (0, 1, 1), rngs=rngs)
    if kind == "depthwise":
        return Conv3d(channels, channels, 3, stride, 1, groups=channels, rngs=rngs)
    if kind == "2plus1d":
        return Conv2plus1d(channels, stride, rngs=rngs)
    raise ValueError(f"conv_b kind must be 'spatial', 'depthwise' or '2plus1d', got {kind!r}")


class Bottleneck(nnx.Module):
    """conv_a (kT x 1 x 1) - BN - ReLU - conv_b (strided) - BN - ReLU - conv_c (1x1x1) - BN."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, kt: int, conv_b: str, stride: tuple, *,
                 rngs: nnx.Rngs):
        self.conv_a = Conv3d(dim_in, dim_inner, (kt, 1, 1), 1, (kt // 2, 0, 0), rngs=rngs)
        self.norm_a = BatchNorm(dim_inner)
        self.conv_b = make_conv_b(conv_b, dim_inner, stride, rngs=rngs)
        self.norm_b = BatchNorm(dim_inner)
        self.conv_c = Conv3d(dim_inner, dim_out, 1, rngs=rngs)
        self.norm_c = BatchNorm(dim_out)

    def __call__(self, x):
        x = jax.nn.relu(self.norm_a(self.conv_a(x)))
        x = jax.nn.relu(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class ResBlock(nnx.Module):
    """ReLU(branch2(x) + shortcut(x)); the shortcut is a strided 1x1x1 conv + BN when shapes change."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, kt: int, conv_b: str, stride: tuple, *,
                 rngs: nnx.Rngs):
        project = dim_in != dim_out or any(s != 1 for s in stride)
        self.branch1_conv = Conv3d(dim_in, dim_out, 1, stride, rngs=rngs) if project else None
        self.branch1_norm = BatchNorm(dim_out) if project else None
        self.branch2 = Bottleneck(dim_in, dim_inner, dim_out, kt, conv_b, stride, rngs=rngs)

    def __call__(self, x):
        shortcut = x if self.branch1_conv is None else self.branch1_norm(self.branch1_conv(x))
        return jax.nn.relu(self.branch2(x) + shortcut)


class ResStage(nnx.Module):
    """`depth` ResBlocks; the first one strides and widens, conv_a's temporal kernels cycle `kts`."""

    def __init__(self, depth: int, dim_in: int, dim_inner: int, dim_out: int, kts: tuple, conv_b: str,
                 stride: tuple, *, rngs: nnx.Rngs):
        self.res_blocks = nnx.List([
            ResBlock(dim_in if j == 0 else dim_out, dim_inner, dim_out, kts[j % len(kts)], conv_b,
                     stride if j == 0 else (1, 1, 1), rngs=rngs)
            for j in range(depth)])

    def __call__(self, x):
        for block in self.res_blocks:
            x = block(x)
        return x


class Stem(nnx.Module):
    """conv (kT x 7 x 7, stride (1, 2, 2)) - BN - ReLU - optional max-pool (1x3x3, stride (1, 2, 2))."""

    def __init__(self, in_channels: int, out_channels: int, kt: int, pool: bool, *, rngs: nnx.Rngs):
        self.conv = Conv3d(in_channels, out_channels, (kt, 7, 7), (1, 2, 2), (kt // 2, 3, 3), rngs=rngs)
        self.norm = BatchNorm(out_channels)
        self.pool = pool

    def __call__(self, x):
        x = jax.nn.relu(self.norm(self.conv(x)))
        return max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1)) if self.pool else x


class Head(nnx.Module):
    """Average pool (global, or a fixed stride-1 kernel), dropout, `proj`, mean over positions."""

    def __init__(self, in_features: int, num_classes: int, dropout: float, pool_kernel=None, *, rngs: nnx.Rngs):
        self.pool_kernel = None if pool_kernel is None else tuple(pool_kernel)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.proj = Linear(in_features, num_classes, rngs=rngs)

    def pool(self, x):
        """(B, T, H, W, C) -> (B, t, h, w, C): 1x1x1 for the global pool."""
        if self.pool_kernel is None:
            return jnp.mean(x, axis=(1, 2, 3), keepdims=True)
        if any(k > n for k, n in zip(self.pool_kernel, x.shape[1:4])):
            raise ValueError(f"the head's fixed pool kernel {self.pool_kernel} exceeds the last feature map "
                             f"{tuple(x.shape[1:4])} (frames, height, width); use a larger clip or "
                             f"head_pool_kernel=None (global pooling)")
        return avg_pool3d(x, self.pool_kernel, 1)

    def __call__(self, x):
        return jnp.mean(self.proj(self.dropout(self.pool(x))), axis=(1, 2, 3))


class PTVResNet(nnx.Module):
    """A PyTorchVideo-layout bottleneck ResNet described by an `ArchSpec` (see `archfacts.RESNET50_SPECS`)."""

    def __init__(self, spec: ArchSpec, *, num_classes: int = 400, dropout: float | None = None,
                 in_channels: int = 3, head_pool_kernel=None, rngs: nnx.Rngs):
        dropout = spec.dropout if dropout is None else dropout
        self.spec, self.in_channels = spec, in_channels
        blocks = [Stem(in_channels, 64, spec.stem_kt, spec.stem_pool, rngs=rngs)]
        stages = bottleneck_stages(spec.depth)
        for i, (depth, *dims) in enumerate(stages):
            stride = (spec.temporal_strides[i], spec.spatial_strides[i], spec.spatial_strides[i])
            blocks.append(ResStage(depth, *dims, spec.conv_a_kt[i], spec.conv_b, stride, rngs=rngs))
            if i == 0 and spec.stage1_pool:
                blocks.append(MaxPool3d((2, 1, 1), (2, 1, 1)))
        self.num_features = stages[-1][-1]  # res5's output width
        blocks.append(Head(self.num_features, num_classes, dropout, head_pool_kernel, rngs=rngs))
        self.blocks = nnx.List(blocks)

    def _check(self, x):
        check_video_input(x, channels=self.in_channels, name=type(self).__name__)
        if self.spec.stage1_pool and x.shape[1] < 2:
            raise ValueError(f"this model max-pools time by 2 after its first stage: give at least 2 frames, "
                             f"got shape {tuple(x.shape)}")

    def forward_map(self, x) -> jax.Array:
        """The last stage's feature map (B, t, h, w, 2048)."""
        self._check(x)
        for block in list(self.blocks)[:-1]:
            x = block(x)
        return x

    def forward_features(self, x) -> jax.Array:
        """Pooled features (B, 2048) before dropout and the classifier."""
        return jnp.mean(self.blocks[-1].pool(self.forward_map(x)), axis=(1, 2, 3))

    def __call__(self, x) -> jax.Array:
        return self.blocks[-1](self.forward_map(x))


def _factory(name: str, **kwargs) -> PTVResNet:
    return PTVResNet(RESNET50_SPECS[name], **kwargs)


i3d_r50 = partial(_factory, "i3d_r50")
slow_r50 = partial(_factory, "slow_r50")
c2d_r50 = partial(_factory, "c2d_r50")
csn_r101 = partial(_factory, "csn_r101")
r2plus1d_r50 = partial(_factory, "r2plus1d_r50")
