"""The seed's building blocks, PyTorch reference (NCDHW); twins of `v3d_flax.blocks`.

- `Conv3DBlock`: conv -> BN -> ReLU -> optional max-pool.
- `SpatioTemporalConv`: the (2+1)D factorisation, a (1, k, k) spatial conv, BN, ReLU, then a (k, 1, 1)
  temporal conv, with the mid-channel count chosen so its parameters match a full k^3 conv.
- `Residual3DBlock`: a ResNet basic block whose convs are full 3D ("3d"), spatial-only ("no_temporal",
  MC3) or (2+1)D ("2plus1d"); `downsample_temporal=False` keeps the time axis when striding.
- `FramewiseConv2d`: a 2D conv applied to every frame independently (no motion seen).
- `init_weights`: the torchvision / PyTorchVideo weight initialisation the reference models share.
- `StochasticDepth`: torchvision's row-mode stochastic depth (the attention families' residual drop).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from v3d_flax.archfacts import midplanes


def _triple(v):
    return (v, v, v) if isinstance(v, int) else tuple(v)


def init_weights(model: nn.Module) -> None:
    """torchvision's and PyTorchVideo's (`init_net_weights`) initialisation, in place: convs He-normal
    (fan_out, ReLU gain), BatchNorm scale 1 and shift 0, linear layers N(0, 0.01), every bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class Conv3DBlock(nn.Module):
    """Conv3d (no bias) -> BatchNorm3d -> ReLU -> optional MaxPool3d."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=1,
                 pool_size=None, pool_stride=None):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool3d(pool_size, pool_stride) if pool_size is not None else None

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        return self.pool(x) if self.pool is not None else x


class SpatioTemporalConv(nn.Sequential):
    """(2+1)D conv: spatial (1,k,k) -> BN -> ReLU -> temporal (k,1,1); torchvision's Conv2Plus1D keys."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None, stride=1,
                 kernel: int = 3):
        st, sh, sw = _triple(stride)
        mid = mid_channels if mid_channels is not None else midplanes(in_channels, out_channels, kernel)
        p = kernel // 2
        super().__init__(
            nn.Conv3d(in_channels, mid, (1, kernel, kernel), (1, sh, sw), (0, p, p), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, out_channels, (kernel, 1, 1), (st, 1, 1), (p, 0, 0), bias=False),
        )


def make_conv(kind: str, in_channels: int, out_channels: int, mid_channels: int, stride) -> nn.Module:
    """The 3x3x3-class conv of a residual block: "3d", "no_temporal" (1x3x3) or "2plus1d"."""
    if kind == "3d":
        return nn.Conv3d(in_channels, out_channels, 3, _triple(stride), 1, bias=False)
    if kind == "no_temporal":
        return nn.Conv3d(in_channels, out_channels, (1, 3, 3), _triple(stride), (0, 1, 1), bias=False)
    if kind == "2plus1d":
        return SpatioTemporalConv(in_channels, out_channels, mid_channels, stride)
    raise ValueError(f"conv kind must be '3d', 'no_temporal' or '2plus1d', got {kind!r}")


class Residual3DBlock(nn.Module):
    """ResNet basic block; keys conv1.{0,1}, conv2.{0,1}, downsample.{0,1} as torchvision's BasicBlock."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride=1, *, conv: str = "3d", downsample_temporal: bool = True):
        super().__init__()
        s = _triple(stride)
        if not downsample_temporal or conv == "no_temporal":
            s = (1, s[1], s[2])
        mid = midplanes(inplanes, planes)
        self.conv1 = nn.Sequential(make_conv(conv, inplanes, planes, mid, s), nn.BatchNorm3d(planes), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(make_conv(conv, planes, planes, mid, 1), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if s != (1, 1, 1) or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv3d(inplanes, planes, 1, s, bias=False), nn.BatchNorm3d(planes))

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + shortcut)


class FramewiseConv2d(nn.Module):
    """A 2D conv applied to each frame on its own: time folded into the batch, F.conv2d per frame.

    The weight is kept as a (1, k, k) Conv3d so it ports like every other conv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, use_bias: bool = True):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, (1, kernel_size, kernel_size), (1, stride, stride),
                              (0, padding, padding), bias=use_bias)

    def forward(self, x):
        n, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(n * t, c, h, w)
        y = F.conv2d(frames, self.conv.weight[:, :, 0], self.conv.bias, self.conv.stride[1:], self.conv.padding[1:])
        return y.reshape(n, t, *y.shape[1:]).transpose(1, 2)


class StochasticDepth(nn.Module):
    """torchvision's `StochasticDepth(p, "row")`: in training, zeroes the input for whole samples with
    probability `p` and scales the rest by 1 / (1 - p); identity in eval mode or when p is 0."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        noise = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
        noise.bernoulli_(survival)
        return x * (noise / survival if survival > 0 else noise)
