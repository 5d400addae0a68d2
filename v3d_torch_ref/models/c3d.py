"""C3D (Tran et al. 2015), Sports-1M layout, PyTorch reference with the c3d-pytorch key names."""

from __future__ import annotations

import torch
from torch import nn

# (name, in, out) of the eight 3x3x3 convs, and the pool after each stage.
CONVS = (("conv1", 3, 64), ("conv2", 64, 128), ("conv3a", 128, 256), ("conv3b", 256, 256),
         ("conv4a", 256, 512), ("conv4b", 512, 512), ("conv5a", 512, 512), ("conv5b", 512, 512))
POOLS = {"conv1": ("pool1", (1, 2, 2), (0, 0, 0)), "conv2": ("pool2", (2, 2, 2), (0, 0, 0)),
         "conv3b": ("pool3", (2, 2, 2), (0, 0, 0)), "conv4b": ("pool4", (2, 2, 2), (0, 0, 0)),
         "conv5b": ("pool5", (2, 2, 2), (0, 1, 1))}


def pooled_shape(num_frames: int, crop_size: int) -> tuple[int, int, int]:
    """(T, H, W) after pool5 for a num_frames x crop_size x crop_size clip (convs keep the size)."""
    t, h, w = num_frames, crop_size, crop_size
    for _, kernel, pad in POOLS.values():
        t, h, w = ((n + 2 * p - k) // k + 1 for n, k, p in zip((t, h, w), kernel, pad))
    if min(t, h, w) < 1:
        raise ValueError(f"C3D needs clips of at least 16 frames and 16x16 pixels, got {num_frames}x{crop_size}x{crop_size}")
    return t, h, w


class C3D(nn.Module):
    """Eight 3x3x3 convs with bias and ReLU, five max-pools, fc6/fc7 (4096, dropout 0.5), fc8."""

    def __init__(self, num_classes: int = 487, num_frames: int = 16, crop_size: int = 112, dropout: float = 0.5):
        super().__init__()
        self.num_frames, self.crop_size = num_frames, crop_size
        for name, cin, cout in CONVS:
            setattr(self, name, nn.Conv3d(cin, cout, 3, padding=1))
            if name in POOLS:
                pool, kernel, pad = POOLS[name]
                setattr(self, pool, nn.MaxPool3d(kernel, kernel, pad))
        t, h, w = pooled_shape(num_frames, crop_size)
        self.fc6 = nn.Linear(512 * t * h * w, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.dropout = nn.Dropout(dropout)
        self.relu = nn.ReLU()

    def forward_features(self, x: torch.Tensor, layer: str = "fc7") -> torch.Tensor:
        """fc6 or fc7 activations (after ReLU, before dropout)."""
        for name, _, _ in CONVS:
            x = self.relu(getattr(self, name)(x))
            if name in POOLS:
                x = getattr(self, POOLS[name][0])(x)
        x = self.relu(self.fc6(x.flatten(1)))  # flattens (C, T, H, W)
        if layer == "fc6":
            return x
        return self.relu(self.fc7(self.dropout(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(self.dropout(self.forward_features(x)))


def c3d(*, num_classes: int = 487, num_frames: int = 16, crop_size: int = 112, dropout: float = 0.5) -> C3D:
    """C3D for num_frames x crop_size x crop_size clips; fc6's fan-in follows the clip size."""
    return C3D(num_classes, num_frames, crop_size, dropout)

# The names this family registers (`v3d_torch_ref.registry` collects every family's MODELS).
MODELS = {"c3d": c3d}
