"""SlowFast (PyTorchVideo's create_slowfast), PyTorch reference with PyTorchVideo's state_dict keys.

Input: a list [slow, fast] of NCDHW clips, the fast one `alpha` times longer (PyTorchVideo's order).
Module names equal PyTorchVideo's, so its hub checkpoints load with no renaming:
`blocks.0` stems, `blocks.1..4` stages (`multipathway_blocks.{0 slow, 1 fast}.res_blocks.j`),
each followed by `multipathway_fusion` (fast -> slow lateral conv; none after the last stage),
`blocks.5` per-pathway pooling and concatenation (no weights), `blocks.6` dropout + `proj`.
Each pathway's stem and stages are the ResNet-50 family's (`v3d_torch_ref.models.resnet50`).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from v3d_flax.records.slowfast import SLOWFAST_ALPHA, SLOWFAST_CONV_A_KT, SLOWFAST_MODELS, slowfast_stages
from v3d_torch_ref.blocks import init_weights
from v3d_torch_ref.models.resnet50 import ResStage, Stem


def slow_indices(num_frames: int, alpha: int = SLOWFAST_ALPHA) -> list[int]:
    """The frame indices PyTorchVideo's uniform_temporal_subsample keeps for the slow pathway
    (computed with torch.linspace, as PyTorchVideo does: `v3d_flax.models.slowfast` reproduces it)."""
    return torch.linspace(0, num_frames - 1, num_frames // alpha).clamp(0, num_frames - 1).long().tolist()


def pack_pathways(clip: torch.Tensor, alpha: int = SLOWFAST_ALPHA) -> list[torch.Tensor]:
    """[slow, fast] from one NCDHW clip of T frames, as PyTorchVideo's PackPathway transform:
    the fast pathway is the clip, the slow one T // alpha frames at `slow_indices(T, alpha)`."""
    if clip.ndim != 5:
        raise ValueError(f"pack_pathways expects an NCDHW clip (batch, channels, frames, height, width), got {tuple(clip.shape)}")
    idx = torch.tensor(slow_indices(clip.shape[2], alpha), dtype=torch.long, device=clip.device)
    return [clip.index_select(2, idx), clip]


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

    def __init__(self, pool_kernel=None):
        super().__init__()
        self.pool_kernel = pool_kernel

    def forward(self, x):
        if self.pool_kernel is None:
            pooled = [xi.mean((2, 3, 4), keepdim=True) for xi in x]
        else:
            pooled = [nn.functional.avg_pool3d(xi, k, stride=1) for xi, k in zip(x, self.pool_kernel)]
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

    `head_pool_kernel=None` averages each pathway's last map globally (any clip size);
    PyTorchVideo's hub models use a fixed (slow, fast) pair of kernels, equal to it at 8/32 x 224 x 224.
    """

    def __init__(self, *, depth: int = 50, num_classes: int = 400, alpha: int = SLOWFAST_ALPHA, beta_inv: int = 8,
                 fusion_ratio: int = 2, fusion_kernel: int = 7, dropout: float = 0.5, in_channels: int = 3,
                 head_pool_kernel=None):
        super().__init__()
        stages = slowfast_stages(depth, beta_inv, fusion_ratio)
        self.alpha, self.in_channels = alpha, in_channels
        slow_dim, fast_dim = 64, 64 // beta_inv
        fuse = partial(FuseFastToSlow, ratio=fusion_ratio, kt=fusion_kernel, alpha=alpha)
        blocks = [MultiPathWayWithFuse([Stem(in_channels, slow_dim, 1, True), Stem(in_channels, fast_dim, 5, True)],
                                       fuse(fast_dim))]
        for i, (depth_i, spatial_stride, slow_dims, fast_dims) in enumerate(stages):
            stride = (1, spatial_stride, spatial_stride)
            slow = ResStage(depth_i, *slow_dims, (SLOWFAST_CONV_A_KT["slow"][i],), "spatial", stride)
            fast = ResStage(depth_i, *fast_dims, (SLOWFAST_CONV_A_KT["fast"][i],), "spatial", stride)
            blocks.append(MultiPathWayWithFuse([slow, fast], fuse(fast_dims[-1]) if i < 3 else None))
        blocks.append(PoolConcatPathway(head_pool_kernel))
        self.num_features = stages[-1][2][-1] + stages[-1][3][-1]  # res5's slow + fast widths
        blocks.append(Head(self.num_features, num_classes, dropout))
        self.blocks = nn.ModuleList(blocks)
        init_weights(self)  # PyTorchVideo's init_net_weights

    def _check(self, x):
        if not isinstance(x, (list, tuple)) or len(x) != 2:
            raise ValueError("SlowFast expects a list [slow, fast] of NCDHW clips (see pack_pathways)")
        slow, fast = x
        if fast.shape[2] != slow.shape[2] * self.alpha:
            raise ValueError(f"the fast clip must have alpha={self.alpha} x the slow clip's frames, "
                             f"got slow {tuple(slow.shape)} and fast {tuple(fast.shape)}")
        return list(x)

    def forward_map(self, x) -> list[torch.Tensor]:
        """The last stage's [slow, fast] feature maps, (B, 2048, t, h, w) and (B, 256, alpha t, h, w)."""
        x = self._check(x)
        for block in self.blocks[:5]:
            x = block(x)
        return x

    def forward_features(self, x) -> torch.Tensor:
        """Pooled features (B, slow + fast channels) before dropout and the classifier."""
        return self.blocks[5](self.forward_map(x)).mean((2, 3, 4))

    def forward(self, x) -> torch.Tensor:
        return self.blocks[6](self.blocks[5](self.forward_map(x)))


# The names this family registers (`v3d_torch_ref.registry` collects every family's MODELS).
MODELS = {name: partial(SlowFast, **arch) for name, arch in SLOWFAST_MODELS.items()}
