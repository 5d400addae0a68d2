"""Video decoding (PyAV) and the test-time views of a clip recipe: which frames, resize, crops, normalisation.

A `v3d_flax.preprocessing.Recipe` (a model's is `v3d_flax.registry.model_spec(name).recipe`) turns one
video file into a batch of views (temporal clips x spatial crops), each a float32 NDHWC clip
normalised the way the model's pretrained weights expect (`model_spec(name).normalization`). Frames are decoded only where a
clip needs them, so long videos do not have to fit in memory.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from v3d_flax.preprocessing import CROP_ROUNDINGS, RESIZE_ROUNDINGS, Normalization, Recipe, check_rounding

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".gif")


class VideoError(RuntimeError):
    """A file that cannot be used as a video (not a video, corrupt, too short); the message names the file."""


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


def iter_frames(path: str | os.PathLike):
    """The decoded PyAV frames of the file's video stream, in decode order; the file is closed when
    the iteration ends or stops early. VideoError (naming the file) when it cannot be decoded."""
    import av

    path = os.fspath(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield from container.decode(stream)
    except av.FFmpegError as e:
        raise VideoError(f"{path}: corrupt video, decoding failed ({e})") from e
    finally:
        container.close()


def decode_frames(path: str | os.PathLike, indices) -> np.ndarray:
    """The frames at `indices` (0-based decode order, repeats allowed) as uint8 RGB, (len, H, W, 3)."""
    path = os.fspath(path)
    indices = np.asarray(indices, dtype=np.int64)
    wanted = set(indices.tolist())
    last = max(wanted)
    found: dict[int, np.ndarray] = {}
    frames = iter_frames(path)
    for i, frame in enumerate(frames):
        if i in wanted:
            found[i] = frame.to_ndarray(format="rgb24")
        if i >= last:
            break
    frames.close()
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
    check_rounding(rounding, RESIZE_ROUNDINGS)
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
    check_rounding(rounding, CROP_ROUNDINGS)
    if crop > height or crop > width:
        raise ValueError(f"crop {crop} is larger than the resized frame {height}x{width}")
    cy, cx = _centre(height, crop, rounding), _centre(width, crop, rounding)
    if crops == 1:
        return [(cy, cx)]
    if height > width:
        return [(0, cx), (cy, cx), (height - crop, cx)]
    return [(cy, 0), (cy, cx), (cy, width - crop)]


def _fused_lerp(a: np.ndarray, wa: np.ndarray, b: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """float32 `a * wa + b * wb` with the first product fused into the sum (one rounding), as torch's
    compiled CPU kernel evaluates it; the float64 product of two float32 numbers is exact."""
    return (a.astype(np.float64) * wa + (b * wb).astype(np.float64)).astype(np.float32)


def _linear_taps(size_in: int, size_out: int):
    """Source pixels (i0, i1) and weights (w0, w1) of torch's bilinear resize along one axis
    (half-pixel centres, align_corners=False, no antialias), in its float32 arithmetic."""
    out = np.arange(size_out)
    if size_in == size_out:  # torch copies
        return out, out, np.ones(size_out, np.float32), np.zeros(size_out, np.float32)
    scale = np.float32(size_in) / np.float32(size_out)
    centres = (out + 0.5).astype(np.float32)
    source = np.maximum(_fused_lerp(centres, scale, np.ones_like(centres), np.float32(-0.5)), np.float32(0))
    i0 = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
    w1 = np.clip(source - i0.astype(np.float32), 0, 1).astype(np.float32)
    return i0, i0 + (i0 < size_in - 1), (np.float32(1) - w1), w1


def bilinear_resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 (..., H, W, C) resized to (..., height, width, C) as `torch.nn.functional.interpolate(
    mode="bilinear", align_corners=False)` on CPU computes it, to the bit: along the width, then the height."""
    x = np.asarray(x, np.float32)
    r0, r1, hw0, hw1 = _linear_taps(x.shape[-3], height)
    c0, c1, cw0, cw1 = _linear_taps(x.shape[-2], width)
    rows, inverse = np.unique(np.concatenate([r0, r1]), return_inverse=True)
    picked = x[..., rows, :, :]
    across = _fused_lerp(picked[..., c0, :], cw0[:, None], picked[..., c1, :], cw1[:, None])
    top, bottom = across[..., inverse[:height], :, :], across[..., inverse[height:], :, :]
    return _fused_lerp(top, hw0[:, None, None], bottom, hw1[:, None, None])


def preprocess(frames: np.ndarray, recipe: Recipe, mean, std) -> np.ndarray:
    """uint8 (..., T, H, W, 3) -> resized float32 in model units, `(x / 255 - mean) / std`. The resize is
    bilinear as torch's (`bilinear_resize`): of the [0, 1] frames, or, where the recipe says
    `resized_to_uint8` (torchvision's preset), of the uint8 values, rounded half to even back to uint8.
    Crops are taken by the caller."""
    frames = np.asarray(frames)
    height, width = resized_size(frames.shape[-3], frames.shape[-2], recipe.resize, recipe.resize_rounding)
    resize = (height, width) != frames.shape[-3:-1]
    if recipe.resized_to_uint8:
        x = np.round(bilinear_resize(frames, height, width)).clip(0, 255) if resize else frames
        x = x.astype(np.float32) / np.float32(255)
    else:
        x = frames.astype(np.float32) / np.float32(255)
        x = bilinear_resize(x, height, width) if resize else x
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def load_views(path: str | os.PathLike, recipe: Recipe, normalization: Normalization, *,
               clips: int | None = None, crops: int | None = None):
    """All test views of one video: float32 (clips * crops, T, crop, crop, 3), clip-major, sampled by
    `recipe` (over `clips` x `crops` views, default the recipe's) and normalised by `normalization`.

    For a two-pathway recipe (SlowFast) returns [slow, fast] with slow = fast subsampled by alpha.
    Raises VideoError naming the file for anything wrong with the file.
    """
    path = os.fspath(path)
    clips, crops = clips or recipe.clips, crops or recipe.crops
    mean, std = normalization.mean, normalization.std
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
