"""torchvision's MViT (mvit_v1_b, mvit_v2_s), PyTorch reference with torchvision's state_dict keys.

`conv_proj` patchifies the clip (3x7x7, stride 2x4x4) into (T/2)(S/4)^2 tokens of 96 channels, after
a class token (`pos_encoding.class_token`; v1 adds separable spatial + temporal + class position
embeddings). Sixteen `MultiscaleBlock`s follow: pre-norm attention whose Q, K and V are pooled per
head by depthwise convs + LayerNorm (`attn.pool_q/k/v`; the class token bypasses the conv), the
skip pooled by a max pool where Q is, `project` widening the channels, and a 4x MLP. v2 adds
decomposed relative position terms (`attn.rel_pos_h/w/t`) to the attention logits and Q to its
output (residual pooling). The head reads the normed class token. Each block's token grids are fixed
at build time from the clip size (`num_frames`, `crop_size`), so a block's forward takes the tokens only.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from v3d_flax.records.mvit import (MVIT_CONFIGS, PATCH_KERNEL, PATCH_PADDING, PATCH_STRIDE, BlockConfig,
                                   block_grids, patch_grid, rel_pos_lengths)
from v3d_torch_ref.blocks import StochasticDepth

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class Pool(nn.Module):
    """Pools the patch tokens (B, heads, 1 + THW, C) on their grid, the class token set aside; then the
    norm (`norm_act.0`, on every token) if there is one."""

    def __init__(self, pool: nn.Module, norm: nn.Module | None):
        super().__init__()
        self.pool = pool
        self.norm_act = nn.Sequential(norm) if norm is not None else None

    def forward(self, x: torch.Tensor, grid) -> torch.Tensor:
        b, n = x.shape[:2]
        cls, tokens = x[:, :, :1], x[:, :, 1:]
        tokens = tokens.transpose(2, 3).reshape(b * n, x.shape[-1], *grid)
        tokens = self.pool(tokens)
        tokens = tokens.reshape(b, n, x.shape[-1], -1).transpose(2, 3)
        x = torch.cat([cls, tokens], 2)
        return self.norm_act(x) if self.norm_act is not None else x


def _depthwise(channels: int, kernel, stride) -> nn.Conv3d:
    return nn.Conv3d(channels, channels, kernel, stride, [k // 2 for k in kernel], groups=channels, bias=False)


def rel_pos_index(q: int, k: int) -> torch.Tensor:
    """Index of the relative position table for each (query, key) pair along one axis, the query and
    key grids scaled to the finer of the two (MViTv2's rule, in torch's float32 arithmetic)."""
    q_ratio, k_ratio = max(k / q, 1.0), max(q / k, 1.0)
    return (torch.arange(q)[:, None] * q_ratio - (torch.arange(k)[None, :] + (1.0 - k)) * k_ratio).long()


def resized_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """`table` (L, C) linearly interpolated along L to `length` rows (as is when it has them)."""
    if table.shape[0] == length:
        return table
    return F.interpolate(table.t()[None], size=length, mode="linear")[0].t()


class MultiscaleAttention(nn.Module):
    """Multi-head pooling attention over the tokens of `grid` (T, H, W); output on the Q-pooled grid."""

    def __init__(self, cfg: BlockConfig, dim_out: int, grids, residual_pool: bool, rel_pos_embed: bool,
                 dropout: float = 0.0):
        super().__init__()
        self.grid, self.kv_grid, self.q_grid, table_grid = grids
        self.num_heads, self.head_dim, self.dim_out = cfg.num_heads, dim_out // cfg.num_heads, dim_out
        self.residual_pool = residual_pool
        self.qkv = nn.Linear(cfg.dim_in, 3 * dim_out)
        self.project = nn.Sequential(nn.Linear(dim_out, dim_out), *([nn.Dropout(dropout)] if dropout > 0 else []))
        hd = self.head_dim
        self.pool_q = self.pool_k = self.pool_v = None
        if math.prod(cfg.kernel_q) > 1 or math.prod(cfg.stride_q) > 1:
            self.pool_q = Pool(_depthwise(hd, cfg.kernel_q, cfg.stride_q), LayerNorm(hd))
        if math.prod(cfg.kernel_kv) > 1 or math.prod(cfg.stride_kv) > 1:
            self.pool_k = Pool(_depthwise(hd, cfg.kernel_kv, cfg.stride_kv), LayerNorm(hd))
            self.pool_v = Pool(_depthwise(hd, cfg.kernel_kv, cfg.stride_kv), LayerNorm(hd))
        self.rel_pos_h = self.rel_pos_w = self.rel_pos_t = None
        if rel_pos_embed:
            spatial, temporal = rel_pos_lengths(table_grid, cfg)
            self.rel_pos_h = nn.Parameter(torch.zeros(spatial, hd))
            self.rel_pos_w = nn.Parameter(torch.zeros(spatial, hd))
            self.rel_pos_t = nn.Parameter(torch.zeros(temporal, hd))

    def rel_pos_bias(self, q: torch.Tensor) -> torch.Tensor:
        """The decomposed relative position logits (B, heads, THW_q, THW_k) of the pooled queries q."""
        terms = []
        for axis, table in enumerate((self.rel_pos_t, self.rel_pos_h, self.rel_pos_w)):
            nq, nk = self.q_grid[axis], self.kv_grid[axis]
            terms.append(resized_table(table, 2 * max(nq, nk) - 1)[rel_pos_index(nq, nk)])  # (nq, nk, C)
        b = q.shape[0]
        rq = q[:, :, 1:].reshape(b, self.num_heads, *self.q_grid, self.head_dim)
        rel_t = torch.einsum("bnthwc,tkc->bnthwk", rq, terms[0])
        rel_h = torch.einsum("bnthwc,hkc->bnthwk", rq, terms[1])
        rel_w = torch.einsum("bnthwc,wkc->bnthwk", rq, terms[2])
        rel = (rel_t[..., :, None, None] + rel_h[..., None, :, None] + rel_w[..., None, None, :])
        return rel.reshape(b, self.num_heads, math.prod(self.q_grid), math.prod(self.kv_grid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[:2]
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.pool_k is not None:
            k, v = self.pool_k(k, self.grid), self.pool_v(v, self.grid)
        if self.pool_q is not None:
            q = self.pool_q(q, self.grid)
        logits = (q / math.sqrt(self.head_dim)) @ k.transpose(2, 3)
        if self.rel_pos_h is not None:
            logits = torch.cat([logits[:, :, :1], torch.cat(
                [logits[:, :, 1:, :1], logits[:, :, 1:, 1:] + self.rel_pos_bias(q)], 3)], 2)
        x = logits.softmax(-1) @ v
        if self.residual_pool:  # the class token's row without it (torchvision's residual_with_cls_embed=False)
            x = torch.cat([x[:, :, :1], x[:, :, 1:] + q[:, :, 1:]], 2)
        return self.project(x.transpose(1, 2).reshape(b, -1, self.dim_out))


class MultiscaleBlock(nn.Module):
    """x + attn(norm1(x)) (the skip max-pooled where Q is, widened first by `project` in v2), then
    + mlp(norm2(x)) (v1 widens that skip instead); stochastic depth on both branches."""

    def __init__(self, cfg: BlockConfig, grids, *, residual_pool: bool, rel_pos_embed: bool, proj_after_attn: bool,
                 dropout: float = 0.0, stochastic_depth_prob: float = 0.0):
        super().__init__()
        self.grid = grids[0]
        self.proj_after_attn = proj_after_attn
        self.pool_skip = None
        if math.prod(cfg.stride_q) > 1:
            kernel = [s + 1 if s > 1 else s for s in cfg.stride_q]
            self.pool_skip = Pool(nn.MaxPool3d(kernel, cfg.stride_q, [k // 2 for k in kernel]), None)
        attn_dim = cfg.dim_out if proj_after_attn else cfg.dim_in
        self.norm1 = LayerNorm(cfg.dim_in)
        self.norm2 = LayerNorm(attn_dim)
        self.attn = MultiscaleAttention(cfg, attn_dim, grids, residual_pool, rel_pos_embed, dropout)
        self.mlp = nn.Sequential(nn.Linear(attn_dim, 4 * attn_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * attn_dim, cfg.dim_out), nn.Dropout(dropout))
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob)
        self.project = nn.Linear(cfg.dim_in, cfg.dim_out) if cfg.dim_in != cfg.dim_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_norm = self.norm1(x)
        attn = self.attn(x_norm)
        if self.project is not None and self.proj_after_attn:
            x = self.project(x_norm)
        if self.pool_skip is not None:
            x = self.pool_skip(x[:, None], self.grid)[:, 0]
        x = x + self.stochastic_depth(attn)
        x_norm = self.norm2(x)
        if self.project is not None and not self.proj_after_attn:
            x = self.project(x_norm)
        return x + self.stochastic_depth(self.mlp(x_norm))


class PositionalEncoding(nn.Module):
    """Prepends the class token; v1 (absolute) also adds class + temporal + spatial position embeddings."""

    def __init__(self, dim: int, grid, absolute: bool):
        super().__init__()
        self.class_token = nn.Parameter(torch.zeros(dim))
        self.spatial_pos = self.temporal_pos = self.class_pos = None
        if absolute:
            self.spatial_pos = nn.Parameter(torch.zeros(grid[1] * grid[2], dim))
            self.temporal_pos = nn.Parameter(torch.zeros(grid[0], dim))
            self.class_pos = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.class_token.expand(x.shape[0], 1, -1), x], 1)
        if self.spatial_pos is None:
            return x
        pos = (self.temporal_pos[:, None] + self.spatial_pos[None]).flatten(0, 1)  # (t, hw) token order
        return x + torch.cat([self.class_pos[None], pos])[None]


class MViT(nn.Module):
    """MViT on NCDHW clips of exactly num_frames x crop_size x crop_size (its tables and grids follow
    the clip it is built for); returns logits."""

    def __init__(self, *, blocks, residual_pool: bool, residual_with_cls_embed: bool, rel_pos_embed: bool,
                 proj_after_attn: bool, num_classes: int = 400, num_frames: int = 16, crop_size: int = 224,
                 dropout: float = 0.5, attention_dropout: float = 0.0, stochastic_depth_prob: float = 0.2,
                 in_channels: int = 3):
        super().__init__()
        if residual_with_cls_embed:
            raise NotImplementedError("residual_with_cls_embed: neither torchvision model uses it")
        self.in_channels, self.num_features = in_channels, blocks[-1].dim_out
        grids = block_grids(blocks, num_frames, crop_size)
        self.final_grid = grids[-1][2]
        self.conv_proj = nn.Conv3d(in_channels, blocks[0].dim_in, PATCH_KERNEL, PATCH_STRIDE, PATCH_PADDING)
        self.pos_encoding = PositionalEncoding(blocks[0].dim_in, patch_grid(num_frames, crop_size), not rel_pos_embed)
        self.blocks = nn.ModuleList([
            MultiscaleBlock(cfg, g, residual_pool=residual_pool, rel_pos_embed=rel_pos_embed,
                            proj_after_attn=proj_after_attn, dropout=attention_dropout,
                            stochastic_depth_prob=stochastic_depth_prob * i / (len(blocks) - 1.0))
            for i, (cfg, g) in enumerate(zip(blocks, grids))])
        self.norm = LayerNorm(self.num_features)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.num_features, num_classes))
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (PositionalEncoding, MultiscaleAttention)):
                for p in m.parameters(recurse=False):
                    nn.init.trunc_normal_(p, std=0.02)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The normed tokens after the last block, (B, 1 + thw, C), the class token first."""
        x = self.pos_encoding(self.conv_proj(x).flatten(2).transpose(1, 2))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """The normed patch tokens of the last block as a map (B, C, t, h, w) (the head reads the class token)."""
        tokens = self.tokens(x)[:, 1:]
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, *self.final_grid)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The normed class token (B, 768) the head classifies."""
        return self.tokens(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


# The names this family registers (`v3d_torch_ref.registry` collects every family's MODELS).
MODELS = {name: partial(MViT, **config) for name, config in MVIT_CONFIGS.items()}
