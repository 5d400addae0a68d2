"""torchvision's video ResNets (R3D, MC3, R(2+1)D) in Flax NNX, NDHWC; module names equal torchvision's."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from v3d_flax.records.resnet3d import VIDEO_RESNET_WIDTHS, VIDEO_RESNETS
from v3d_flax.blocks import Residual3DBlock
from v3d_flax.layers import BatchNorm, Conv3d, Linear, ReLU, Sequential, check_video_input


class VideoResNet(nnx.Module):
    """Stem, four stages of `Residual3DBlock`s, global average pool, fc (torchvision layout)."""

    def __init__(self, *, stem: str, conv_kinds: tuple[str, str, str, str], layers: tuple[int, ...],
                 num_classes: int = 400, in_channels: int = 3, rngs: nnx.Rngs):
        self.in_channels = in_channels
        if stem == "r3d":
            self.stem = Sequential([
                Conv3d(in_channels, 64, (3, 7, 7), (1, 2, 2), (1, 3, 3), rngs=rngs), BatchNorm(64), ReLU()])
        elif stem == "r2plus1d":
            self.stem = Sequential([
                Conv3d(in_channels, 45, (1, 7, 7), (1, 2, 2), (0, 3, 3), rngs=rngs), BatchNorm(45), ReLU(),
                Conv3d(45, 64, (3, 1, 1), 1, (1, 0, 0), rngs=rngs), BatchNorm(64), ReLU()])
        else:
            raise ValueError(f"stem must be 'r3d' or 'r2plus1d', got {stem!r}")
        inplanes = 64
        for i, (kind, depth, planes) in enumerate(zip(conv_kinds, layers, VIDEO_RESNET_WIDTHS)):
            stride = 1 if i == 0 else 2
            blocks = [Residual3DBlock(inplanes, planes, stride, conv=kind, rngs=rngs)]
            blocks += [Residual3DBlock(planes, planes, 1, conv=kind, rngs=rngs) for _ in range(depth - 1)]
            setattr(self, f"layer{i + 1}", Sequential(blocks))
            inplanes = planes
        self.num_features = inplanes
        self.fc = Linear(inplanes, num_classes, rngs=rngs)

    def forward_map(self, x: jax.Array) -> jax.Array:
        """layer4's feature map (B, t, h, w, 512)."""
        check_video_input(x, channels=self.in_channels, name=type(self).__name__)
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_features(self, x: jax.Array) -> jax.Array:
        """Pooled 512-d features before the classifier."""
        return jnp.mean(self.forward_map(x), axis=(1, 2, 3))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc(self.forward_features(x))


r3d_18 = partial(VideoResNet, **VIDEO_RESNETS["r3d_18"])
r3d_34 = partial(VideoResNet, **VIDEO_RESNETS["r3d_34"])
mc3_18 = partial(VideoResNet, **VIDEO_RESNETS["mc3_18"])
r2plus1d_18 = partial(VideoResNet, **VIDEO_RESNETS["r2plus1d_18"])
r2plus1d_34 = partial(VideoResNet, **VIDEO_RESNETS["r2plus1d_34"])
