"""torchvision's Video Swin Transformer (`swin3d_t/s/b`), PyTorch reference with torchvision's state_dict keys.

`patch_embed` (a (2, 4, 4) strided conv on the clip padded to multiples of the patch, LayerNorm),
`features` (stages of `SwinTransformerBlock`s at even indices, `PatchMerging` between them at odd
ones), `norm`, a global average and `head`. Each attention module keeps its window's bias table
(`relative_position_bias_table`) and the persistent buffer `relative_position_index`.
Tensors inside the blocks are channels-last (B, T, H, W, C), as in torchvision.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from v3d_flax.records.swin3d import (PATCH_SIZE, STOCHASTIC_DEPTH_PROB, SWIN3D, WINDOW_SIZE, block_shift,
                                     window_and_shift)
from v3d_torch_ref.blocks import StochasticDepth


def relative_position_index(window_size) -> torch.Tensor:
    """(V, V) index of every token pair's offset in the (2Wd-1, 2Wh-1, 2Ww-1) table, row-major."""
    grids = torch.meshgrid(*[torch.arange(w) for w in window_size], indexing="ij")
    coords = torch.stack([g.flatten() for g in grids])  # (3, V)
    offsets = coords[:, :, None] - coords[:, None, :]
    index = torch.zeros(offsets.shape[1:], dtype=torch.int64)
    for axis, w in enumerate(window_size):
        stride = math.prod(2 * v - 1 for v in window_size[axis + 1:])
        index += (offsets[axis] + w - 1) * stride
    return index


def _windows(x: torch.Tensor, window) -> torch.Tensor:
    """(B, T, H, W, C) -> (B * windows, V, C)."""
    b, t, h, w, c = x.shape
    x = x.view(b, t // window[0], window[0], h // window[1], window[1], w // window[2], window[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, math.prod(window), c)


def attention_mask(padded, window, shift) -> torch.Tensor:
    """(windows, V, V): 0 between tokens of one region of the rolled map, -100 otherwise. Regions are
    the 27 products of three slices per axis, assigned one after the other as torchvision does."""
    regions = torch.zeros(padded)
    bounds = [((0, -w), (-w, -s), (-s, None)) for w, s in zip(window, shift)]
    count = 0
    for d0, d1 in bounds[0]:
        for h0, h1 in bounds[1]:
            for w0, w1 in bounds[2]:
                regions[d0:d1, h0:h1, w0:w1] = count
                count += 1
    labels = _windows(regions[None, ..., None], window)[..., 0]
    return torch.where(labels[:, None, :] != labels[:, :, None], -100.0, 0.0)


class ShiftedWindowAttention3d(nn.Module):
    """Multi-head self-attention within (shifted) windows with a relative position bias."""

    def __init__(self, dim: int, window_size, shift_size, num_heads: int, attention_dropout: float = 0.0,
                 dropout: float = 0.0):
        super().__init__()
        self.window_size, self.shift_size, self.num_heads = tuple(window_size), tuple(shift_size), num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        table = math.prod(2 * w - 1 for w in self.window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))
        self.attention_dropout = nn.Dropout(attention_dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h, w, c = x.shape
        window, shift = window_and_shift((t, h, w), self.window_size, self.shift_size)
        pads = [-n % k for n, k in zip((t, h, w), window)]
        x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        padded = tuple(x.shape[1:4])
        if any(shift):
            x = torch.roll(x, [-s for s in shift], dims=(1, 2, 3))
        tokens = _windows(x, window)
        n, vol = tokens.shape[:2]
        heads = self.num_heads
        q, k, v = self.qkv(tokens).reshape(n, vol, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)  # (n, heads, V, V)
        index = self.relative_position_index[:vol, :vol].reshape(-1)  # torchvision's slice for clipped windows
        attn = attn + self.relative_position_bias_table[index].view(vol, vol, heads).permute(2, 0, 1)
        if any(shift):
            mask = attention_mask(padded, window, shift).to(attn)
            attn = (attn.view(b, -1, heads, vol, vol) + mask[None, :, None]).view(n, heads, vol, vol)
        attn = self.attention_dropout(attn.softmax(-1))
        out = self.dropout(self.proj((attn @ v).transpose(1, 2).reshape(n, vol, c)))
        out = out.view(b, padded[0] // window[0], padded[1] // window[1], padded[2] // window[2], *window, c)
        x = out.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, *padded, c)
        if any(shift):
            x = torch.roll(x, list(shift), dims=(1, 2, 3))
        return x[:, :t, :h, :w].contiguous()


class SwinTransformerBlock(nn.Module):
    """Pre-norm residual attention and MLP, each branch through the block's stochastic depth."""

    def __init__(self, dim: int, num_heads: int, window_size, shift_size, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, attention_dropout: float = 0.0, stochastic_depth_prob: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftedWindowAttention3d(dim, window_size, shift_size, num_heads, attention_dropout, dropout)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.stochastic_depth(self.attn(self.norm1(x)))
        return x + self.stochastic_depth(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 spatial neighbours (order (0,0), (1,0), (0,1), (1,1) of (h, w)) concatenated, LayerNorm,
    bias-free linear 4C -> 2C; odd H or W padded with zeros first."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-3:-1]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]],
                      -1)
        return self.reduction(self.norm(x))


class PatchEmbed3d(nn.Module):
    """Pad to multiples of the patch, conv with kernel = stride = patch, channels last, LayerNorm."""

    def __init__(self, patch_size, in_channels: int, embed_dim: int):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_channels, embed_dim, self.patch_size, self.patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = [-n % p for n, p in zip(x.shape[2:], self.patch_size)]
        x = self.proj(F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0])))
        return self.norm(x.permute(0, 2, 3, 4, 1))


class SwinTransformer3d(nn.Module):
    """Video Swin Transformer on NCDHW clips of any size; returns logits. `window_size` (T, H, W) in
    tokens (torchvision's (8, 7, 7) by default)."""

    def __init__(self, *, embed_dim: int, depths, num_heads, patch_size=PATCH_SIZE, window_size=WINDOW_SIZE,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, attention_dropout: float = 0.0,
                 stochastic_depth_prob: float = STOCHASTIC_DEPTH_PROB, num_classes: int = 400, in_channels: int = 3):
        super().__init__()
        self.in_channels = in_channels
        self.patch_embed = PatchEmbed3d(patch_size, in_channels, embed_dim)
        self.pos_drop = nn.Dropout(dropout)
        layers, total, block_id = [], sum(depths), 0
        for stage, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = embed_dim * 2 ** stage
            blocks = []
            for i in range(depth):
                prob = stochastic_depth_prob * block_id / (total - 1)
                blocks.append(SwinTransformerBlock(dim, heads, window_size, block_shift(i, window_size), mlp_ratio,
                                                   dropout, attention_dropout, prob))
                block_id += 1
            layers.append(nn.Sequential(*blocks))
            if stage < len(depths) - 1:
                layers.append(PatchMerging(dim))
        self.features = nn.Sequential(*layers)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes)
        for m in self.modules():  # torchvision's init of every linear layer
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised last stage's tokens, returned NCDHW (B, C, t, h, w)."""
        x = self.norm(self.features(self.pos_drop(self.patch_embed(x))))
        return x.permute(0, 4, 1, 2, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally averaged tokens (B, C) before the head."""
        return self.forward_map(x).mean((2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


# The names this family registers (`v3d_torch_ref.registry` collects every family's MODELS).
MODELS = {name: partial(SwinTransformer3d, **config) for name, config in SWIN3D.items()}
