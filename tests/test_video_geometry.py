"""Test-time resize and crop geometry of every recipe, against its publisher's own formula.

Each publisher's rule is written out here (naming the function it comes from), evaluated on
non-square frames, and compared with what `v3d_flax.video` computes and what `load_views` crops.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from videos import encode

from v3d_flax.registry import list_models, model_spec
from v3d_flax.video import (bilinear_resize, clip_indices, crop_offsets, decode_frames, load_views, preprocess, probe,
                            resized_size)

TORCHVISION = ["r3d_18", "r3d_34", "mc3_18", "r2plus1d_18", "r2plus1d_34"]
PYTORCHVIDEO = ["i3d_r50", "slow_r50", "c2d_r50", "csn_r101", "r2plus1d_r50", "slowfast_r50", "slowfast_r101",
                "x3d_xs", "x3d_s", "x3d_m", "x3d_l"]
# (height, width) of source frames: 16:9 landscape and portrait, 2.35:1, 4:3, and torchvision's fixed size.
SIZES = [(720, 1280), (1280, 720), (272, 640), (240, 320), (128, 171)]


def torchvision_center(size: int, crop: int) -> int:
    """torchvision.transforms.functional.center_crop (used by the `VideoClassification` preset, by
    `transforms.CenterCrop` and by `_functional_video.center_crop`, i.e. `CenterCropVideo`):
    int(round((size - crop) / 2.0)), Python's round, so halves go to the even neighbour."""
    return int(round((size - crop) / 2.0))


def c3d_center(size: int, crop: int) -> int:
    """C3D (facebookarchive/C3D) VideoDataLayer at test time: (height - crop_size) / 2 in C++ ints."""
    return (size - crop) // 2


def ptv_short_side_scale(height: int, width: int, size: int) -> tuple[int, int]:
    """pytorchvideo.transforms.functional.short_side_scale: the long side floored, in its float order."""
    if width < height:
        return int(math.floor((float(height) / width) * size)), size
    return size, int(math.floor((float(width) / height) * size))


def ptv_uniform_crop(height: int, width: int, size: int, spatial_idx: int) -> tuple[int, int]:
    """pytorchvideo.transforms.functional.uniform_crop (= PySlowFast's slowfast.datasets.transform.
    uniform_crop): centre by ceil, then index 0/2 moves to the start/end of the longer axis."""
    y, x = int(math.ceil((height - size) / 2)), int(math.ceil((width - size) / 2))
    if height > width:
        y = {0: 0, 1: y, 2: height - size}[spatial_idx]
    else:
        x = {0: 0, 1: x, 2: width - size}[spatial_idx]
    return y, x


def expected(name: str, height: int, width: int, crops: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """(resized size, crop corners) of recipe `name` on a height x width video, by the publisher's rules."""
    r = model_spec(name).recipe
    if name in TORCHVISION or name == "c3d":
        size = r.resize  # torchvision's VideoClassification preset and C3D's data layer: a fixed (128, 171)
    elif name in PYTORCHVIDEO:
        size = ptv_short_side_scale(height, width, r.resize)
    else:  # DeepMind's i3d: "short side 256", rounding unpublished; ours is round-to-nearest
        size = (r.resize, round(width * r.resize / height)) if height <= width else \
            (round(height * r.resize / width), r.resize)
    h, w = size
    if crops == 3:
        if name in PYTORCHVIDEO:
            return size, [ptv_uniform_crop(h, w, r.crop, i) for i in range(3)]
        centre = c3d_center if name == "c3d" else torchvision_center  # no published 3-crop: start/centre/end
        cy, cx = centre(h, r.crop), centre(w, r.crop)
        ends = [(0, cx), (cy, cx), (h - r.crop, cx)] if h > w else [(cy, 0), (cy, cx), (cy, w - r.crop)]
        return size, ends
    if name == "c3d":
        return size, [(c3d_center(h, r.crop), c3d_center(w, r.crop))]
    # torchvision's preset; PyTorchVideo's 1-crop eval (its trainer's val transform and the hub tutorial:
    # ShortSideScale, then torchvision's CenterCrop / CenterCropVideo); i3d by the torchvision rule.
    return size, [(torchvision_center(h, r.crop), torchvision_center(w, r.crop))]


def ours(name: str, height: int, width: int, crops: int):
    r = model_spec(name).recipe
    size = resized_size(height, width, r.resize, r.resize_rounding)
    return size, crop_offsets(*size, r.crop, crops, r.crop_rounding(crops))


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("height, width", SIZES)
def test_every_recipe_follows_its_publisher(name, height, width):
    for crops in (1, 3):
        assert ours(name, height, width, crops) == expected(name, height, width, crops), (name, crops)


def test_the_reported_offsets():
    """The numbers of the issue, spelled out."""
    assert ours("r3d_18", 720, 1280, 1) == ((128, 171), [(8, 30)])  # torchvision: round(29.5) = 30
    assert ours("c3d", 720, 1280, 1) == ((128, 171), [(8, 29)])  # Caffe: 59 / 2 = 29
    assert ours("x3d_m", 720, 1280, 3) == ((256, 455), [(0, 0), (0, 100), (0, 199)])  # ceil(99.5) = 100
    assert ours("x3d_xs", 720, 1280, 1) == ((182, 323), [(0, 70)])  # floor(323.56); round(70.5) = 70
    assert ours("x3d_l", 272, 640, 3) == ((356, 837), [(0, 0), (0, 241), (0, 481)])  # floor(837.65)
    assert ours("x3d_m", 240, 320, 1) == ((256, 341), [(0, 42)])  # round(42.5) = 42 ...
    assert ours("x3d_m", 240, 320, 3) == ((256, 341), [(0, 0), (0, 43), (0, 85)])  # ... ceil(42.5) = 43
    assert ours("x3d_m", 1280, 720, 3) == ((455, 256), [(0, 0), (100, 0), (199, 0)])
    # PyTorchVideo rescales even when the short side already has the size, and its float order can
    # then drop a pixel: 198 / 182 * 182 = 197.99999999999997.
    assert ours("x3d_xs", 182, 198, 1)[0] == (182, 197)


def test_bare_helpers_keep_their_defaults():
    """Without a rule, resized_size rounds to nearest and crop_offsets floors, as before."""
    assert resized_size(240, 320, 128) == (128, 171)
    assert crop_offsets(128, 171, 112, 1) == [(8, 29)]
    assert crop_offsets(128, 171, 112, 1, "round") == [(8, 30)]
    with pytest.raises(ValueError, match="rounding"):
        crop_offsets(128, 171, 112, 1, "nearest")
    with pytest.raises(ValueError, match="rounding"):
        model_spec("x3d_m").recipe.with_overrides(resize_rounding="ceil")


def torchvision_video_classification(frames: np.ndarray, resize_size, crop_size, mean, std) -> np.ndarray:
    """torchvision 0.28's `transforms._presets.VideoClassification` on uint8 (T, H, W, 3) frames, as
    `torchvision.io.read_video(..., output_format="TCHW")` hands them to it, written out in torch ops:
    `functional.resize` (antialias=False) casts the uint8 frames to float32, interpolates bilinearly
    (align_corners=False), `torch.round`s and casts back to uint8; `center_crop` offsets by
    int(round(...)); `convert_image_dtype` divides by 255; `normalize` subtracts and divides."""
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).to(torch.float32)
    video = torch.nn.functional.interpolate(video, size=list(resize_size), mode="bilinear", align_corners=False,
                                            antialias=False)
    video = torch.round(video).to(torch.uint8)
    top, left = (torchvision_center(s, c) for s, c in zip(video.shape[-2:], crop_size))
    video = video[..., top:top + crop_size[0], left:left + crop_size[1]]
    video = video.to(torch.float32) / 255.0
    video = (video - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return video.permute(0, 2, 3, 1).numpy()


def textured_frames(height: int, width: int, frames: int = 2) -> np.ndarray:
    """Deterministic uint8 frames with detail at every scale: smooth noise plus pixel noise."""
    rng = np.random.default_rng(height * 10000 + width)
    coarse = torch.from_numpy(rng.uniform(0, 255, (frames, 3, height // 8 + 2, width // 8 + 2)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic").numpy()
    noisy = smooth.transpose(0, 2, 3, 1) + rng.normal(0, 12, (frames, height, width, 3))
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("height, width", [(240, 320), (1280, 720), (272, 640), (100, 200)])
def test_torchvision_views_are_the_presets_pixel_for_pixel(height, width):
    """r3d_18's default view of non-square frames equals torchvision's own preset exactly, including
    its rounding of the resized frames back to uint8 (float32 arithmetic in another order flips a few
    values in 10^5 by a grey level; not rounding moves all of them by up to half of one)."""
    spec = model_spec("r3d_18")
    r, norm = spec.recipe, spec.normalization
    frames = textured_frames(height, width)
    ours = preprocess(frames, r, norm.mean, norm.std)
    (y, x), = crop_offsets(*ours.shape[1:3], r.crop, 1, r.crop_rounding(1))
    theirs = torchvision_video_classification(frames, r.resize, (r.crop, r.crop), norm.mean, norm.std)
    np.testing.assert_array_equal(ours[:, y:y + r.crop, x:x + r.crop], theirs)


@pytest.mark.parametrize("size", [(128, 171), (300, 200), (91, 455)])
def test_bilinear_resize_is_torchs_to_the_bit(size):
    """Down and up, on [0, 1] frames (PyTorchVideo's order) and on 0-255 values (torchvision's)."""
    frames = textured_frames(272, 640)
    for x in (frames.astype(np.float32) / np.float32(255), frames.astype(np.float32)):
        theirs = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode="bilinear",
                                                 align_corners=False)
        np.testing.assert_array_equal(bilinear_resize(x, *size), theirs.permute(0, 2, 3, 1).numpy())


def test_preprocess_resizes_by_the_recipe_rule():
    frames = np.zeros((1, 720, 1280, 3), np.uint8)
    assert preprocess(frames, model_spec("x3d_xs").recipe, (0.45,) * 3, (0.225,) * 3).shape == (1, 182, 323, 3)


# --------------------------------------------------------------------------------------- through load_views


@pytest.fixture(scope="module")
def gradient_video(tmp_path_factory):
    """8 frames of 240x320 whose red channel ramps with the column index and green with the row index."""
    frames = np.zeros((8, 240, 320, 3), np.uint8)
    frames[..., 0] = (np.arange(320) * 255 // 319)[None, None, :]
    frames[..., 1] = (np.arange(240) * 255 // 239)[None, :, None]
    frames[..., 2] = 128
    return encode(tmp_path_factory.mktemp("geometry") / "gradient.mp4", "libx264", frames)


def _publisher_crops(path, name, recipe, crops):
    """The first frame of `load_views`'s clip as `name`'s publisher would see it: decoded, resized with
    torch's bilinear interpolate to the publisher's size (torchvision's preset: of the uint8 frames,
    rounded back to uint8), normalised; and the publisher's crop corners."""
    info = probe(path)
    frames = decode_frames(path, clip_indices(info.num_frames, info.fps, recipe, 1)[0, :1])
    size, corners = expected(name, *frames.shape[1:3], crops)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    if name in TORCHVISION:
        x = torch.round(torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)) / 255.0
    else:
        x = torch.nn.functional.interpolate(x / 255.0, size=size, mode="bilinear", align_corners=False)
    normalization = model_spec(name).normalization
    mean, std = normalization.mean, normalization.std
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return x.permute(0, 2, 3, 1)[0].numpy(), corners


@pytest.mark.parametrize("name, crops", [("r3d_18", 1), ("c3d", 1), ("x3d_m", 1), ("x3d_m", 3), ("x3d_xs", 3)])
def test_load_views_crops_at_the_publishers_offset(gradient_video, name, crops):
    recipe = model_spec(name).recipe.with_overrides(frames=2, rate=1)
    views = load_views(gradient_video, recipe, model_spec(name).normalization, clips=1, crops=crops)
    frame, corners = _publisher_crops(gradient_video, name, recipe, crops)
    c = recipe.crop
    assert len(views) == len(corners) == crops
    for view, (y, x) in zip(views, corners):
        # Compare the view's first frame with the publisher's crops at and around its corner.
        errors = {(yy, xx): float(np.abs(frame[yy:yy + c, xx:xx + c] - view[0]).max())
                  for yy in range(max(0, y - 2), min(frame.shape[0] - c, y + 2) + 1)
                  for xx in range(max(0, x - 2), min(frame.shape[1] - c, x + 2) + 1)}
        best = min(errors, key=errors.get)
        assert best == (y, x) and errors[best] < 1e-4, (name, crops, (y, x), best, errors[best])
