"""torchvision's MViT (mvit_v1_b, mvit_v2_s) in Flax NNX, NDHWC; module paths equal torchvision's keys.

The structure is `v3d_torch_ref.models.mvit`'s, module for module. Tokens are (B, 1 + T*H*W, C), the
class token first, patch tokens in (t, h, w) order; inside the attention (B, tokens, heads, head_dim),
`jax.nn.dot_product_attention`'s layout, with v2's relative position logits as its `bias`. Every
block's token grids are fixed at build time from the clip size (`num_frames`, `crop_size`), so a
block's `__call__` takes the token array only (what `train.py --remat` needs).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from v3d_flax.layers import Conv3d, Linear, Sequential, check_video_input, max_pool3d, uniform_init
from v3d_flax.records.mvit import (MVIT_CONFIGS, PATCH_KERNEL, PATCH_PADDING, PATCH_STRIDE, BlockConfig,
                                   block_grids, patch_grid, rel_pos_lengths)
from v3d_flax.transformer_layers import LayerNorm, StochasticDepth, mlp, transformer_init

LN_EPS = 1e-6


def torch_conv_init(key, shape, dtype=jnp.float32):
    """torch's default Conv3d weight init (kaiming_uniform_(a=sqrt(5))): U(+-1 / sqrt(fan_in)), DHWIO."""
    bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
    return uniform_init(key, shape, -bound, bound, dtype)


def linear_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 matrix of torch's `F.interpolate(mode="linear", align_corners=False)`."""
    m = np.zeros((n_out, n_in))
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def rel_pos_index(q: int, k: int) -> np.ndarray:
    """Index of the relative position table for each (query, key) pair along one axis, the query and
    key grids scaled to the finer of the two (MViTv2's rule, in torch's float32 arithmetic)."""
    q_ratio, k_ratio = np.float32(max(k / q, 1.0)), np.float32(max(q / k, 1.0))
    dist = (np.arange(q, dtype=np.float32)[:, None] * q_ratio
            - (np.arange(k, dtype=np.float32)[None, :] + np.float32(1.0 - k)) * k_ratio)
    return dist.astype(np.int64)


def resized_table(table: jax.Array, length: int) -> jax.Array:
    """`table` (L, C) linearly interpolated along L to `length` rows (as is when it has them)."""
    if table.shape[0] == length:
        return table
    return jnp.asarray(linear_resize_matrix(table.shape[0], length), table.dtype) @ table


class Pool(nnx.Module):
    """Pools the patch tokens (B, 1 + THW, heads, C) on their grid, the class token set aside: a
    depthwise Conv3d (`pool`) and a LayerNorm (`norm_act.0`, on every token)."""

    def __init__(self, channels: int, kernel, stride, *, rngs: nnx.Rngs):
        self.pool = Conv3d(channels, channels, kernel, stride, tuple(k // 2 for k in kernel), groups=channels,
                           kernel_init=torch_conv_init, rngs=rngs)
        self.norm_act = Sequential([LayerNorm(channels, eps=LN_EPS)])

    def __call__(self, x: jax.Array, grid) -> jax.Array:
        b, _, n, c = x.shape
        tokens = x[:, 1:].reshape(b, *grid, n, c)
        tokens = jnp.moveaxis(tokens, 4, 1).reshape(b * n, *grid, c)
        tokens = self.pool(tokens)
        tokens = jnp.moveaxis(tokens.reshape(b, n, -1, c), 1, 2)
        return self.norm_act(jnp.concatenate([x[:, :1], tokens], 1))


class MultiscaleAttention(nnx.Module):
    """Multi-head pooling attention over the tokens of its block's input grid; output on the Q-pooled grid.
    v2: relative position tables `rel_pos_h/w/t` (torch nn.Parameters) and residual pooling."""

    def __init__(self, cfg: BlockConfig, dim_out: int, grids, residual_pool: bool, rel_pos_embed: bool,
                 dropout: float = 0.0, *, rngs: nnx.Rngs):
        self.grid, self.kv_grid, self.q_grid, table_grid = grids
        self.num_heads, self.head_dim, self.dim_out = cfg.num_heads, dim_out // cfg.num_heads, dim_out
        self.residual_pool = residual_pool
        self.qkv = Linear(cfg.dim_in, 3 * dim_out, kernel_init=transformer_init, rngs=rngs)
        self.project = Sequential([Linear(dim_out, dim_out, kernel_init=transformer_init, rngs=rngs)]
                                  + ([nnx.Dropout(dropout, rngs=rngs)] if dropout > 0 else []))
        hd = self.head_dim
        pool_q = math.prod(cfg.kernel_q) > 1 or math.prod(cfg.stride_q) > 1
        pool_kv = math.prod(cfg.kernel_kv) > 1 or math.prod(cfg.stride_kv) > 1
        self.pool_q = Pool(hd, cfg.kernel_q, cfg.stride_q, rngs=rngs) if pool_q else None
        self.pool_k = Pool(hd, cfg.kernel_kv, cfg.stride_kv, rngs=rngs) if pool_kv else None
        self.pool_v = Pool(hd, cfg.kernel_kv, cfg.stride_kv, rngs=rngs) if pool_kv else None
        spatial, temporal = rel_pos_lengths(table_grid, cfg)

        def table(length):
            return nnx.Param(transformer_init(rngs.params(), (length, hd))) if rel_pos_embed else None

        self.rel_pos_h, self.rel_pos_w, self.rel_pos_t = table(spatial), table(spatial), table(temporal)

    def rel_pos_bias(self, q: jax.Array) -> jax.Array:
        """The decomposed relative position logits (B, heads, 1 + THW_q, 1 + THW_k) of the pooled queries
        q, zero on the class token's row and column."""
        terms = []
        for axis, table in enumerate((self.rel_pos_t, self.rel_pos_h, self.rel_pos_w)):
            nq, nk = self.q_grid[axis], self.kv_grid[axis]
            terms.append(resized_table(table[...].astype(q.dtype), 2 * max(nq, nk) - 1)[rel_pos_index(nq, nk)])
        b = q.shape[0]
        rq = q[:, 1:].reshape(b, *self.q_grid, self.num_heads, self.head_dim)
        rel_t = jnp.einsum("bthwnc,tkc->bnthwk", rq, terms[0])
        rel_h = jnp.einsum("bthwnc,hkc->bnthwk", rq, terms[1])
        rel_w = jnp.einsum("bthwnc,wkc->bnthwk", rq, terms[2])
        rel = rel_t[..., :, None, None] + rel_h[..., None, :, None] + rel_w[..., None, None, :]
        rel = rel.reshape(b, self.num_heads, math.prod(self.q_grid), math.prod(self.kv_grid))
        return jnp.pad(rel, ((0, 0), (0, 0), (1, 0), (1, 0)))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.pool_k is not None:
            k, v = self.pool_k(k, self.grid), self.pool_v(v, self.grid)
        if self.pool_q is not None:
            q = self.pool_q(q, self.grid)
        bias = self.rel_pos_bias(q) if self.rel_pos_h is not None else None
        out = jax.nn.dot_product_attention(q, k, v, bias=bias)
        if self.residual_pool:  # not on the class token (torchvision's residual_with_cls_embed=False)
            out = jnp.concatenate([out[:, :1], out[:, 1:] + q[:, 1:]], 1)
        return self.project(out.reshape(b, -1, self.dim_out))


class SkipPool(nnx.Module):
    """The skip's max pool (kernel stride + 1, torch-style padding) where Q is pooled; class token set aside."""

    def __init__(self, stride, grid):
        self.kernel = tuple(s + 1 if s > 1 else s for s in stride)
        self.stride, self.grid = tuple(stride), tuple(grid)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, _, c = x.shape
        tokens = max_pool3d(x[:, 1:].reshape(b, *self.grid, c), self.kernel, self.stride,
                            tuple(k // 2 for k in self.kernel))
        return jnp.concatenate([x[:, :1], tokens.reshape(b, -1, c)], 1)


class MultiscaleBlock(nnx.Module):
    """x + attn(norm1(x)) (the skip max-pooled where Q is, widened first by `project` in v2), then
    + mlp(norm2(x)) (v1 widens that skip instead); stochastic depth on both branches."""

    def __init__(self, cfg: BlockConfig, grids, *, residual_pool: bool, rel_pos_embed: bool, proj_after_attn: bool,
                 dropout: float = 0.0, stochastic_depth_prob: float = 0.0, rngs: nnx.Rngs):
        self.proj_after_attn = proj_after_attn
        self.pool_skip = SkipPool(cfg.stride_q, grids[0]) if math.prod(cfg.stride_q) > 1 else None
        attn_dim = cfg.dim_out if proj_after_attn else cfg.dim_in
        self.norm1 = LayerNorm(cfg.dim_in, eps=LN_EPS)
        self.norm2 = LayerNorm(attn_dim, eps=LN_EPS)
        self.attn = MultiscaleAttention(cfg, attn_dim, grids, residual_pool, rel_pos_embed, dropout, rngs=rngs)
        self.mlp = mlp(attn_dim, 4 * attn_dim, cfg.dim_out, dropout, rngs=rngs)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, rngs=rngs)
        self.project = (Linear(cfg.dim_in, cfg.dim_out, kernel_init=transformer_init, rngs=rngs)
                        if cfg.dim_in != cfg.dim_out else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        x_norm = self.norm1(x)
        attn = self.attn(x_norm)
        if self.project is not None and self.proj_after_attn:
            x = self.project(x_norm)
        if self.pool_skip is not None:
            x = self.pool_skip(x)
        x = x + self.stochastic_depth(attn)
        x_norm = self.norm2(x)
        if self.project is not None and not self.proj_after_attn:
            x = self.project(x_norm)
        return x + self.stochastic_depth(self.mlp(x_norm))


class PositionalEncoding(nnx.Module):
    """Prepends the class token; v1 (absolute) also adds class + temporal + spatial position embeddings."""

    def __init__(self, dim: int, grid, absolute: bool, *, rngs: nnx.Rngs):
        self.class_token = nnx.Param(transformer_init(rngs.params(), (dim,)))

        def table(*shape):
            return nnx.Param(transformer_init(rngs.params(), shape)) if absolute else None

        self.spatial_pos, self.temporal_pos = table(grid[1] * grid[2], dim), table(grid[0], dim)
        self.class_pos = table(dim)

    def __call__(self, x: jax.Array) -> jax.Array:
        cls = jnp.broadcast_to(self.class_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], 1)
        if self.spatial_pos is None:
            return x
        pos = (self.temporal_pos[...][:, None] + self.spatial_pos[...][None]).reshape(-1, x.shape[-1])
        return x + jnp.concatenate([self.class_pos[...][None], pos]).astype(x.dtype)


class MViT(nnx.Module):
    """MViT on NDHWC clips of exactly num_frames x crop_size x crop_size (its position tables and token
    grids follow the clip it is built for: rebuild with `num_frames=` / `crop_size=`, and load weights of
    another size with `port.from_torch(..., resize=True)`); returns logits."""

    def __init__(self, *, blocks, residual_pool: bool, residual_with_cls_embed: bool, rel_pos_embed: bool,
                 proj_after_attn: bool, num_classes: int = 400, num_frames: int = 16, crop_size: int = 224,
                 dropout: float = 0.5, attention_dropout: float = 0.0, stochastic_depth_prob: float = 0.2,
                 in_channels: int = 3, rngs: nnx.Rngs):
        if residual_with_cls_embed:
            raise NotImplementedError("residual_with_cls_embed: neither torchvision model uses it")
        self.in_channels, self.num_features = in_channels, blocks[-1].dim_out
        self.num_frames, self.crop_size = num_frames, crop_size
        grids = block_grids(blocks, num_frames, crop_size)
        self.final_grid = grids[-1][2]
        self.conv_proj = Conv3d(in_channels, blocks[0].dim_in, PATCH_KERNEL, PATCH_STRIDE, PATCH_PADDING,
                                use_bias=True, kernel_init=torch_conv_init, rngs=rngs)
        self.pos_encoding = PositionalEncoding(blocks[0].dim_in, patch_grid(num_frames, crop_size), not rel_pos_embed,
                                               rngs=rngs)
        self.blocks = nnx.List([
            MultiscaleBlock(cfg, g, residual_pool=residual_pool, rel_pos_embed=rel_pos_embed,
                            proj_after_attn=proj_after_attn, dropout=attention_dropout,
                            stochastic_depth_prob=stochastic_depth_prob * i / (len(blocks) - 1.0), rngs=rngs)
            for i, (cfg, g) in enumerate(zip(blocks, grids))])
        self.norm = LayerNorm(self.num_features, eps=LN_EPS)
        self.head = Sequential([nnx.Dropout(dropout, rngs=rngs),
                                Linear(self.num_features, num_classes, kernel_init=transformer_init, rngs=rngs)])

    def tokens(self, x: jax.Array) -> jax.Array:
        """The normed tokens after the last block, (B, 1 + thw, C), the class token first."""
        check_video_input(x, channels=self.in_channels, name="MViT", frames=self.num_frames,
                          size=(self.crop_size, self.crop_size))
        x = self.conv_proj(x)
        x = self.pos_encoding(x.reshape(x.shape[0], -1, x.shape[-1]))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_map(self, x: jax.Array) -> jax.Array:
        """The normed patch tokens of the last block as a map (B, t, h, w, C) (the head reads the class token)."""
        tokens = self.tokens(x)[:, 1:]
        return tokens.reshape(x.shape[0], *self.final_grid, tokens.shape[-1])

    def forward_features(self, x: jax.Array) -> jax.Array:
        """The normed class token (B, 768) the head classifies."""
        return self.tokens(x)[:, 0]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.forward_features(x))


mvit_v1_b = partial(MViT, **MVIT_CONFIGS["mvit_v1_b"])
mvit_v2_s = partial(MViT, **MVIT_CONFIGS["mvit_v2_s"])


def resize_state(state: dict, shapes: dict) -> dict:
    """`state` (torch-named numpy arrays of an MViT built for one clip) fitted to `shapes`
    (`port.torch_shapes` of one built for another): v1's `pos_encoding.spatial_pos` resized as a 2D
    grid bicubically (timm's `resample_abs_pos_embed` for ViT position embeddings; its
    `align_corners=False` taps, the cubic coefficient -0.75 of torch), `temporal_pos` and v2's
    `rel_pos_h/w/t` linearly along their length (as torchvision's and MViTv2's attention interpolates
    its tables when the grids differ); every other key as it was."""
    out = dict(state)
    for key, value in state.items():
        target = tuple(shapes.get(key, np.shape(value)))
        if tuple(np.shape(value)) == target:
            continue
        value = np.asarray(value)
        if key.endswith("spatial_pos"):
            side, new_side = math.isqrt(value.shape[0]), math.isqrt(target[0])
            grid = value.reshape(side, side, -1)
            m = cubic_resize_matrix(side, new_side)
            out[key] = np.einsum("ih,jw,hwc->ijc", m, m, grid).reshape(target).astype(value.dtype)
        elif key.endswith(("temporal_pos", "rel_pos_h", "rel_pos_w", "rel_pos_t")):
            out[key] = (linear_resize_matrix(value.shape[0], target[0]) @ value).astype(value.dtype)
    return out


def cubic_resize_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """(n_out, n_in) float64 matrix of torch's `F.interpolate(mode="bicubic", align_corners=False)` along one axis
    (Keys' cubic, coefficient `a`; edge taps clamped to the border)."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        base = math.floor(src)
        t = src - base
        weights = ((((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a),
                   ((a + 2) * t - (a + 3)) * t * t + 1,
                   ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
                   (((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a))
        for tap, w in zip(range(base - 1, base + 3), weights):
            m[i, min(max(tap, 0), n_in - 1)] += w
    return m
