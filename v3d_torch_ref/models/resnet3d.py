"""torchvision's video ResNets (R3D, MC3, R(2+1)D), PyTorch reference with torchvision's state_dict keys."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from v3d_torch_ref.blocks import Residual3DBlock

WIDTHS = (64, 128, 256, 512)


class VideoResNet(nn.Module):
    """Stem, four stages of `Residual3DBlock`s, global average pool, fc (torchvision layout)."""

    def __init__(self, *, stem: str, conv_kinds: tuple[str, str, str, str], layers: tuple[int, ...],
                 num_classes: int = 400):
        super().__init__()
        if stem == "r3d":
            self.stem = nn.Sequential(
                nn.Conv3d(3, 64, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False), nn.BatchNorm3d(64), nn.ReLU(inplace=True))
        elif stem == "r2plus1d":
            self.stem = nn.Sequential(
                nn.Conv3d(3, 45, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False), nn.BatchNorm3d(45), nn.ReLU(inplace=True),
                nn.Conv3d(45, 64, (3, 1, 1), 1, (1, 0, 0), bias=False), nn.BatchNorm3d(64), nn.ReLU(inplace=True))
        else:
            raise ValueError(f"stem must be 'r3d' or 'r2plus1d', got {stem!r}")
        inplanes = 64
        for i, (kind, depth, planes) in enumerate(zip(conv_kinds, layers, WIDTHS)):
            stride = 1 if i == 0 else 2
            blocks = [Residual3DBlock(inplanes, planes, stride, conv=kind)]
            blocks += [Residual3DBlock(planes, planes, 1, conv=kind) for _ in range(depth - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled 512-d features before the classifier."""
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


_R3D = dict(stem="r3d", conv_kinds=("3d",) * 4)
_MC3 = dict(stem="r3d", conv_kinds=("3d", "no_temporal", "no_temporal", "no_temporal"))
_R2PLUS1D = dict(stem="r2plus1d", conv_kinds=("2plus1d",) * 4)

r3d_18 = partial(VideoResNet, layers=(2, 2, 2, 2), **_R3D)
r3d_34 = partial(VideoResNet, layers=(3, 4, 6, 3), **_R3D)
mc3_18 = partial(VideoResNet, layers=(2, 2, 2, 2), **_MC3)
r2plus1d_18 = partial(VideoResNet, layers=(2, 2, 2, 2), **_R2PLUS1D)
r2plus1d_34 = partial(VideoResNet, layers=(3, 4, 6, 3), **_R2PLUS1D)

# The names this family registers (`v3d_torch_ref.registry` collects every family's MODELS).
MODELS = {"r3d_18": r3d_18, "r3d_34": r3d_34, "mc3_18": mc3_18, "r2plus1d_18": r2plus1d_18, "r2plus1d_34": r2plus1d_34}
