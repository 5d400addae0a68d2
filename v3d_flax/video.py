"""Video decoding (PyAV) and the per-model test-time clip recipe: which frames, resize, crops, normalisation.

A recipe turns one video file into a batch of views (temporal clips x spatial crops), each a float32
NDHWC clip normalised the way the model's pretrained weights expect. Frames are decoded only where a
clip needs them, so long videos do not have to fit in memory.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import numpy as np

from v3d_flax.data.normalization import normalization_for

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".gif")


class VideoError(RuntimeError):
    """A file that cannot be used as a video (not a video, corrupt, too short); the message names the file."""


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
    The defaults (round, floor, floor) serve recipes built by hand; `RECIPES` sets each publisher's.
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

    def __post_init__(self):
        if self.frames < 1 or self.rate < 1 or self.crop < 1 or self.clips < 1 or self.crops not in (1, 3):
            raise ValueError(f"invalid recipe {self}: frames, rate, crop and clips must be >= 1, crops 1 or 3")
        _check_rounding(self.resize_rounding, RESIZE_ROUNDINGS)
        _check_rounding(self.center_rounding, CROP_ROUNDINGS)
        _check_rounding(self.three_crop_rounding, CROP_ROUNDINGS)

    def crop_rounding(self, crops: int) -> str:
        """The centre-offset rounding of this recipe's 1-crop or 3-crop views."""
        return self.center_rounding if crops == 1 else self.three_crop_rounding


RESIZE_ROUNDINGS = ("round", "floor")
CROP_ROUNDINGS = ("round", "floor", "ceil")


def _check_rounding(rounding: str, allowed: tuple[str, ...]) -> None:
    if rounding not in allowed:
        raise ValueError(f"unknown pixel rounding {rounding!r}; expected one of {', '.join(allowed)}")


# Each publisher's pixel rounding. torchvision: `VideoClassification` resizes to a fixed size, then
# `functional.center_crop` offsets by int(round(...)). C3D's Caffe VideoDataLayer crops at
# (side - crop) / 2 in integer arithmetic. PyTorchVideo: `short_side_scale` floors the long side; its
# 1-crop evaluation (trainer val transform, hub tutorial) is torchvision's CenterCrop / CenterCropVideo,
# int(round(...)); its 3-crop test is `uniform_crop`, centred by ceil (as PySlowFast's, whose 1-crop
# test is uniform_crop's centre, ceil, too). DeepMind publishes "short side 256, centre crop 224" for
# I3D without the rounding: the nearest long side and torchvision's centre rule are kept.
_TORCHVISION_ROUNDING = dict(center_rounding="round", three_crop_rounding="round")
_PTV_ROUNDING = dict(resize_rounding="floor", center_rounding="round", three_crop_rounding="ceil")
_TORCHVISION = Recipe(frames=16, rate=1, resize=(128, 171), crop=112, clips=5, crops=1, fps=15.0,
                      **_TORCHVISION_ROUNDING)
_PTV_8X8 = Recipe(frames=8, rate=8, resize=256, crop=256, clips=10, crops=3, **_PTV_ROUNDING)

# Published test recipes (torchvision's video ResNets, C3D on Sports-1M, DeepMind's I3D, PyTorchVideo's zoo).
RECIPES: dict[str, Recipe] = {
    "c3d": Recipe(frames=16, rate=1, resize=(128, 171), crop=112, clips=10, crops=1,
                  center_rounding="floor", three_crop_rounding="floor"),
    "r3d_18": _TORCHVISION, "r3d_34": _TORCHVISION, "mc3_18": _TORCHVISION,
    "r2plus1d_18": _TORCHVISION, "r2plus1d_34": _TORCHVISION,
    "i3d": Recipe(frames=64, rate=1, resize=256, crop=224, clips=1, crops=1, fps=25.0, resize_rounding="round",
                  **_TORCHVISION_ROUNDING),
    "i3d_r50": _PTV_8X8, "slow_r50": _PTV_8X8, "c2d_r50": _PTV_8X8,
    "csn_r101": Recipe(frames=32, rate=2, resize=256, crop=256, clips=10, crops=3, **_PTV_ROUNDING),
    "r2plus1d_r50": Recipe(frames=16, rate=4, resize=256, crop=256, clips=10, crops=3, **_PTV_ROUNDING),
    "slowfast_r50": Recipe(frames=32, rate=2, resize=256, crop=256, clips=10, crops=3, pathways=2, alpha=4,
                           **_PTV_ROUNDING),
    "slowfast_r101": Recipe(frames=32, rate=2, resize=256, crop=256, clips=10, crops=3, pathways=2, alpha=4,
                            **_PTV_ROUNDING),
    "x3d_xs": Recipe(frames=4, rate=12, resize=182, crop=182, clips=10, crops=3, **_PTV_ROUNDING),
    "x3d_s": Recipe(frames=13, rate=6, resize=182, crop=182, clips=10, crops=3, **_PTV_ROUNDING),
    "x3d_m": Recipe(frames=16, rate=5, resize=256, crop=256, clips=10, crops=3, **_PTV_ROUNDING),
    "x3d_l": Recipe(frames=16, rate=5, resize=356, crop=356, clips=10, crops=3, **_PTV_ROUNDING),
}


def recipe_for(model_name: str, **overrides) -> Recipe:
    """The test recipe of `model_name`, with fields replaced by the non-None `overrides`."""
    if model_name not in RECIPES:
        raise ValueError(f"no clip recipe for model {model_name!r}; known: {', '.join(sorted(RECIPES))}")
    return replace(RECIPES[model_name], **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class VideoInfo:
    """What sampling needs to know about a file: frame count, frame rate, frame size."""

    num_frames: int
    fps: float
    height: int
    width: int


def _open(path: str):
    import av

    if not os.path.isfile(path):
        raise VideoError(f"{path}: no such file")
    try:
        container = av.open(path)
    except av.FFmpegError as e:
        raise VideoError(f"{path}: not a readable video file ({e})") from e
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: the file has no video stream")
    return container


def probe(path: str | os.PathLike) -> VideoInfo:
    """Count the video frames (by demuxing, without decoding) and read rate and size."""
    import av

    path = os.fspath(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        count = 0
        for packet in container.demux(stream):
            if packet.size > 0:
                count += 1
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 30.0
        height, width = stream.codec_context.height, stream.codec_context.width
    except av.FFmpegError as e:
        raise VideoError(f"{path}: corrupt video ({e})") from e
    finally:
        container.close()
    if count == 0 or not height or not width:
        raise VideoError(f"{path}: the video stream holds no frames")
    return VideoInfo(count, fps, height, width)


def decode_frames(path: str | os.PathLike, indices) -> np.ndarray:
    """The frames at `indices` (0-based decode order, repeats allowed) as uint8 RGB, (len, H, W, 3)."""
    import av

    path = os.fspath(path)
    indices = np.asarray(indices, dtype=np.int64)
    wanted = set(indices.tolist())
    last = max(wanted)
    found: dict[int, np.ndarray] = {}
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                found[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    except av.FFmpegError as e:
        raise VideoError(f"{path}: corrupt video, decoding failed ({e})") from e
    finally:
        container.close()
    missing = wanted - set(found)
    if missing:
        raise VideoError(f"{path}: corrupt or truncated video: frame {min(missing)} could not be decoded "
                         f"(decoded {len(found)} of the {len(wanted)} frames needed)")
    return np.stack([found[i] for i in indices.tolist()])


def clip_indices(num_frames: int, fps: float, recipe: Recipe, clips: int) -> np.ndarray:
    """(clips, recipe.frames) frame indices: `clips` clips spread evenly (centred) over the video.

    The stride in source frames is `rate * fps / recipe.fps` when the recipe resamples, else `rate`.
    Raises ValueError when the video is shorter than one clip.
    """
    step = recipe.rate * (fps / recipe.fps if recipe.fps else 1.0)
    offsets = np.floor(np.arange(recipe.frames) * step).astype(np.int64)
    span = int(offsets[-1]) + 1
    if num_frames < span:
        raise ValueError(f"the video has {num_frames} frames, a {recipe.frames}x{recipe.rate} clip needs {span}"
                         + (f" (at {fps:g} fps resampled to {recipe.fps:g})" if recipe.fps else ""))
    slack = num_frames - span
    starts = np.floor(slack * (2 * np.arange(clips) + 1) / (2 * clips)).astype(np.int64)
    return starts[:, None] + offsets[None, :]


def resized_size(height: int, width: int, resize: int | tuple[int, int], rounding: str = "round") -> tuple[int, int]:
    """(height, width) after resizing: the short side to `resize` keeping the aspect ratio, or a fixed size.

    The long side is `long * resize / short` rounded to nearest ("round"), or PyTorchVideo's
    `floor(long / short * resize)` ("floor").
    """
    _check_rounding(rounding, RESIZE_ROUNDINGS)
    if isinstance(resize, (tuple, list)):
        return int(resize[0]), int(resize[1])
    short, long = min(height, width), max(height, width)
    if rounding == "floor":
        # PyTorchVideo's float order, which can drop a pixel even where the short side is already `resize`.
        long = max(resize, int(math.floor(long / short * resize)))
    else:
        long = max(resize, int(round(long * resize / short)))
    return (resize, long) if height <= width else (long, resize)


def _centre(side: int, crop: int, rounding: str) -> int:
    if rounding == "floor":
        return (side - crop) // 2
    if rounding == "ceil":
        return -(-(side - crop) // 2)
    return int(round((side - crop) / 2.0))


def crop_offsets(height: int, width: int, crop: int, crops: int, rounding: str = "floor") -> list[tuple[int, int]]:
    """Top-left corners of the centre crop, or of 3 crops (start, centre, end) along the longer side.

    The centre offset `(side - crop) / 2` is rounded by `rounding` ("floor", "ceil", or "round": Python's,
    halves to even); a recipe's rule is `Recipe.crop_rounding(crops)`.
    """
    _check_rounding(rounding, CROP_ROUNDINGS)
    if crop > height or crop > width:
        raise ValueError(f"crop {crop} is larger than the resized frame {height}x{width}")
    cy, cx = _centre(height, crop, rounding), _centre(width, crop, rounding)
    if crops == 1:
        return [(cy, cx)]
    if height > width:
        return [(0, cx), (cy, cx), (height - crop, cx)]
    return [(cy, 0), (cy, cx), (cy, width - crop)]


def preprocess(frames: np.ndarray, recipe: Recipe, mean, std) -> np.ndarray:
    """uint8 (..., T, H, W, 3) -> resized float32 in model units: bilinear (half-pixel, no antialias, as
    torch's interpolate), then (x / 255 - mean) / std. Crops are taken by the caller."""
    import jax  # here, not at the top: the command lines' parsers import this module
    import jax.numpy as jnp

    frames = np.asarray(frames)
    height, width = resized_size(frames.shape[-3], frames.shape[-2], recipe.resize, recipe.resize_rounding)
    x = jnp.asarray(frames, jnp.float32) / 255.0
    if (height, width) != x.shape[-3:-1]:
        x = jax.image.resize(x, (*x.shape[:-3], height, width, 3), method="linear", antialias=False)
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return np.asarray(x, np.float32)


def load_views(path: str | os.PathLike, model_name: str, recipe: Recipe | None = None, *,
               clips: int | None = None, crops: int | None = None):
    """All test views of one video for `model_name`: float32 (clips * crops, T, crop, crop, 3), clip-major.

    For a two-pathway recipe (SlowFast) returns [slow, fast] with slow = fast subsampled by alpha.
    Raises VideoError naming the file for anything wrong with the file.
    """
    path = os.fspath(path)
    recipe = recipe or recipe_for(model_name)
    clips, crops = clips or recipe.clips, crops or recipe.crops
    mean, std = normalization_for(model_name)
    info = probe(path)
    try:
        idx = clip_indices(info.num_frames, info.fps, recipe, clips)
    except ValueError as e:
        raise VideoError(f"{path}: too short: {e}") from e
    unique, inverse = np.unique(idx, return_inverse=True)
    frames = preprocess(decode_frames(path, unique), recipe, mean, std)
    height, width = frames.shape[1:3]
    try:
        corners = crop_offsets(height, width, recipe.crop, crops, recipe.crop_rounding(crops))
    except ValueError as e:
        raise VideoError(f"{path}: {e}") from e
    c = recipe.crop
    views = np.stack([frames[inverse.reshape(idx.shape)[k]][:, y:y + c, x:x + c]
                      for k in range(clips) for (y, x) in corners])
    if recipe.pathways == 2:
        from v3d_flax.models.slowfast import pack_pathways  # PyTorchVideo's exact slow-frame indices

        slow, fast = pack_pathways(views, recipe.alpha)
        return [np.asarray(slow), np.asarray(fast)]
    return views


def find_videos(inputs) -> list[str]:
    """Expand directories (recursively, files with a video extension, sorted); files are kept as given."""
    out: list[str] = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = [os.path.join(root, f) for root, _, files in os.walk(item) for f in files
                     if f.lower().endswith(VIDEO_EXTENSIONS)]
            out.extend(sorted(found))
        else:
            out.append(item)
    return out
