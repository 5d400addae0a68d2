"""C3D (Tran et al. 2015), Sports-1M layout, PyTorch reference with the c3d-pytorch key names."""

from __future__ import annotations

import torch
from torch import nn

from v3d_flax.records.c3d import C3D_CONVS, C3D_POOLS, c3d_convs, c3d_pooled_shape


class C3D(nn.Module):
    """Eight 3x3x3 convs with bias and ReLU, five max-pools, fc6/fc7 (4096, dropout 0.5), fc8."""

    def __init__(self, num_classes: int = 487, num_frames: int = 16, crop_size: int = 112, dropout: float = 0.5,
                 in_channels: int = 3):
        super().__init__()
        self.num_frames, self.crop_size, self.in_channels = num_frames, crop_size, in_channels
        for name, cin, cout in c3d_convs(in_channels):
            setattr(self, name, nn.Conv3d(cin, cout, 3, padding=1))
            if name in C3D_POOLS:
                pool, kernel, pad = C3D_POOLS[name]
                setattr(self, pool, nn.MaxPool3d(kernel, kernel, pad))
        t, h, w = c3d_pooled_shape(num_frames, crop_size)
        self.num_features = 4096
        self.fc6 = nn.Linear(512 * t * h * w, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.dropout = nn.Dropout(dropout)
        self.relu = nn.ReLU()

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """pool5's map (B, 512, t, h, w) that fc6 flattens."""
        for name, _ in C3D_CONVS:
            x = self.relu(getattr(self, name)(x))
            if name in C3D_POOLS:
                x = getattr(self, C3D_POOLS[name][0])(x)
        return x

    def forward_features(self, x: torch.Tensor, layer: str = "fc7") -> torch.Tensor:
        """fc6 or fc7 activations (after ReLU, before dropout)."""
        x = self.relu(self.fc6(self.forward_map(x).flatten(1)))  # flattens (C, T, H, W)
        if layer == "fc6":
            return x
        return self.relu(self.fc7(self.dropout(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(self.dropout(self.forward_features(x)))


def c3d(*, num_classes: int = 487, num_frames: int = 16, crop_size: int = 112, dropout: float = 0.5,
        in_channels: int = 3) -> C3D:
    """C3D for num_frames x crop_size x crop_size clips; fc6's fan-in follows the clip size."""
    return C3D(num_classes, num_frames, crop_size, dropout, in_channels)

# The names this family registers (`v3d_torch_ref.registry` collects every family's MODELS).
MODELS = {"c3d": c3d}
