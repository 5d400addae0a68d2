"""What a model's pretrained weights expect of their input: the test-time clip recipe and the normalisation.

Plain Python (no numpy, no JAX), so that the model records (`v3d_flax.records`) and the command
lines' parsers can use it at no import cost. `v3d_flax.video` applies a recipe to a video file;
`v3d_flax.data` applies a normalisation to training clips.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

RESIZE_ROUNDINGS = ("round", "floor")
CROP_ROUNDINGS = ("round", "floor", "ceil")


def check_rounding(rounding: str, allowed: tuple[str, ...]) -> None:
    """ValueError naming the allowed rules unless `rounding` is one of them."""
    if rounding not in allowed:
        raise ValueError(f"unknown pixel rounding {rounding!r}; expected one of {', '.join(allowed)}")


@dataclass(frozen=True)
class Normalization:
    """Per-RGB-channel `(x - mean) / std` on frames scaled to [0, 1]; `name` says whose convention it is."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# torchvision's Kinetics-400 video ResNets.
TORCHVISION_KINETICS = Normalization("torchvision", (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989))
# PyTorchVideo's model zoo: mean 0.45, std 0.225 on every channel.
PYTORCHVIDEO = Normalization("pytorchvideo", (0.45, 0.45, 0.45), (0.225, 0.225, 0.225))
# DeepMind's Inception-v1 I3D: inputs in [-1, 1].
DEEPMIND = Normalization("deepmind", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass(frozen=True)
class Recipe:
    """Test-time sampling of one model.

    frames x rate: clip length and stride (in frames at `fps` if set, else at the file's own rate).
    resize: short side in pixels, or a fixed (height, width). crop: square crop size.
    clips x crops: default views (temporal clips spread over the video; 1 centre crop, or 3 crops
    along the longer side). pathways=2: SlowFast, whose slow clip is `frames // alpha` frames
    subsampled uniformly from the fast one.
    Pixel rounding, as the weights' publisher does it: `resize_rounding` for the long side of a
    short-side resize ("round": nearest; "floor": PyTorchVideo's `floor(long / short * resize)`), and
    for the centre offset `(side - crop) / 2`, `center_rounding` with 1 crop and `three_crop_rounding`
    with 3 ("round": Python's, halves to even, as torchvision's `center_crop`; "floor"; "ceil").
    `resized_to_uint8`: the resized frames are rounded back to uint8 before scaling to [0, 1], as
    torchvision's `VideoClassification` preset resizes uint8 frames (the default scales first).
    The defaults (round, floor, floor) serve recipes built by hand; `TORCHVISION_ROUNDING` and
    `PYTORCHVIDEO_ROUNDING` are the publishers'.
    """

    frames: int
    rate: int
    resize: int | tuple[int, int]
    crop: int
    clips: int = 1
    crops: int = 1
    fps: float | None = None
    pathways: int = 1
    alpha: int = 4
    resize_rounding: str = "round"
    center_rounding: str = "floor"
    three_crop_rounding: str = "floor"
    resized_to_uint8: bool = False

    def __post_init__(self):
        if self.frames < 1 or self.rate < 1 or self.crop < 1 or self.clips < 1 or self.crops not in (1, 3):
            raise ValueError(f"invalid recipe {self}: frames, rate, crop and clips must be >= 1, crops 1 or 3")
        check_rounding(self.resize_rounding, RESIZE_ROUNDINGS)
        check_rounding(self.center_rounding, CROP_ROUNDINGS)
        check_rounding(self.three_crop_rounding, CROP_ROUNDINGS)

    def crop_rounding(self, crops: int) -> str:
        """The centre-offset rounding of this recipe's 1-crop or 3-crop views."""
        return self.center_rounding if crops == 1 else self.three_crop_rounding

    def with_overrides(self, **overrides) -> "Recipe":
        """A copy with the fields of the non-None `overrides` replaced (a command line's --frames, ...)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


# Each publisher's pixel rounding. torchvision: `VideoClassification` resizes the uint8 frames to a fixed
# size (in float32, rounded back to uint8), then `functional.center_crop` offsets by int(round(...)).
# PyTorchVideo: `short_side_scale` floors the long side; its 1-crop evaluation (trainer val transform,
# hub tutorial) is torchvision's CenterCrop, int(round(...)); its 3-crop test is `uniform_crop`,
# centred by ceil (as PySlowFast's).
TORCHVISION_ROUNDING = dict(center_rounding="round", three_crop_rounding="round", resized_to_uint8=True)
PYTORCHVIDEO_ROUNDING = dict(resize_rounding="floor", center_rounding="round", three_crop_rounding="ceil")
