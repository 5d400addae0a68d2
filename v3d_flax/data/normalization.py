"""Input normalisation per model family: the mean/std each family's pretrained weights expect.

Frames are scaled to [0, 1] first, then `(x - mean) / std` per RGB channel.

- "torchvision": torchvision's Kinetics-400 video ResNets (r3d, mc3, r2plus1d_18/34). C3D uses them
  too: the Sports-1M C3D weights were trained on Caffe inputs (0-255 minus a mean clip, no std),
  which no public normalisation of [0, 1] RGB reproduces exactly, so models trained here follow the
  torchvision video convention; importing the Sports-1M weights for inference needs that Caffe
  preprocessing instead.
- "pytorchvideo": PyTorchVideo's model zoo (i3d_r50, slow_r50, c2d_r50, slowfast_*, x3d_*, csn_r101,
  r2plus1d_r50): mean 0.45, std 0.225 on every channel.
- "deepmind": DeepMind's Inception-v1 I3D ("i3d") takes inputs in [-1, 1], i.e. mean 0.5, std 0.5.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "torchvision": ((0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)),
    "pytorchvideo": ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),
    "deepmind": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

# Model-name patterns -> family, first match wins (exact PyTorchVideo names before the torchvision ones).
MODEL_FAMILIES: list[tuple[str, str]] = [
    ("i3d", "deepmind"),
    ("r2plus1d_r50", "pytorchvideo"),
    ("i3d_r50", "pytorchvideo"),
    ("slow_r50", "pytorchvideo"),
    ("c2d_r50", "pytorchvideo"),
    ("csn_r101", "pytorchvideo"),
    ("slowfast_*", "pytorchvideo"),
    ("x3d_*", "pytorchvideo"),
    ("c3d", "torchvision"),
    ("r3d_*", "torchvision"),
    ("mc3_*", "torchvision"),
    ("r2plus1d_*", "torchvision"),
]


def family_for(model_name: str) -> str:
    """The normalisation family of `model_name` (a registry name); ValueError for an unknown name."""
    for pattern, family in MODEL_FAMILIES:
        if fnmatchcase(model_name, pattern):
            return family
    known = ", ".join(p for p, _ in MODEL_FAMILIES)
    raise ValueError(f"no input normalisation is known for model {model_name!r}; known model names/patterns: "
                     f"{known}. Add it to v3d_flax.data.normalization.MODEL_FAMILIES")


def normalization_for(model_name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) per RGB channel, for frames in [0, 1], that `model_name`'s family expects."""
    return NORMALIZATION[family_for(model_name)]
