"""S3D (torchvision's `s3d`, Xie et al. 2018) in Flax NNX, NDHWC; module paths equal torchvision's keys.

`features` follows torchvision's sequence (`v3d_flax.records.s3d.S3D_FEATURES`), each conv-BN-ReLU unit
a `Sequential(conv, bn, relu)` as torchvision's `Conv3dNormActivation`; BatchNorm eps 1e-3, momentum
0.001 (PyTorch's convention). No feature gating (torchvision's S3D has none). The head is torchvision's:
AvgPool3d (2, 7, 7) of stride 1, dropout, a biased 1x1x1 conv (`classifier.1`), logits averaged over
the positions left; it needs clips of at least 13 frames and 209x209 pixels (`s3d_min_clip`), and
smaller ones are refused with a ValueError before anything runs. `head_pool_kernel=` takes another
window (None: global average pooling, any clip size).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from v3d_flax.layers import BatchNorm, Conv3d, MaxPool3d, ReLU, Sequential, avg_pool3d, check_video_input, uniform_init
from v3d_flax.records.s3d import (S3D_BN_EPS, S3D_BN_MOMENTUM, S3D_DROPOUT, S3D_FEATURES, S3D_HEAD_POOL,
                                  S3D_NUM_FEATURES, check_s3d_clip, inception_out)


def torch_default_kernel_init(key, shape, dtype=jnp.float32):
    """PyTorch's default conv init (kaiming_uniform_ with a=sqrt(5)): U(-b, b), b = 1 / sqrt(fan_in);
    torchvision's S3D keeps it. `shape` is DHWIO."""
    bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
    return uniform_init(key, shape, -bound, bound, dtype)


def conv_bn_relu(in_planes: int, out_planes: int, kernel=1, stride=1, padding=0, *, rngs: nnx.Rngs) -> Sequential:
    """Conv3d (no bias) - BatchNorm (eps 1e-3, momentum 0.001) - ReLU, torchvision's Conv3dNormActivation."""
    return Sequential([Conv3d(in_planes, out_planes, kernel, stride, padding, kernel_init=torch_default_kernel_init,
                              rngs=rngs),
                       BatchNorm(out_planes, eps=S3D_BN_EPS, momentum=S3D_BN_MOMENTUM), ReLU()])


def temporal_separable_conv(in_planes: int, out_planes: int, kernel: int, stride: int, padding: int, *,
                            rngs: nnx.Rngs) -> Sequential:
    """1xkxk spatial conv-BN-ReLU, then kx1x1 temporal conv-BN-ReLU (the stride applies to both)."""
    return Sequential([
        conv_bn_relu(in_planes, out_planes, (1, kernel, kernel), (1, stride, stride), (0, padding, padding), rngs=rngs),
        conv_bn_relu(out_planes, out_planes, (kernel, 1, 1), (stride, 1, 1), (padding, 0, 0), rngs=rngs)])


class SepInceptionBlock3D(nnx.Module):
    """Inception with separable 3x3x3 convs: 1x1 | 1x1 -> sep 3 | 1x1 -> sep 3 | 3x3x3 max-pool -> 1x1."""

    def __init__(self, in_planes: int, widths: tuple[int, ...], *, rngs: nnx.Rngs):
        b0, b1_mid, b1_out, b2_mid, b2_out, b3 = widths
        self.branch0 = conv_bn_relu(in_planes, b0, rngs=rngs)
        self.branch1 = Sequential([conv_bn_relu(in_planes, b1_mid, rngs=rngs),
                                   temporal_separable_conv(b1_mid, b1_out, 3, 1, 1, rngs=rngs)])
        self.branch2 = Sequential([conv_bn_relu(in_planes, b2_mid, rngs=rngs),
                                   temporal_separable_conv(b2_mid, b2_out, 3, 1, 1, rngs=rngs)])
        self.branch3 = Sequential([MaxPool3d(3, 1, 1), conv_bn_relu(in_planes, b3, rngs=rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], -1)


def s3d_features(in_channels: int = 3, *, rngs: nnx.Rngs) -> Sequential:
    """torchvision's `S3D.features` from the table S3D_FEATURES."""
    layers, planes = [], in_channels
    for kind, *args in S3D_FEATURES:
        if kind == "sep":
            out, kernel, stride, pad = args
            layers.append(temporal_separable_conv(planes, out, kernel, stride, pad, rngs=rngs))
            planes = out
        elif kind == "conv":
            layers.append(conv_bn_relu(planes, args[0], rngs=rngs))
            planes = args[0]
        elif kind == "pool":
            layers.append(MaxPool3d(*args))
        else:
            layers.append(SepInceptionBlock3D(planes, args[0], rngs=rngs))
            planes = inception_out(args[0])
    return Sequential(layers)


class S3D(nnx.Module):
    """S3D on NDHWC clips: `features`, an average pool of `head_pool_kernel` windows (stride 1;
    torchvision's (2, 7, 7), None: global), dropout and a biased 1x1x1 conv, the logits averaged over
    the positions left."""

    def __init__(self, *, num_classes: int = 400, dropout: float = S3D_DROPOUT, in_channels: int = 3,
                 head_pool_kernel=S3D_HEAD_POOL, rngs: nnx.Rngs):
        self.in_channels, self.num_features = in_channels, S3D_NUM_FEATURES
        self.head_pool_kernel = None if head_pool_kernel is None else tuple(int(k) for k in head_pool_kernel)
        self.features = s3d_features(in_channels, rngs=rngs)
        self.classifier = Sequential([nnx.Dropout(dropout, rngs=rngs),
                                      Conv3d(S3D_NUM_FEATURES, num_classes, 1, use_bias=True,
                                             kernel_init=torch_default_kernel_init, rngs=rngs)])

    def _check(self, x: jax.Array, kernel) -> None:
        check_video_input(x, channels=self.in_channels, name="S3D")
        check_s3d_clip(x.shape, kernel)

    def forward_map(self, x: jax.Array) -> jax.Array:
        """The last Inception block's map (B, t, h, w, 1024), unpooled."""
        self._check(x, None)
        return self.features(x)

    def _pooled(self, x: jax.Array) -> jax.Array:
        self._check(x, self.head_pool_kernel)
        x = self.features(x)
        if self.head_pool_kernel is None:
            return jnp.mean(x, axis=(1, 2, 3), keepdims=True)
        return avg_pool3d(x, self.head_pool_kernel, 1)

    def forward_features(self, x: jax.Array) -> jax.Array:
        """(B, 1024): the head's pooled windows averaged over their positions (what the classifier sees,
        the classifier being linear)."""
        return jnp.mean(self._pooled(x), axis=(1, 2, 3))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.mean(self.classifier(self._pooled(x)), axis=(1, 2, 3))


def s3d(*, num_classes: int = 400, dropout: float = S3D_DROPOUT, in_channels: int = 3,
        head_pool_kernel=S3D_HEAD_POOL, rngs: nnx.Rngs) -> S3D:
    """torchvision's S3D; `head_pool_kernel` (default torchvision's (2, 7, 7)) sets the head's window."""
    return S3D(num_classes=num_classes, dropout=dropout, in_channels=in_channels,
               head_pool_kernel=head_pool_kernel, rngs=rngs)
