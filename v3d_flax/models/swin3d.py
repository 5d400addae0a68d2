"""torchvision's Video Swin Transformer (`swin3d_t/s/b`) in Flax NNX, NDHWC; module paths equal
torchvision's state_dict keys.

A clip of any size is taken: the patch embedding pads it to multiples of the (2, 4, 4) patch, each
block pads its token map to multiples of its window. The window of an axis no longer than the window
shrinks to the map's length and that axis is not shifted (torchvision's rule, `window_and_shift`).
Windows are cut out with reshapes and transposes of the whole map and become the batch of
`jax.nn.dot_product_attention`, whose `bias` carries the relative position bias and the -100 mask of
shifted windows.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from v3d_flax.layers import Conv3d, Linear, Sequential, check_video_input
from v3d_flax.records.swin3d import (PATCH_SIZE, STOCHASTIC_DEPTH_PROB, SWIN3D, WINDOW_SIZE, block_shift,
                                     window_and_shift)
from v3d_flax.transformer_layers import LayerNorm, StochasticDepth, mlp, transformer_init

MASKED = -100.0  # torchvision's additive mask between tokens of different regions of a shifted window


def relative_position_index(window_size) -> np.ndarray:
    """(V, V) index into the (2Wd-1)(2Wh-1)(2Ww-1) bias table of every token pair of a window of V
    tokens, tokens in (t, h, w) row-major order: the row-major index of their offset, shifted to >= 0."""
    coords = np.stack(np.meshgrid(*[np.arange(w) for w in window_size], indexing="ij")).reshape(3, -1)
    offsets = coords[:, :, None] - coords[:, None, :] + np.array(window_size)[:, None, None] - 1
    return np.ravel_multi_index(tuple(offsets), tuple(2 * w - 1 for w in window_size)).astype(np.int64)


def _region_labels(length: int, window: int, shift: int) -> np.ndarray:
    """Per position of one padded axis, which of torchvision's three slices [0:-window],
    [-window:-shift], [-shift:] (with Python's meaning of -0) it was assigned last."""
    labels = np.zeros(length, np.int64)
    for i, (start, stop) in enumerate(((0, -window), (-window, -shift), (-shift, None))):
        labels[start:stop] = i
    return labels


def _partition(x: jax.Array, window) -> jax.Array:
    """(B, T, H, W, ...) with T, H, W multiples of `window` -> (B * windows, window volume, ...), the
    windows in (t, h, w) row-major order."""
    b, t, h, w = x.shape[:4]
    wd, wh, ww = window
    x = x.reshape(b, t // wd, wd, h // wh, wh, w // ww, ww, *x.shape[4:])
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, *range(7, x.ndim))
    return x.reshape(-1, wd * wh * ww, *x.shape[7:])


def _unpartition(x: jax.Array, window, padded, batch: int) -> jax.Array:
    """The inverse of `_partition` for (B * windows, volume, C)."""
    (wd, wh, ww), (t, h, w) = window, padded
    x = x.reshape(batch, t // wd, h // wh, w // ww, wd, wh, ww, x.shape[-1])
    return x.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, t, h, w, x.shape[-1])


def shifted_window_mask(padded, window, shift) -> np.ndarray:
    """(windows, V) region label of every token of every window of the rolled map: tokens of one window
    attend to each other only within one region (torchvision's attention mask of shifted windows)."""
    labels = [_region_labels(n, w, s) for n, w, s in zip(padded, window, shift)]
    grid = labels[0][:, None, None] * 9 + labels[1][None, :, None] * 3 + labels[2][None, None, :]
    return _partition(grid[None], window)  # numpy in, numpy out


class ShiftedWindowAttention3d(nnx.Module):
    """Multi-head self-attention within (shifted) 3D windows, with a learned relative position bias
    (`relative_position_bias_table`, one column per head) and the torch buffer `relative_position_index`."""

    def __init__(self, dim: int, window_size, shift_size, num_heads: int, attention_dropout: float = 0.0,
                 dropout: float = 0.0, *, rngs: nnx.Rngs):
        self.window_size, self.shift_size, self.num_heads = tuple(window_size), tuple(shift_size), num_heads
        self.qkv = Linear(dim, 3 * dim, kernel_init=transformer_init, rngs=rngs)
        self.proj = Linear(dim, dim, kernel_init=transformer_init, rngs=rngs)
        table = math.prod(2 * w - 1 for w in self.window_size)
        self.relative_position_bias_table = nnx.Param(transformer_init(rngs.params(), (table, num_heads)))
        self.attention_dropout = nnx.Dropout(attention_dropout, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def torch_buffers(self) -> dict[str, np.ndarray]:
        """The persistent buffer of torchvision's module, computed from the window size."""
        return {"relative_position_index": relative_position_index(self.window_size)}

    def relative_position_bias(self, window) -> jax.Array:
        """(heads, V, V) bias of a window of `window` tokens. torchvision takes the first V rows and
        columns of the full window's index, also when the window is clipped to a smaller map."""
        vol = math.prod(window)
        index = relative_position_index(self.window_size)[:vol, :vol]
        bias = jnp.take(self.relative_position_bias_table[...], index.reshape(-1), axis=0)
        return bias.reshape(vol, vol, self.num_heads).transpose(2, 0, 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, h, w, c = x.shape
        window, shift = window_and_shift((t, h, w), self.window_size, self.shift_size)
        x = jnp.pad(x, [(0, 0), *[(0, -n % k) for n, k in zip((t, h, w), window)], (0, 0)])
        padded = x.shape[1:4]
        if any(shift):
            x = jnp.roll(x, [-s for s in shift], axis=(1, 2, 3))
        tokens = _partition(x, window)  # (b * windows, V, c)
        heads, vol = self.num_heads, math.prod(window)
        q, k, v = jnp.moveaxis(self.qkv(tokens).reshape(-1, vol, 3, heads, c // heads), 2, 0)
        bias = self.relative_position_bias(window).astype(x.dtype)[None]
        if any(shift):
            labels = shifted_window_mask(padded, window, shift)  # (windows, V)
            mask = jnp.where(labels[:, :, None] != labels[:, None, :], MASKED, 0.0).astype(x.dtype)
            bias = (bias + mask[:, None]).reshape(1, -1, heads, vol, vol)
            bias = jnp.broadcast_to(bias, (b, *bias.shape[1:])).reshape(-1, heads, vol, vol)
        if self.attention_dropout.rate > 0 and not self.attention_dropout.deterministic:
            # dropout on the attention weights: the same attention written out
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (c // heads) ** -0.5 + bias
            weights = self.attention_dropout(jax.nn.softmax(logits, axis=-1))
            out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        else:
            out = jax.nn.dot_product_attention(q, k, v, bias=bias, scale=(c // heads) ** -0.5)
        out = self.dropout(self.proj(out.reshape(-1, vol, c)))
        x = _unpartition(out, window, padded, b)
        if any(shift):
            x = jnp.roll(x, shift, axis=(1, 2, 3))
        return x[:, :t, :h, :w]


class SwinTransformerBlock(nnx.Module):
    """x + drop_path(attn(norm1(x))), then x + drop_path(mlp(norm2(x))) (pre-norm, one stochastic
    depth module drawn twice)."""

    def __init__(self, dim: int, num_heads: int, window_size, shift_size, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, attention_dropout: float = 0.0, stochastic_depth_prob: float = 0.0, *,
                 rngs: nnx.Rngs):
        self.norm1 = LayerNorm(dim)
        self.attn = ShiftedWindowAttention3d(dim, window_size, shift_size, num_heads, attention_dropout, dropout,
                                             rngs=rngs)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, rngs=rngs)
        self.norm2 = LayerNorm(dim)
        self.mlp = mlp(dim, int(dim * mlp_ratio), dim, dropout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.stochastic_depth(self.attn(self.norm1(x)))
        return x + self.stochastic_depth(self.mlp(self.norm2(x)))


class PatchMerging(nnx.Module):
    """Halves H and W (padding odd sizes with zeros): the 2x2 neighbours concatenated in the order
    (0, 0), (1, 0), (0, 1), (1, 1) of (h, w), LayerNorm over the 4C, a bias-free linear to 2C."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.reduction = Linear(4 * dim, 2 * dim, use_bias=False, kernel_init=transformer_init, rngs=rngs)
        self.norm = LayerNorm(4 * dim)

    def __call__(self, x: jax.Array) -> jax.Array:
        h, w = x.shape[-3:-1]
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(0, h % 2), (0, w % 2), (0, 0)])
        x = jnp.concatenate([x[..., i::2, j::2, :] for j in (0, 1) for i in (0, 1)], axis=-1)
        return self.reduction(self.norm(x))


class PatchEmbed3d(nnx.Module):
    """Pads the clip to multiples of the patch, a strided conv (patch = kernel = stride), LayerNorm."""

    def __init__(self, patch_size, in_channels: int, embed_dim: int, *, rngs: nnx.Rngs):
        self.patch_size = tuple(patch_size)
        self.proj = Conv3d(in_channels, embed_dim, self.patch_size, self.patch_size, use_bias=True, rngs=rngs)
        self.norm = LayerNorm(embed_dim)

    def __call__(self, x: jax.Array) -> jax.Array:
        pads = [(0, -n % p) for n, p in zip(x.shape[1:4], self.patch_size)]
        return self.norm(self.proj(jnp.pad(x, [(0, 0), *pads, (0, 0)])))


class SwinTransformer3d(nnx.Module):
    """Video Swin Transformer on NDHWC clips of any size; returns logits.

    `window_size` (T, H, W) in tokens, torchvision's (8, 7, 7) by default: another window changes the
    relative position tables, which `resize_state` interpolates from a checkpoint of the default one.
    Stochastic depth grows linearly from 0 on the first block to `stochastic_depth_prob` on the last.
    """

    def __init__(self, *, embed_dim: int, depths, num_heads, patch_size=PATCH_SIZE, window_size=WINDOW_SIZE,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, attention_dropout: float = 0.0,
                 stochastic_depth_prob: float = STOCHASTIC_DEPTH_PROB, num_classes: int = 400, in_channels: int = 3,
                 rngs: nnx.Rngs):
        if len(tuple(window_size)) != 3 or min(window_size) < 1:
            raise ValueError(f"Swin3D window_size must be 3 positive sizes (T, H, W), got {window_size}")
        self.in_channels = in_channels
        self.patch_embed = PatchEmbed3d(patch_size, in_channels, embed_dim, rngs=rngs)
        self.pos_drop = nnx.Dropout(dropout, rngs=rngs)
        layers, total, block_id = [], sum(depths), 0
        for stage, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = embed_dim * 2 ** stage
            blocks = []
            for i in range(depth):
                prob = stochastic_depth_prob * block_id / (total - 1)
                blocks.append(SwinTransformerBlock(dim, heads, window_size, block_shift(i, window_size), mlp_ratio,
                                                   dropout, attention_dropout, prob, rngs=rngs))
                block_id += 1
            layers.append(Sequential(blocks))
            if stage < len(depths) - 1:
                layers.append(PatchMerging(dim, rngs=rngs))
        self.features = Sequential(layers)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = LayerNorm(self.num_features)
        self.head = Linear(self.num_features, num_classes, kernel_init=transformer_init, rngs=rngs)

    def forward_map(self, x: jax.Array) -> jax.Array:
        """The normalised last stage's tokens (B, t, h, w, C) that the head averages."""
        check_video_input(x, channels=self.in_channels, name="Swin3D")
        return self.norm(self.features(self.pos_drop(self.patch_embed(x))))

    def forward_features(self, x: jax.Array) -> jax.Array:
        """Globally averaged tokens (B, C) before the head."""
        return jnp.mean(self.forward_map(x), axis=(1, 2, 3))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.forward_features(x))


def _factor_windows(vol: int, table: int):
    """Every (Wd, Wh, Ww) of `vol` tokens whose bias table has `table` rows."""
    return [(a, b, vol // (a * b)) for a in range(1, vol + 1) if vol % a == 0 for b in range(1, vol // a + 1)
            if (vol // a) % b == 0 and (2 * a - 1) * (2 * b - 1) * (2 * (vol // (a * b)) - 1) == table]


def _window_of_index(index: np.ndarray) -> tuple[int, int, int]:
    """The window a `relative_position_index` buffer was computed for (its row of token 0 spells it)."""
    vol = index.shape[0]
    for window in _factor_windows(vol, int(index.max()) + 1):
        if index.shape == (vol, vol) and np.array_equal(index, relative_position_index(window)):
            return window
    raise ValueError(f"relative_position_index of shape {index.shape} is no window's")


def _cubic_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(out, in) weights of torch's bicubic interpolation (A = -0.75, align_corners=False, edges clamped)."""
    a = -0.75
    src = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
    base = np.floor(src).astype(np.int64)
    t = src - base
    d = np.stack([1 + t, t, 1 - t, 2 - t], 1)  # distances to the taps base-1 .. base+2
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    weights = np.where(d <= 1, near, far)
    matrix = np.zeros((size_out, size_in))
    for k in range(4):
        np.add.at(matrix, (np.arange(size_out), np.clip(base - 1 + k, 0, size_in - 1)), weights[:, k])
    return matrix


def resize_bias_table(table: np.ndarray, window, new_window) -> np.ndarray:
    """A (2Wd-1)(2Wh-1)(2Ww-1) x heads bias table of `window` interpolated to `new_window`: per head,
    bicubic over its 3D grid of offsets (timm's resize of relative position tables, axis by axis)."""
    grid = np.asarray(table, np.float64).T.reshape(-1, *(2 * w - 1 for w in window))
    for axis, (n, m) in enumerate(zip(window, new_window)):
        if n != m:
            grid = np.moveaxis(np.tensordot(_cubic_matrix(2 * n - 1, 2 * m - 1), grid, (1, axis + 1)), 0, axis + 1)
    return grid.reshape(grid.shape[0], -1).T.astype(table.dtype)


def resize_state(state: dict, shapes: dict) -> dict:
    """`state` (torch names, numpy arrays) for the model whose `port.torch_shapes` are `shapes`: every
    `relative_position_bias_table` interpolated to that model's window (`resize_bias_table`) and its
    `relative_position_index` replaced by that window's; every other key unchanged.

    The window of a checkpoint is read off its index buffer; the target's from its shapes (the
    window whose volume and table size they are; between axis orders of one volume, the one nearest
    the checkpoint's window).
    """
    out = dict(state)
    for key, value in state.items():
        if not key.endswith(".relative_position_index") or key not in shapes:
            continue
        prefix = key[: -len("relative_position_index")]
        table_key = prefix + "relative_position_bias_table"
        window = _window_of_index(np.asarray(value))
        (table, heads), (vol, _) = shapes[table_key], shapes[key]
        if tuple(shapes[key]) == np.shape(value) and (table, heads) == np.shape(state[table_key]):
            continue  # the same window
        candidates = _factor_windows(vol, table)
        if not candidates:
            raise ValueError(f"{key}: shapes {shapes[key]} and {shapes[table_key]} are no window's")
        new_window = min(candidates, key=lambda c: sum(abs(math.log(n / w)) for n, w in zip(c, window)))
        out[table_key] = resize_bias_table(np.asarray(state[table_key]), window, new_window)
        out[key] = relative_position_index(new_window).astype(np.asarray(value).dtype)
    return out


swin3d_t = partial(SwinTransformer3d, **SWIN3D["swin3d_t"])
swin3d_s = partial(SwinTransformer3d, **SWIN3D["swin3d_s"])
swin3d_b = partial(SwinTransformer3d, **SWIN3D["swin3d_b"])
