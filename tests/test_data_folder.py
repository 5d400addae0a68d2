"""`python -m v3d_flax.data from-folder`: a folder of real video files becomes a tfds dataset that
the training pipeline reads; bad folders are refused before anything is written."""

from __future__ import annotations

import os

import numpy as np
import pytest

from v3d_flax.data.__main__ import main as data_cli
from v3d_flax.data.folder import plan_folder, prepare_folder, resized_frames
from videos import encode


def _moving_square(offset: int, frames: int = 10, height: int = 48, width: int = 64) -> np.ndarray:
    video = np.full((frames, height, width, 3), 40, np.uint8)
    for t in range(frames):
        x = (offset + 3 * t) % (width - 16)
        video[t, 16:32, x:x + 16] = (230, 120 + offset, 30)
    return video


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    """SRC/train/{left,right}/*.mp4 (2 each) and SRC/val/{left,right}/*.mp4 (1 each), MPEG-4 encoded."""
    root = tmp_path_factory.mktemp("videos")
    for split, count in (("train", 2), ("val", 1)):
        for c, name in enumerate(("left", "right")):
            os.makedirs(root / split / name)
            for k in range(count):
                encode(root / split / name / f"{name}{k}.mp4", "mpeg4", _moving_square(10 * k + 5 * c))
    return root


def test_a_folder_of_videos_trains_like_any_tfds_dataset(video_folder, tmp_path):
    from v3d_flax import data
    from v3d_flax.preprocessing import TORCHVISION_KINETICS

    assert data_cli(["from-folder", str(video_folder), "my_clips", "--data-dir", str(tmp_path),
                     "--short-side", "32"]) == 0
    info = data.dataset_info("my_clips", data_dir=tmp_path)
    assert (info.class_names, info.num_train, info.num_eval, info.eval_split) == (("left", "right"), 4, 2, "val")
    assert sorted(os.listdir(tmp_path)) == ["my_clips"]  # nothing else left in the data directory

    # The stored frames are the source's, decoded and resized to a 32-pixel short side (JPEG error only).
    import tensorflow_datasets as tfds

    stored = {ex["path"].decode(): ex for ex in tfds.as_numpy(
        tfds.builder("my_clips", data_dir=str(tmp_path)).as_dataset(split="val"))}
    ex = stored[os.path.join("val", "right", "right0.mp4")]
    expected = resized_frames(str(video_folder / "val" / "right" / "right0.mp4"), 32)
    assert ex["video"].shape == expected.shape == (10, 32, 43, 3) and ex["label"] == 1
    assert np.abs(ex["video"].astype(int) - expected).mean() < 3

    batch = next(data.train_batches("my_clips", data_dir=tmp_path, global_batch_size=4, num_frames=8, crop_size=28,
                                    normalization=TORCHVISION_KINETICS, seed=0))
    assert batch["video"].shape == (4, 8, 28, 28, 3) and sorted(batch["label"].tolist()) == [0, 0, 1, 1]


def test_pre_decoded_frames_are_the_decoded_video_exactly(video_folder, tmp_path):
    import tensorflow_datasets as tfds

    prepare_folder(video_folder, "my_raw_clips", tmp_path, short_side=None, frames="uint8")
    builder = tfds.builder("my_raw_clips", data_dir=str(tmp_path))
    ex = next(iter(tfds.as_numpy(builder.as_dataset(split="train").filter(
        lambda e: e["path"] == os.path.join("train", "left", "left1.mp4")))))
    np.testing.assert_array_equal(ex["video"], resized_frames(str(video_folder / "train" / "left" / "left1.mp4"),
                                                              None))


def test_bad_folders_are_refused_before_anything_is_written(video_folder, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad"
    os.makedirs(bad / "train" / "cat")
    os.makedirs(bad / "validation" / "cat")
    (bad / "train" / "cat" / "broken.mp4").write_bytes(b"not a video at all")
    (bad / "validation" / "cat" / "empty.avi").write_bytes(b"")
    with pytest.raises(ValueError, match=r"(?s)broken\.mp4: not a readable video.*empty\.avi"):
        plan_folder(bad)
    with pytest.raises(ValueError, match=r"expected .*/train/<class>/<video>"):
        plan_folder(bad / "train")
    out = tmp_path / "out"
    assert data_cli(["from-folder", str(bad), "cats", "--data-dir", str(out)]) == 1
    assert "broken.mp4" in capsys.readouterr().err and not (out / "cats").exists()
    with pytest.raises(ValueError, match="lower case letters"):
        prepare_folder(video_folder, "My-Clips", out)
    with pytest.raises(ValueError, match="catalogue dataset"):
        prepare_folder(video_folder, "ucf101", out)
    os.makedirs(out / "taken" / "1.0.0")
    with pytest.raises(ValueError, match="already exists"):
        prepare_folder(video_folder, "taken", out)

    # A video that fails half-way through the preparation leaves no dataset behind either.
    from v3d_flax.data import folder
    from v3d_flax.video import VideoError

    calls = []

    def fails_third(path, short_side):
        calls.append(path)
        if len(calls) == 3:
            raise VideoError(f"{path}: corrupt video, decoding failed")
        return resized_frames(path, short_side)

    monkeypatch.setattr(folder, "resized_frames", fails_third)
    with pytest.raises(VideoError):
        prepare_folder(video_folder, "half", out)
    assert len(calls) == 3
    assert not (out / "half").exists() or list((out / "half").rglob("*")) == []
