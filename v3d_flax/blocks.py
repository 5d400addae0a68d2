"""The seed's building blocks in Flax NNX (NDHWC); twins of `v3d_torch_ref.blocks`, same names.

- `Conv3DBlock`: conv -> BN -> ReLU -> optional max-pool.
- `SpatioTemporalConv`: (2+1)D, a (1, k, k) spatial conv, BN, ReLU, then a (k, 1, 1) temporal conv, with
  the mid-channel count chosen so its parameters match a full k^3 conv (`v3d_flax.archfacts.midplanes`).
- `Residual3DBlock`: a ResNet basic block whose convs are full 3D ("3d"), spatial-only ("no_temporal",
  MC3) or (2+1)D ("2plus1d"); `downsample_temporal=False` keeps the time axis when striding.
- `FramewiseConv2d`: a 2D conv applied to every frame on its own. It cannot see motion: permuting the
  input frames permutes its output frames (see `v3d_flax.archfacts.conv_param_counts` for the parameter side).
"""

from __future__ import annotations

import jax
from flax import nnx

from v3d_flax.archfacts import midplanes
from v3d_flax.layers import BatchNorm, Conv3d, MaxPool3d, ReLU, Sequential, _triple, conv_kernel_init


class Conv3DBlock(nnx.Module):
    """Conv3d (no bias) -> BatchNorm -> ReLU -> optional max-pool."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=1,
                 pool_size=None, pool_stride=None, *, rngs: nnx.Rngs):
        self.conv = Conv3d(in_channels, out_channels, kernel_size, stride, padding, rngs=rngs)
        self.bn = BatchNorm(out_channels)
        self.pool = MaxPool3d(pool_size, pool_stride) if pool_size is not None else None

    def __call__(self, x):
        x = jax.nn.relu(self.bn(self.conv(x)))
        return self.pool(x) if self.pool is not None else x


class SpatioTemporalConv(Sequential):
    """(2+1)D conv; children 0 (spatial conv), 1 (BN), 2 (ReLU), 3 (temporal conv) as torchvision's."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None, stride=1,
                 kernel: int = 3, *, rngs: nnx.Rngs):
        st, sh, sw = _triple(stride)
        mid = mid_channels if mid_channels is not None else midplanes(in_channels, out_channels, kernel)
        p = kernel // 2
        super().__init__([
            Conv3d(in_channels, mid, (1, kernel, kernel), (1, sh, sw), (0, p, p), rngs=rngs),
            BatchNorm(mid),
            ReLU(),
            Conv3d(mid, out_channels, (kernel, 1, 1), (st, 1, 1), (p, 0, 0), rngs=rngs),
        ])


def make_conv(kind: str, in_channels: int, out_channels: int, mid_channels: int, stride, *, rngs: nnx.Rngs):
    """The 3x3x3-class conv of a residual block: "3d", "no_temporal" (1x3x3) or "2plus1d"."""
    if kind == "3d":
        return Conv3d(in_channels, out_channels, 3, stride, 1, rngs=rngs)
    if kind == "no_temporal":
        return Conv3d(in_channels, out_channels, (1, 3, 3), stride, (0, 1, 1), rngs=rngs)
    if kind == "2plus1d":
        return SpatioTemporalConv(in_channels, out_channels, mid_channels, stride, rngs=rngs)
    raise ValueError(f"conv kind must be '3d', 'no_temporal' or '2plus1d', got {kind!r}")


class Residual3DBlock(nnx.Module):
    """ResNet basic block: conv1 (conv, BN, ReLU), conv2 (conv, BN), optional downsample shortcut."""

    def __init__(self, inplanes: int, planes: int, stride=1, *, conv: str = "3d",
                 downsample_temporal: bool = True, rngs: nnx.Rngs):
        s = _triple(stride)
        if not downsample_temporal or conv == "no_temporal":
            s = (1, s[1], s[2])
        mid = midplanes(inplanes, planes)
        self.conv1 = Sequential([make_conv(conv, inplanes, planes, mid, s, rngs=rngs), BatchNorm(planes), ReLU()])
        self.conv2 = Sequential([make_conv(conv, planes, planes, mid, 1, rngs=rngs), BatchNorm(planes)])
        needs_projection = s != (1, 1, 1) or inplanes != planes
        self.downsample = (Sequential([Conv3d(inplanes, planes, 1, s, rngs=rngs), BatchNorm(planes)])
                           if needs_projection else None)

    def __call__(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(self.conv2(self.conv1(x)) + shortcut)


class FramewiseConv2d(nnx.Module):
    """A 2D conv applied to each frame on its own (time folded into the batch); torch key `conv`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, use_bias: bool = True, *, rngs: nnx.Rngs):
        # Stored as a (1, k, k) Conv3d so it ports like every other conv; run as a true 2D conv.
        self.conv = Conv3d(in_channels, out_channels, (1, kernel_size, kernel_size), (1, stride, stride),
                           (0, padding, padding), use_bias=use_bias, kernel_init=conv_kernel_init, rngs=rngs)

    def __call__(self, x):
        n, t, h, w, c = x.shape
        frames = x.reshape(n * t, h, w, c)
        conv = self.conv
        y = jax.lax.conv_general_dilated(
            frames, conv.kernel[...][0].astype(x.dtype), conv.strides[1:],
            [(conv.padding[1],) * 2, (conv.padding[2],) * 2], dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if conv.bias is not None:
            y = y + conv.bias[...].astype(y.dtype)
        return y.reshape(n, t, *y.shape[1:])
