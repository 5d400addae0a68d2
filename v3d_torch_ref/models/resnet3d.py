"""torchvision's video ResNets (R3D, MC3, R(2+1)D), PyTorch reference with torchvision's state_dict keys."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from v3d_flax.records.resnet3d import VIDEO_RESNET_WIDTHS, VIDEO_RESNETS
from v3d_torch_ref.blocks import Residual3DBlock, init_weights


class VideoResNet(nn.Module):
    """Stem, four stages of `Residual3DBlock`s, global average pool, fc (torchvision layout)."""

    def __init__(self, *, stem: str, conv_kinds: tuple[str, str, str, str], layers: tuple[int, ...],
                 num_classes: int = 400, in_channels: int = 3):
        super().__init__()
        self.in_channels = in_channels
        if stem == "r3d":
            self.stem = nn.Sequential(
                nn.Conv3d(in_channels, 64, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False), nn.BatchNorm3d(64), nn.ReLU(inplace=True))
        elif stem == "r2plus1d":
            self.stem = nn.Sequential(
                nn.Conv3d(in_channels, 45, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False), nn.BatchNorm3d(45), nn.ReLU(inplace=True),
                nn.Conv3d(45, 64, (3, 1, 1), 1, (1, 0, 0), bias=False), nn.BatchNorm3d(64), nn.ReLU(inplace=True))
        else:
            raise ValueError(f"stem must be 'r3d' or 'r2plus1d', got {stem!r}")
        inplanes = 64
        for i, (kind, depth, planes) in enumerate(zip(conv_kinds, layers, VIDEO_RESNET_WIDTHS)):
            stride = 1 if i == 0 else 2
            blocks = [Residual3DBlock(inplanes, planes, stride, conv=kind)]
            blocks += [Residual3DBlock(planes, planes, 1, conv=kind) for _ in range(depth - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = planes
        self.num_features = inplanes
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        init_weights(self)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """layer4's feature map (B, 512, t, h, w)."""
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled 512-d features before the classifier."""
        return self.avgpool(self.forward_map(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


# The names this family registers (`v3d_torch_ref.registry` collects every family's MODELS).
MODELS = {name: partial(VideoResNet, **arch) for name, arch in VIDEO_RESNETS.items()}
