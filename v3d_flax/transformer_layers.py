"""Layers the attention families (MViT, Swin3D) share: LayerNorm, GELU, stochastic depth, the MLP.

Each mirrors its torch counterpart (`torch.nn.LayerNorm`, `torch.nn.GELU`, torchvision's
`StochasticDepth(mode="row")` and `MLP`) so that `v3d_flax.port` copies weights under torch's names.
Tokens are channels-last: (batch, ..., channels).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from v3d_flax.layers import Linear, NormalInit, Sequential, host_full

# torchvision's transformers initialise their linear layers with trunc_normal_(std=0.02); a plain
# normal of that deviation keeps `build_batched`'s single-program draw (the truncation at 2 std
# changes 5% of the draws, which training from scratch does not feel).
transformer_init = NormalInit(0.02)


class LayerNorm(nnx.Module):
    """`torch.nn.LayerNorm` over the last axis: biased variance, `eps` inside the square root;
    statistics in float32 whatever the input dtype. Ported as torch's `weight` / `bias`."""

    def __init__(self, num_features: int, *, eps: float = 1e-5, rngs: nnx.Rngs | None = None):
        del rngs  # deterministic init, like torch
        self.num_features, self.eps = num_features, eps
        self.scale = nnx.Param(host_full((num_features,), 1.0))
        self.bias = nnx.Param(host_full((num_features,), 0.0))

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.num_features:
            raise ValueError(f"LayerNorm expects {self.num_features} channels on the last axis, got shape {x.shape}")
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean = jnp.mean(xf, -1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), -1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


class GELU(nnx.Module):
    """`torch.nn.GELU()`: the exact (erf) form, a stateless slot that keeps `Sequential` indices torch's."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.gelu(x, approximate=False)


class Identity(nnx.Module):
    """`torch.nn.Identity`."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x


class StochasticDepth(nnx.Dropout):
    """torchvision's `StochasticDepth(rate, "row")`: in training, drops a residual branch for whole
    samples with probability `rate` and scales the kept ones by 1 / (1 - rate); identity in eval mode.
    A `nnx.Dropout` broadcast over every axis but the batch, so it takes the "dropout" RNG stream and
    `deterministic` / `model.eval()` as dropout does."""

    def __init__(self, rate: float, *, rngs: nnx.Rngs):
        super().__init__(rate, broadcast_dims=(1,), rngs=rngs)

    def __call__(self, x: jax.Array, **kwargs) -> jax.Array:
        return super().__call__(x.reshape(x.shape[0], -1), **kwargs).reshape(x.shape)


def mlp(in_features: int, hidden_features: int, out_features: int, dropout: float = 0.0, *,
        rngs: nnx.Rngs) -> Sequential:
    """torchvision's `MLP([hidden, out], activation_layer=nn.GELU, dropout=dropout)`: Linear, GELU,
    Dropout, Linear, Dropout, so the linear layers are children 0 and 3 as in its state_dict."""
    return Sequential([
        Linear(in_features, hidden_features, kernel_init=transformer_init, rngs=rngs), GELU(),
        nnx.Dropout(dropout, rngs=rngs),
        Linear(hidden_features, out_features, kernel_init=transformer_init, rngs=rngs),
        nnx.Dropout(dropout, rngs=rngs)])
