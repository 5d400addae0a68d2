"""SlowFast (PyTorchVideo's create_slowfast), PyTorch reference with PyTorchVideo's state_dict keys.

Input: a list [slow, fast] of NCDHW clips, the fast one `alpha` times longer (PyTorchVideo's order).
Module names equal PyTorchVideo's, so its hub checkpoints load with no renaming:
`blocks.0` stems, `blocks.1..4` stages (`multipathway_blocks.{0 slow, 1 fast}.res_blocks.j`),
each followed by `multipathway_fusion` (fast -> slow lateral conv; none after the last stage),
`blocks.5` per-pathway pooling and concatenation (no weights), `blocks.6` dropout + `proj`.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

SLOW_CONV_A_T = (1, 1, 3, 3)  # temporal kernel of conv_a in res2..res5, slow pathway
FAST_CONV_A_T = (3, 3, 3, 3)
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def pack_pathways(clip: torch.Tensor, alpha: int = 4) -> list[torch.Tensor]:
    """[slow, fast] from one NCDHW clip of T frames, as PyTorchVideo's PackPathway transform:
    the fast pathway is the clip, the slow one T // alpha frames at `slow_indices(T, alpha)`."""
    if clip.ndim != 5:
        raise ValueError(f"pack_pathways expects an NCDHW clip (batch, channels, frames, height, width), got {tuple(clip.shape)}")
    t = clip.shape[2]
    idx = torch.linspace(0, t - 1, t // alpha).clamp(0, t - 1).long()
    return [clip.index_select(2, idx.to(clip.device)), clip]


def slow_indices(num_frames: int, alpha: int = 4) -> list[int]:
    """The frame indices PyTorchVideo's uniform_temporal_subsample keeps for the slow pathway."""
    return torch.linspace(0, num_frames - 1, num_frames // alpha).clamp(0, num_frames - 1).long().tolist()


class Bottleneck(nn.Module):
    """conv_a (kT x 1 x 1) - BN - ReLU - conv_b (1 x 3 x 3, spatial stride) - BN - ReLU - conv_c (1x1x1) - BN."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, kt: int, stride: int):
        super().__init__()
        self.conv_a = nn.Conv3d(dim_in, dim_inner, (kt, 1, 1), padding=(kt // 2, 0, 0), bias=False)
        self.norm_a = nn.BatchNorm3d(dim_inner)
        self.act_a = nn.ReLU()
        self.conv_b = nn.Conv3d(dim_inner, dim_inner, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False)
        self.norm_b = nn.BatchNorm3d(dim_inner)
        self.act_b = nn.ReLU()
        self.conv_c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.norm_c = nn.BatchNorm3d(dim_out)

    def forward(self, x):
        x = self.act_a(self.norm_a(self.conv_a(x)))
        x = self.act_b(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class ResBlock(nn.Module):
    """branch2(x) + shortcut(x), ReLU; the shortcut is a strided 1x1x1 conv + BN when shapes change."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, kt: int, stride: int):
        super().__init__()
        project = dim_in != dim_out or stride != 1
        self.branch1_conv = nn.Conv3d(dim_in, dim_out, 1, (1, stride, stride), bias=False) if project else None
        self.branch1_norm = nn.BatchNorm3d(dim_out) if project else None
        self.branch2 = Bottleneck(dim_in, dim_inner, dim_out, kt, stride)
        self.activation = nn.ReLU()

    def forward(self, x):
        shortcut = x if self.branch1_conv is None else self.branch1_norm(self.branch1_conv(x))
        return self.activation(self.branch2(x) + shortcut)


class ResStage(nn.Module):
    def __init__(self, depth: int, dim_in: int, dim_inner: int, dim_out: int, kt: int, stride: int):
        super().__init__()
        self.res_blocks = nn.ModuleList(
            [ResBlock(dim_in if i == 0 else dim_out, dim_inner, dim_out, kt, stride if i == 0 else 1)
             for i in range(depth)])

    def forward(self, x):
        for block in self.res_blocks:
            x = block(x)
        return x


class Stem(nn.Module):
    """conv (kT x 7 x 7, spatial stride 2) - BN - ReLU - max-pool (1 x 3 x 3, spatial stride 2)."""

    def __init__(self, in_channels: int, out_channels: int, kt: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, (kt, 7, 7), (1, 2, 2), (kt // 2, 3, 3), bias=False)
        self.norm = nn.BatchNorm3d(out_channels)
        self.activation = nn.ReLU()
        self.pool = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))

    def forward(self, x):
        return self.pool(self.activation(self.norm(self.conv(x))))


class FuseFastToSlow(nn.Module):
    """Lateral connection: a strided temporal conv of the fast features, concatenated to the slow ones."""

    def __init__(self, fast_dim: int, ratio: int, kt: int, alpha: int):
        super().__init__()
        self.conv_fast_to_slow = nn.Conv3d(fast_dim, fast_dim * ratio, (kt, 1, 1), (alpha, 1, 1), (kt // 2, 0, 0),
                                           bias=False)
        self.norm = nn.BatchNorm3d(fast_dim * ratio)
        self.activation = nn.ReLU()

    def forward(self, x):
        slow, fast = x
        fuse = self.activation(self.norm(self.conv_fast_to_slow(fast)))
        return [torch.cat([slow, fuse], 1), fast]


class MultiPathWayWithFuse(nn.Module):
    def __init__(self, multipathway_blocks: list[nn.Module], multipathway_fusion: nn.Module | None):
        super().__init__()
        self.multipathway_blocks = nn.ModuleList(multipathway_blocks)
        self.multipathway_fusion = multipathway_fusion

    def forward(self, x):
        x = [block(xi) for block, xi in zip(self.multipathway_blocks, x)]
        return x if self.multipathway_fusion is None else self.multipathway_fusion(x)


class PoolConcatPathway(nn.Module):
    """Average each pathway's final map (globally, or with a fixed stride-1 kernel) and concatenate."""

    def __init__(self, pool_kernels=None):
        super().__init__()
        self.pool_kernels = pool_kernels

    def forward(self, x):
        if self.pool_kernels is None:
            pooled = [xi.mean((2, 3, 4), keepdim=True) for xi in x]
        else:
            pooled = [nn.functional.avg_pool3d(xi, k, stride=1) for xi, k in zip(x, self.pool_kernels)]
        return torch.cat(pooled, 1)


class Head(nn.Module):
    def __init__(self, in_features: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(in_features, num_classes)

    def forward(self, x):
        """(B, C, t, h, w) pooled map -> logits averaged over its t*h*w positions."""
        return self.proj(self.dropout(x.permute(0, 2, 3, 4, 1))).mean((1, 2, 3))


class SlowFast(nn.Module):
    """Two-pathway ResNet (slow: few frames, wide; fast: `alpha` x frames, `beta_inv` x thinner).

    `head_pool_kernels=None` averages each pathway's last map globally (any clip size);
    PyTorchVideo's hub models use fixed kernels ((8, 7, 7), (32, 7, 7)), equal at 8/32 x 224 x 224.
    """

    def __init__(self, *, depth: int = 50, num_classes: int = 400, alpha: int = 4, beta_inv: int = 8,
                 fusion_ratio: int = 2, fusion_kernel: int = 7, dropout: float = 0.5, in_channels: int = 3,
                 head_pool_kernels=None):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth}")
        self.alpha = alpha
        slow_dim, fast_dim = 64, 64 // beta_inv
        fuse = partial(FuseFastToSlow, ratio=fusion_ratio, kt=fusion_kernel, alpha=alpha)
        blocks = [MultiPathWayWithFuse([Stem(in_channels, slow_dim, 1), Stem(in_channels, fast_dim, 5)],
                                       fuse(fast_dim))]
        dim_in, dim_out = slow_dim, 256
        for i, depth_i in enumerate(DEPTHS[depth]):
            stride = 1 if i == 0 else 2
            slow = ResStage(depth_i, dim_in + dim_in * fusion_ratio // beta_inv, dim_out // 4, dim_out,
                            SLOW_CONV_A_T[i], stride)
            fast = ResStage(depth_i, dim_in // beta_inv, dim_out // 4 // beta_inv, dim_out // beta_inv,
                            FAST_CONV_A_T[i], stride)
            blocks.append(MultiPathWayWithFuse([slow, fast], fuse(dim_out // beta_inv) if i < 3 else None))
            dim_in, dim_out = dim_out, dim_out * 2
        blocks.append(PoolConcatPathway(head_pool_kernels))
        self.num_features = dim_in + dim_in // beta_inv
        blocks.append(Head(self.num_features, num_classes, dropout))
        self.blocks = nn.ModuleList(blocks)
        for m in self.modules():  # PyTorchVideo's init_net_weights
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def _check(self, x):
        if not isinstance(x, (list, tuple)) or len(x) != 2:
            raise ValueError("SlowFast expects a list [slow, fast] of NCDHW clips (see pack_pathways)")
        slow, fast = x
        if fast.shape[2] != slow.shape[2] * self.alpha:
            raise ValueError(f"the fast clip must have alpha={self.alpha} x the slow clip's frames, "
                             f"got slow {tuple(slow.shape)} and fast {tuple(fast.shape)}")
        return list(x)

    def forward_pooled(self, x) -> torch.Tensor:
        """The concatenated pooled map (B, 2304, t, h, w) that the head projects (1x1x1 when global)."""
        x = self._check(x)
        for block in self.blocks[:5]:
            x = block(x)
        return self.blocks[5](x)

    def forward_features(self, x) -> torch.Tensor:
        """Pooled features (B, slow + fast channels) before dropout and the classifier."""
        return self.forward_pooled(x).mean((2, 3, 4))

    def forward(self, x) -> torch.Tensor:
        return self.blocks[6](self.forward_pooled(x))


slowfast_r50 = partial(SlowFast, depth=50, fusion_kernel=7)
slowfast_r101 = partial(SlowFast, depth=101, fusion_kernel=5)

# The names this family registers (`v3d_torch_ref.registry` collects every family's MODELS).
MODELS = {"slowfast_r50": slowfast_r50, "slowfast_r101": slowfast_r101}
