"""torchvision's video ResNets (R3D, MC3, R(2+1)D) in Flax NNX, NDHWC; module names equal torchvision's."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from v3d_flax.blocks import Residual3DBlock
from v3d_flax.layers import BatchNorm, Conv3d, Linear, ReLU, Sequential, check_video_input

WIDTHS = (64, 128, 256, 512)


class VideoResNet(nnx.Module):
    """Stem, four stages of `Residual3DBlock`s, global average pool, fc (torchvision layout)."""

    def __init__(self, *, stem: str, conv_kinds: tuple[str, str, str, str], layers: tuple[int, ...],
                 num_classes: int = 400, rngs: nnx.Rngs):
        if stem == "r3d":
            self.stem = Sequential([
                Conv3d(3, 64, (3, 7, 7), (1, 2, 2), (1, 3, 3), rngs=rngs), BatchNorm(64), ReLU()])
        elif stem == "r2plus1d":
            self.stem = Sequential([
                Conv3d(3, 45, (1, 7, 7), (1, 2, 2), (0, 3, 3), rngs=rngs), BatchNorm(45), ReLU(),
                Conv3d(45, 64, (3, 1, 1), 1, (1, 0, 0), rngs=rngs), BatchNorm(64), ReLU()])
        else:
            raise ValueError(f"stem must be 'r3d' or 'r2plus1d', got {stem!r}")
        inplanes = 64
        for i, (kind, depth, planes) in enumerate(zip(conv_kinds, layers, WIDTHS)):
            stride = 1 if i == 0 else 2
            blocks = [Residual3DBlock(inplanes, planes, stride, conv=kind, rngs=rngs)]
            blocks += [Residual3DBlock(planes, planes, 1, conv=kind, rngs=rngs) for _ in range(depth - 1)]
            setattr(self, f"layer{i + 1}", Sequential(blocks))
            inplanes = planes
        self.fc = Linear(512, num_classes, rngs=rngs)

    def forward_features(self, x: jax.Array) -> jax.Array:
        """Pooled 512-d features before the classifier."""
        check_video_input(x, channels=3, name=type(self).__name__)
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return jnp.mean(x, axis=(1, 2, 3))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc(self.forward_features(x))


_R3D = dict(stem="r3d", conv_kinds=("3d",) * 4)
_MC3 = dict(stem="r3d", conv_kinds=("3d", "no_temporal", "no_temporal", "no_temporal"))
_R2PLUS1D = dict(stem="r2plus1d", conv_kinds=("2plus1d",) * 4)

r3d_18 = partial(VideoResNet, layers=(2, 2, 2, 2), **_R3D)
r3d_34 = partial(VideoResNet, layers=(3, 4, 6, 3), **_R3D)
mc3_18 = partial(VideoResNet, layers=(2, 2, 2, 2), **_MC3)
r2plus1d_18 = partial(VideoResNet, layers=(2, 2, 2, 2), **_R2PLUS1D)
r2plus1d_34 = partial(VideoResNet, layers=(3, 4, 6, 3), **_R2PLUS1D)
