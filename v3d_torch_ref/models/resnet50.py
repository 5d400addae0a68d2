"""PyTorchVideo's bottleneck ResNet family, PyTorch reference (NCDHW): i3d_r50, slow_r50, c2d_r50,
csn_r101, r2plus1d_r50, with PyTorchVideo's state_dict keys.

`blocks.0` stem (`conv`, `norm`, optional 1x3x3 max-pool), stages `blocks.i.res_blocks.j`
(`branch1_conv`/`branch1_norm`, `branch2.conv_{a,b,c}`/`branch2.norm_{a,b,c}`; R(2+1)D's `conv_b` is
`conv_t`, `norm`, ReLU, `conv_xy`), a (2, 1, 1) max-pool as `blocks.2` in c2d_r50 / i3d_r50, and the
head (`pool`, `dropout`, `proj`) last. The head averages globally by default (equal to the hub model's
fixed AvgPool3d at the canonical clip); `head_pool_kernel=` reproduces the fixed kernel.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from v3d_flax.records.resnet50 import RESNET50_SPECS, ArchSpec, bottleneck_stages


class Conv2plus1d(nn.Module):
    """conv_t (3x1x1, temporal stride) - norm - ReLU - conv_xy (1x3x3, spatial stride)."""

    def __init__(self, channels: int, stride: tuple):
        super().__init__()
        self.conv_t = nn.Conv3d(channels, channels, (3, 1, 1), (stride[0], 1, 1), (1, 0, 0), bias=False)
        self.norm = nn.BatchNorm3d(channels)
        self.activation = nn.ReLU()
        self.conv_xy = nn.Conv3d(channels, channels, (1, 3, 3), (1, stride[1], stride[2]), (0, 1, 1), bias=False)

    def forward(self, x):
        return self.conv_xy(self.activation(self.norm(self.conv_t(x))))


def make_conv_b(kind: str, channels: int, stride: tuple) -> nn.Module:
    """The bottleneck's middle conv, carrying the block's stride."""
    if kind == "spatial":
        return nn.Conv3d(channels, channels, (1, 3, 3), stride, (0, 1, 1), bias=False)
    if kind == "depthwise":
        return nn.Conv3d(channels, channels, 3, stride, 1, groups=channels, bias=False)
    if kind == "2plus1d":
        return Conv2plus1d(channels, stride)
    raise ValueError(f"conv_b kind must be 'spatial', 'depthwise' or '2plus1d', got {kind!r}")


class Bottleneck(nn.Module):
    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, kt: int, conv_b: str, stride: tuple):
        super().__init__()
        self.conv_a = nn.Conv3d(dim_in, dim_inner, (kt, 1, 1), padding=(kt // 2, 0, 0), bias=False)
        self.norm_a = nn.BatchNorm3d(dim_inner)
        self.act_a = nn.ReLU()
        self.conv_b = make_conv_b(conv_b, dim_inner, stride)
        self.norm_b = nn.BatchNorm3d(dim_inner)
        self.act_b = nn.ReLU()
        self.conv_c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.norm_c = nn.BatchNorm3d(dim_out)

    def forward(self, x):
        x = self.act_a(self.norm_a(self.conv_a(x)))
        x = self.act_b(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class ResBlock(nn.Module):
    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, kt: int, conv_b: str, stride: tuple):
        super().__init__()
        project = dim_in != dim_out or any(s != 1 for s in stride)
        self.branch1_conv = nn.Conv3d(dim_in, dim_out, 1, stride, bias=False) if project else None
        self.branch1_norm = nn.BatchNorm3d(dim_out) if project else None
        self.branch2 = Bottleneck(dim_in, dim_inner, dim_out, kt, conv_b, stride)
        self.activation = nn.ReLU()

    def forward(self, x):
        shortcut = x if self.branch1_conv is None else self.branch1_norm(self.branch1_conv(x))
        return self.activation(self.branch2(x) + shortcut)


class ResStage(nn.Module):
    def __init__(self, depth: int, dim_in: int, dim_inner: int, dim_out: int, kts: tuple, conv_b: str,
                 stride: tuple):
        super().__init__()
        self.res_blocks = nn.ModuleList([
            ResBlock(dim_in if j == 0 else dim_out, dim_inner, dim_out, kts[j % len(kts)], conv_b,
                     stride if j == 0 else (1, 1, 1))
            for j in range(depth)])

    def forward(self, x):
        for block in self.res_blocks:
            x = block(x)
        return x


class Stem(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kt: int, pool: bool):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, (kt, 7, 7), (1, 2, 2), (kt // 2, 3, 3), bias=False)
        self.norm = nn.BatchNorm3d(out_channels)
        self.activation = nn.ReLU()
        self.pool = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)) if pool else None

    def forward(self, x):
        x = self.activation(self.norm(self.conv(x)))
        return x if self.pool is None else self.pool(x)


class Head(nn.Module):
    def __init__(self, in_features: int, num_classes: int, dropout: float, pool_kernel=None):
        super().__init__()
        self.pool_kernel = pool_kernel
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(in_features, num_classes)

    def pool(self, x):
        if self.pool_kernel is None:
            return x.mean((2, 3, 4), keepdim=True)
        return nn.functional.avg_pool3d(x, self.pool_kernel, stride=1)

    def forward(self, x):
        return self.proj(self.dropout(self.pool(x).permute(0, 2, 3, 4, 1))).mean((1, 2, 3))


class PTVResNet(nn.Module):
    """A PyTorchVideo-layout bottleneck ResNet described by an `ArchSpec` (see `archfacts.RESNET50_SPECS`)."""

    def __init__(self, spec: ArchSpec, *, num_classes: int = 400, dropout: float | None = None,
                 in_channels: int = 3, head_pool_kernel=None):
        super().__init__()
        dropout = spec.dropout if dropout is None else dropout
        self.in_channels = in_channels
        blocks = [Stem(in_channels, 64, spec.stem_kt, spec.stem_pool)]
        stages = bottleneck_stages(spec.depth)
        for i, (depth, *dims) in enumerate(stages):
            stride = (spec.temporal_strides[i], spec.spatial_strides[i], spec.spatial_strides[i])
            blocks.append(ResStage(depth, *dims, spec.conv_a_kt[i], spec.conv_b, stride))
            if i == 0 and spec.stage1_pool:
                blocks.append(nn.MaxPool3d((2, 1, 1), (2, 1, 1)))
        self.num_features = stages[-1][-1]  # res5's output width
        blocks.append(Head(self.num_features, num_classes, dropout, head_pool_kernel))
        self.blocks = nn.ModuleList(blocks)

    def forward_map(self, x) -> torch.Tensor:
        """The last stage's feature map (B, 2048, t, h, w)."""
        for block in self.blocks[:-1]:
            x = block(x)
        return x

    def forward_features(self, x) -> torch.Tensor:
        """Pooled features (B, 2048) before dropout and the classifier."""
        return self.blocks[-1].pool(self.forward_map(x)).mean((2, 3, 4))

    def forward(self, x) -> torch.Tensor:
        return self.blocks[-1](self.forward_map(x))


# The names this family registers (`v3d_torch_ref.registry` collects every family's MODELS).
MODELS = {name: partial(PTVResNet, spec) for name, spec in RESNET50_SPECS.items()}
