"""X3D (PyTorchVideo's create_x3d), PyTorch reference with PyTorchVideo's state_dict keys.

Module names equal PyTorchVideo's, so its hub checkpoints load with no renaming. Mind PyTorchVideo's
swapped stem names: `blocks.0.conv.conv_t` is the SPATIAL 1x3x3 conv (3 -> 24) and
`blocks.0.conv.conv_xy` the TEMPORAL 5x1x1 depthwise conv; they run in that order.
Stages `blocks.1..4` (res2..res5) of bottlenecks 1x1x1 -> 3x3x3 depthwise -> 1x1x1 with
squeeze-excitation (`branch2.norm_b.1`) on every other block and Swish after it; the head
`blocks.5` is `pool.pre_conv` (192 -> 432) - BN - ReLU - average pool - `pool.post_conv`
(432 -> 2048) - ReLU - dropout - `proj`.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from v3d_flax.records.x3d import X3D_DEPTH_FACTORS, round_width, x3d_dims
from v3d_torch_ref.blocks import init_weights


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class SqueezeExcitation(nn.Module):
    """x * sigmoid(conv(relu(conv(global_mean(x))))) with biased 1x1x1 convs (fvcore's SE, 3D)."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.block = nn.Sequential(nn.Conv3d(channels, reduced, 1, bias=True), nn.ReLU(),
                                   nn.Conv3d(reduced, channels, 1, bias=True), nn.Sigmoid())

    def forward(self, x):
        return x * self.block(x.mean((2, 3, 4), keepdim=True))


class Conv2plus1d(nn.Module):
    """X3D stem convs, PyTorchVideo's names: conv_t (spatial, runs first), conv_xy (temporal depthwise)."""

    def __init__(self, in_channels: int, out_channels: int, kt: int = 5):
        super().__init__()
        self.conv_t = nn.Conv3d(in_channels, out_channels, (1, 3, 3), (1, 2, 2), (0, 1, 1), bias=False)
        self.conv_xy = nn.Conv3d(out_channels, out_channels, (kt, 1, 1), 1, (kt // 2, 0, 0), bias=False,
                                 groups=out_channels)

    def forward(self, x):
        return self.conv_xy(self.conv_t(x))


class Stem(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = Conv2plus1d(in_channels, out_channels)
        self.norm = nn.BatchNorm3d(out_channels)
        self.activation = nn.ReLU()

    def forward(self, x):
        return self.activation(self.norm(self.conv(x)))


class Bottleneck(nn.Module):
    """conv_a 1x1x1 - BN - ReLU - conv_b 3x3x3 depthwise - BN (+ SE) - Swish - conv_c 1x1x1 - BN."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, stride: int, se_ratio: float):
        super().__init__()
        self.conv_a = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.norm_a = nn.BatchNorm3d(dim_inner)
        self.act_a = nn.ReLU()
        self.conv_b = nn.Conv3d(dim_inner, dim_inner, 3, (1, stride, stride), 1, bias=False, groups=dim_inner)
        se = SqueezeExcitation(dim_inner, round_width(dim_inner, se_ratio)) if se_ratio > 0 else nn.Identity()
        self.norm_b = nn.Sequential(nn.BatchNorm3d(dim_inner), se)
        self.act_b = Swish()
        self.conv_c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.norm_c = nn.BatchNorm3d(dim_out)

    def forward(self, x):
        x = self.act_a(self.norm_a(self.conv_a(x)))
        x = self.act_b(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class ResBlock(nn.Module):
    """branch2(x) + shortcut(x), ReLU. The shortcut conv exists when the shape changes, its BN only
    when the channel count does (so res2's first block, 24 -> 24 with stride 2, has a bare conv)."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, stride: int, se_ratio: float):
        super().__init__()
        self.branch1_conv = (nn.Conv3d(dim_in, dim_out, 1, (1, stride, stride), bias=False)
                             if dim_in != dim_out or stride != 1 else None)
        self.branch1_norm = nn.BatchNorm3d(dim_out) if dim_in != dim_out else None
        self.branch2 = Bottleneck(dim_in, dim_inner, dim_out, stride, se_ratio)
        self.activation = nn.ReLU()

    def forward(self, x):
        shortcut = x
        if self.branch1_conv is not None:
            shortcut = self.branch1_conv(shortcut)
        if self.branch1_norm is not None:
            shortcut = self.branch1_norm(shortcut)
        return self.activation(self.branch2(x) + shortcut)


class ResStage(nn.Module):
    def __init__(self, depth: int, dim_in: int, dim_inner: int, dim_out: int, se_ratio: float):
        super().__init__()
        # SE on blocks 0, 2, 4, ... (PyTorchVideo: se_ratio if (idx + 1) % 2 else 0).
        self.res_blocks = nn.ModuleList(
            [ResBlock(dim_in if i == 0 else dim_out, dim_inner, dim_out, 2 if i == 0 else 1,
                      se_ratio if i % 2 == 0 else 0.0) for i in range(depth)])

    def forward(self, x):
        for block in self.res_blocks:
            x = block(x)
        return x


class ProjectedPool(nn.Module):
    """pre_conv - BN - ReLU - average pool (global, or a fixed stride-1 kernel) - post_conv - ReLU."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, pool_kernel=None):
        super().__init__()
        self.pre_conv = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.pre_norm = nn.BatchNorm3d(dim_inner)
        self.pre_act = nn.ReLU()
        self.post_conv = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.post_act = nn.ReLU()
        self.pool_kernel = pool_kernel

    def forward(self, x):
        x = self.pre_act(self.pre_norm(self.pre_conv(x)))
        if self.pool_kernel is None:
            x = x.mean((2, 3, 4), keepdim=True)
        else:
            x = nn.functional.avg_pool3d(x, self.pool_kernel, stride=1)
        return self.post_act(self.post_conv(x))


class Head(nn.Module):
    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, num_classes: int, dropout: float,
                 pool_kernel=None):
        super().__init__()
        self.pool = ProjectedPool(dim_in, dim_inner, dim_out, pool_kernel)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(dim_out, num_classes)

    def forward(self, x):
        x = self.pool(x).permute(0, 2, 3, 4, 1)
        return self.proj(self.dropout(x)).mean((1, 2, 3))


class X3D(nn.Module):
    """X3D-{XS,S,M,L}. Returns logits; PyTorchVideo's hub X3D applies a softmax in its head
    (softmax of these logits equals its output). `head_pool_kernel=None` pools globally (any clip
    size); PyTorchVideo fixes it to (T, ceil(crop / 32), ceil(crop / 32)) of the build-time clip."""

    def __init__(self, *, num_classes: int = 400, depth_factor: float = 2.2, width_factor: float = 2.0,
                 bottleneck_factor: float = 2.25, se_ratio: float = 0.0625, head_dim: int = 2048,
                 dropout: float = 0.5, in_channels: int = 3, head_pool_kernel=None):
        super().__init__()
        self.in_channels, self.num_features = in_channels, head_dim
        stem_dim, stages = x3d_dims(width_factor, depth_factor, bottleneck_factor)
        blocks = [Stem(in_channels, stem_dim)]
        dim_in = stem_dim
        for depth, dim_inner, dim_out in stages:
            blocks.append(ResStage(depth, dim_in, dim_inner, dim_out, se_ratio))
            dim_in = dim_out
        blocks.append(Head(dim_in, dim_inner, head_dim, num_classes, dropout, head_pool_kernel))
        self.blocks = nn.ModuleList(blocks)
        init_weights(self)  # PyTorchVideo's init_net_weights

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """res5's feature map (B, 192, t, h, w) that the head's ProjectedPool pools."""
        for block in self.blocks[:5]:
            x = block(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled head features (B, 2048) after post_conv and its ReLU, before dropout and proj."""
        return self.blocks[5].pool(self.forward_map(x)).mean((2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[5](self.forward_map(x))


# The names this family registers (`v3d_torch_ref.registry` collects every family's MODELS).
MODELS = {name: partial(X3D, depth_factor=factor) for name, factor in X3D_DEPTH_FACTORS.items()}
