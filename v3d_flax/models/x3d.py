"""X3D (PyTorchVideo's create_x3d) in Flax NNX, NDHWC; module paths equal PyTorchVideo's keys.

Mind PyTorchVideo's swapped stem names, kept here so its checkpoints port by name:
`blocks.0.conv.conv_t` is the SPATIAL 1x3x3 conv and `blocks.0.conv.conv_xy` the TEMPORAL 5x1x1
depthwise conv (they run in that order). Depthwise convs are `Conv3d(groups=channels)`.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from v3d_flax.records.x3d import X3D_DEPTH_FACTORS, round_width, x3d_dims
from v3d_flax.layers import BatchNorm, Conv3d, Linear, ReLU, Sequential, avg_pool3d, check_video_input


class Identity(nnx.Module):
    """Stateless slot for PyTorchVideo's nn.Identity (a block without squeeze-excitation)."""

    def __call__(self, x):
        return x


class Sigmoid(nnx.Module):
    def __call__(self, x):
        return jax.nn.sigmoid(x)


class SqueezeExcitation(nnx.Module):
    """x * sigmoid(conv(relu(conv(global_mean(x))))) with biased 1x1x1 convs (fvcore's SE, 3D)."""

    def __init__(self, channels: int, reduced: int, *, rngs: nnx.Rngs):
        self.block = Sequential([Conv3d(channels, reduced, 1, use_bias=True, rngs=rngs), ReLU(),
                                 Conv3d(reduced, channels, 1, use_bias=True, rngs=rngs), Sigmoid()])

    def __call__(self, x):
        return x * self.block(jnp.mean(x, axis=(1, 2, 3), keepdims=True))


class Conv2plus1d(nnx.Module):
    """X3D stem convs, PyTorchVideo's names: conv_t (spatial, runs first), conv_xy (temporal depthwise)."""

    def __init__(self, in_channels: int, out_channels: int, kt: int = 5, *, rngs: nnx.Rngs):
        self.conv_t = Conv3d(in_channels, out_channels, (1, 3, 3), (1, 2, 2), (0, 1, 1), rngs=rngs)
        self.conv_xy = Conv3d(out_channels, out_channels, (kt, 1, 1), 1, (kt // 2, 0, 0), groups=out_channels,
                              rngs=rngs)

    def __call__(self, x):
        return self.conv_xy(self.conv_t(x))


class Stem(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        self.conv = Conv2plus1d(in_channels, out_channels, rngs=rngs)
        self.norm = BatchNorm(out_channels)

    def __call__(self, x):
        return jax.nn.relu(self.norm(self.conv(x)))


class Bottleneck(nnx.Module):
    """conv_a 1x1x1 - BN - ReLU - conv_b 3x3x3 depthwise - BN (+ SE) - Swish - conv_c 1x1x1 - BN."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, stride: int, se_ratio: float, *,
                 rngs: nnx.Rngs):
        self.conv_a = Conv3d(dim_in, dim_inner, 1, rngs=rngs)
        self.norm_a = BatchNorm(dim_inner)
        self.conv_b = Conv3d(dim_inner, dim_inner, 3, (1, stride, stride), 1, groups=dim_inner, rngs=rngs)
        se = (SqueezeExcitation(dim_inner, round_width(dim_inner, se_ratio), rngs=rngs) if se_ratio > 0
              else Identity())
        self.norm_b = Sequential([BatchNorm(dim_inner), se])
        self.conv_c = Conv3d(dim_inner, dim_out, 1, rngs=rngs)
        self.norm_c = BatchNorm(dim_out)

    def __call__(self, x):
        x = jax.nn.relu(self.norm_a(self.conv_a(x)))
        x = jax.nn.swish(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class ResBlock(nnx.Module):
    """branch2(x) + shortcut(x), ReLU. The shortcut conv exists when the shape changes, its BN only
    when the channel count does (so res2's first block, 24 -> 24 with stride 2, has a bare conv)."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, stride: int, se_ratio: float, *,
                 rngs: nnx.Rngs):
        self.branch1_conv = (Conv3d(dim_in, dim_out, 1, (1, stride, stride), rngs=rngs)
                             if dim_in != dim_out or stride != 1 else None)
        self.branch1_norm = BatchNorm(dim_out) if dim_in != dim_out else None
        self.branch2 = Bottleneck(dim_in, dim_inner, dim_out, stride, se_ratio, rngs=rngs)

    def __call__(self, x):
        shortcut = x
        if self.branch1_conv is not None:
            shortcut = self.branch1_conv(shortcut)
        if self.branch1_norm is not None:
            shortcut = self.branch1_norm(shortcut)
        return jax.nn.relu(self.branch2(x) + shortcut)


class ResStage(nnx.Module):
    def __init__(self, depth: int, dim_in: int, dim_inner: int, dim_out: int, se_ratio: float, *,
                 rngs: nnx.Rngs):
        # SE on blocks 0, 2, 4, ... (PyTorchVideo: se_ratio if (idx + 1) % 2 else 0).
        self.res_blocks = nnx.List(
            [ResBlock(dim_in if i == 0 else dim_out, dim_inner, dim_out, 2 if i == 0 else 1,
                      se_ratio if i % 2 == 0 else 0.0, rngs=rngs) for i in range(depth)])

    def __call__(self, x):
        for block in self.res_blocks:
            x = block(x)
        return x


class ProjectedPool(nnx.Module):
    """pre_conv - BN - ReLU - average pool (global, or a fixed stride-1 kernel) - post_conv - ReLU."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, pool_kernel=None, *, rngs: nnx.Rngs):
        self.pre_conv = Conv3d(dim_in, dim_inner, 1, rngs=rngs)
        self.pre_norm = BatchNorm(dim_inner)
        self.post_conv = Conv3d(dim_inner, dim_out, 1, rngs=rngs)
        self.pool_kernel = None if pool_kernel is None else tuple(pool_kernel)

    def __call__(self, x):
        x = jax.nn.relu(self.pre_norm(self.pre_conv(x)))
        if self.pool_kernel is None:
            x = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
        else:
            if any(k > n for k, n in zip(self.pool_kernel, x.shape[1:4])):
                raise ValueError(f"X3D head_pool_kernel {self.pool_kernel} is larger than the final map "
                                 f"{tuple(x.shape[1:4])}; use a bigger clip or head_pool_kernel=None")
            x = avg_pool3d(x, self.pool_kernel, 1)
        return jax.nn.relu(self.post_conv(x))


class Head(nnx.Module):
    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, num_classes: int, dropout: float,
                 pool_kernel=None, *, rngs: nnx.Rngs):
        self.pool = ProjectedPool(dim_in, dim_inner, dim_out, pool_kernel, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.proj = Linear(dim_out, num_classes, rngs=rngs)

    def __call__(self, x):
        return jnp.mean(self.proj(self.dropout(self.pool(x))), axis=(1, 2, 3))


class X3D(nnx.Module):
    """X3D-{XS,S,M,L} on NDHWC clips; returns logits (PyTorchVideo's hub X3D returns their softmax).

    `head_pool_kernel=None` pools globally (any clip size, equal to PyTorchVideo at its build-time
    clip); pass (T, ceil(crop / 32), ceil(crop / 32)) of that clip (the record's `head_pool_kernel`)
    to reproduce PyTorchVideo's fixed-kernel head when evaluating at a larger crop (e.g. X3D-XS built
    at 160, tested at 182 as its hub recipe does).
    """

    def __init__(self, *, num_classes: int = 400, depth_factor: float = 2.2, width_factor: float = 2.0,
                 bottleneck_factor: float = 2.25, se_ratio: float = 0.0625, head_dim: int = 2048,
                 dropout: float = 0.5, in_channels: int = 3, head_pool_kernel=None, rngs: nnx.Rngs):
        self.in_channels = in_channels
        stem_dim, stages = x3d_dims(width_factor, depth_factor, bottleneck_factor)
        blocks = [Stem(in_channels, stem_dim, rngs=rngs)]
        dim_in = stem_dim
        for depth, dim_inner, dim_out in stages:
            blocks.append(ResStage(depth, dim_in, dim_inner, dim_out, se_ratio, rngs=rngs))
            dim_in = dim_out
        self.num_features = head_dim
        blocks.append(Head(dim_in, dim_inner, head_dim, num_classes, dropout, head_pool_kernel, rngs=rngs))
        self.blocks = nnx.List(blocks)

    def forward_map(self, x: jax.Array) -> jax.Array:
        """res5's feature map (B, t, h, w, 192) that the head's ProjectedPool pools."""
        check_video_input(x, channels=self.in_channels, name="X3D")
        for block in list(self.blocks)[:5]:
            x = block(x)
        return x

    def forward_features(self, x: jax.Array) -> jax.Array:
        """Pooled head features (B, 2048) after post_conv and its ReLU, before dropout and proj."""
        return jnp.mean(self.blocks[5].pool(self.forward_map(x)), axis=(1, 2, 3))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.blocks[5](self.forward_map(x))


x3d_xs = partial(X3D, depth_factor=X3D_DEPTH_FACTORS["x3d_xs"])
x3d_s = partial(X3D, depth_factor=X3D_DEPTH_FACTORS["x3d_s"])
x3d_m = partial(X3D, depth_factor=X3D_DEPTH_FACTORS["x3d_m"])
x3d_l = partial(X3D, depth_factor=X3D_DEPTH_FACTORS["x3d_l"])
