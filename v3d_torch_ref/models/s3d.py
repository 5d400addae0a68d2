"""S3D (torchvision's `s3d`), PyTorch reference (NCDHW) with torchvision's state_dict keys.

`features` is torchvision's sequence (`v3d_flax.records.s3d.S3D_FEATURES`): conv-BN-ReLU units are
`Sequential(conv, bn, relu)` as torchvision's `Conv3dNormActivation` (keys `.0.weight`, `.1.running_mean`),
separable convs a pair of them (`features.0.0` the 1x7x7 spatial conv, `features.0.1` the 7x1x1
temporal one). The head is an AvgPool3d (2, 7, 7) of stride 1, dropout, a biased 1x1x1 conv
(`classifier.1`) and the mean of the logits over the positions left. Default PyTorch initialisation,
as torchvision's S3D (it sets none of its own).
"""

from __future__ import annotations

import torch
from torch import nn

from v3d_flax.records.s3d import (S3D_BN_EPS, S3D_BN_MOMENTUM, S3D_DROPOUT, S3D_FEATURES, S3D_HEAD_POOL,
                                  S3D_NUM_FEATURES, inception_out)


def conv_bn_relu(in_planes: int, out_planes: int, kernel=1, stride=1, padding=0) -> nn.Sequential:
    """Conv3d (no bias) - BatchNorm3d (eps 1e-3, momentum 0.001) - ReLU, torchvision's Conv3dNormActivation."""
    return nn.Sequential(nn.Conv3d(in_planes, out_planes, kernel, stride, padding, bias=False),
                         nn.BatchNorm3d(out_planes, eps=S3D_BN_EPS, momentum=S3D_BN_MOMENTUM), nn.ReLU(inplace=True))


class TemporalSeparableConv(nn.Sequential):
    """1xkxk spatial conv-BN-ReLU, then kx1x1 temporal conv-BN-ReLU (the stride applies to both)."""

    def __init__(self, in_planes: int, out_planes: int, kernel: int, stride: int, padding: int):
        super().__init__(conv_bn_relu(in_planes, out_planes, (1, kernel, kernel), (1, stride, stride),
                                      (0, padding, padding)),
                         conv_bn_relu(out_planes, out_planes, (kernel, 1, 1), (stride, 1, 1), (padding, 0, 0)))


class SepInceptionBlock3D(nn.Module):
    """Inception with separable 3x3x3 convs: 1x1 | 1x1 -> sep 3 | 1x1 -> sep 3 | 3x3x3 max-pool -> 1x1."""

    def __init__(self, in_planes: int, widths: tuple[int, ...]):
        super().__init__()
        b0, b1_mid, b1_out, b2_mid, b2_out, b3 = widths
        self.branch0 = conv_bn_relu(in_planes, b0)
        self.branch1 = nn.Sequential(conv_bn_relu(in_planes, b1_mid), TemporalSeparableConv(b1_mid, b1_out, 3, 1, 1))
        self.branch2 = nn.Sequential(conv_bn_relu(in_planes, b2_mid), TemporalSeparableConv(b2_mid, b2_out, 3, 1, 1))
        self.branch3 = nn.Sequential(nn.MaxPool3d(3, 1, 1), conv_bn_relu(in_planes, b3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


def s3d_features(in_channels: int = 3) -> nn.Sequential:
    """torchvision's `S3D.features` from the table S3D_FEATURES."""
    layers, planes = [], in_channels
    for kind, *args in S3D_FEATURES:
        if kind == "sep":
            out, kernel, stride, pad = args
            layers.append(TemporalSeparableConv(planes, out, kernel, stride, pad))
            planes = out
        elif kind == "conv":
            layers.append(conv_bn_relu(planes, args[0]))
            planes = args[0]
        elif kind == "pool":
            layers.append(nn.MaxPool3d(*args))
        else:
            layers.append(SepInceptionBlock3D(planes, args[0]))
            planes = inception_out(args[0])
    return nn.Sequential(*layers)


class S3D(nn.Module):
    """S3D on NCDHW clips: `features`, AvgPool3d `head_pool_kernel` (stride 1; torchvision's (2, 7, 7),
    None: global), dropout and a 1x1x1 conv, logits averaged over the positions left."""

    def __init__(self, *, num_classes: int = 400, dropout: float = S3D_DROPOUT, in_channels: int = 3,
                 head_pool_kernel=S3D_HEAD_POOL):
        super().__init__()
        self.in_channels, self.num_features = in_channels, S3D_NUM_FEATURES
        self.head_pool_kernel = None if head_pool_kernel is None else tuple(head_pool_kernel)
        self.features = s3d_features(in_channels)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Conv3d(S3D_NUM_FEATURES, num_classes, 1, bias=True))

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last Inception block's map (B, 1024, t, h, w)."""
        return self.features(x)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.head_pool_kernel is None:
            return x.mean((2, 3, 4), keepdim=True)
        return nn.functional.avg_pool3d(x, self.head_pool_kernel, stride=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1024): the head's pooled windows averaged over their positions (what the classifier sees,
        the classifier being linear)."""
        return self._pool(self.forward_map(x)).mean((2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self._pool(self.forward_map(x))).mean((2, 3, 4))


# The names this family registers (`v3d_torch_ref.registry` collects every family's MODELS).
MODELS = {"s3d": S3D}
