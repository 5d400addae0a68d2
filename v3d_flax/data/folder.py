"""Your own videos as a tfds dataset: `python -m v3d_flax.data from-folder SRC NAME --data-dir DIR`.

SRC holds one folder per split and one per class inside it (tfds's ImageFolder layout):

    SRC/train/<class>/<video>.mp4        # any container and codec FFmpeg (PyAV) reads
    SRC/validation/<class>/<video>.mp4   # or val/ or test/: the evaluation split

Every video is decoded once (PyAV), its frames resized so that the short side is `short_side`
pixels (area averaging, as pipelines pre-resize Kinetics), and written as a tfds dataset named NAME
that `train.py --dataset NAME --data-dir DIR` reads like any other. Two ways to store the frames:

- "jpeg" (default): one JPEG per frame (quality 95), as tfds's UCF101; a clip decodes only its own
  frames, so storage stays close to the source videos';
- "uint8": pre-decoded raw frames, read without any decoding, for hosts whose cores cannot decode
  JPEG as fast as the accelerator consumes clips (docs/performance.md measures both); about 10-30x
  the size of "jpeg".

Every file is checked (opened and its frames counted, without decoding) before anything is written,
and tfds writes into a temporary folder that becomes NAME/1.0.0 only when every split is complete,
so a failed preparation leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import numpy as np

from v3d_flax import video as videoio
from v3d_flax.data.sources import EVAL_SPLITS, _root, keep_tensorflow_on_host

FRAME_FORMATS = ("jpeg", "uint8")
VERSION = "1.0.0"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class FolderPlan:
    """What `prepare_folder` will write: the class names and, per split, (path, label) in order."""

    class_names: tuple[str, ...]
    splits: dict[str, list[tuple[str, int]]]

    def count(self) -> str:
        """'12 train / 4 validation videos'."""
        return " / ".join(f"{len(v)} {k}" for k, v in self.splits.items()) + " videos"


def _subdirs(path: str) -> list[str]:
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)) and not d.startswith("."))


def plan_folder(source: str | os.PathLike) -> FolderPlan:
    """Read the layout of `source` (see the module docstring) and check every video; ValueError with
    every problem found (layout, unreadable or empty files) before any work."""
    source = os.fspath(source)
    expected = f"expected {source}/train/<class>/<video> and {source}/validation (or val, test)/<class>/<video>"
    if not os.path.isdir(source):
        raise ValueError(f"{source} is not a directory; {expected}")
    present = _subdirs(source)
    eval_split = next((s for s in EVAL_SPLITS if s in present), None)
    if "train" not in present or eval_split is None:
        raise ValueError(f"{source} has the folders {present or 'none'}; {expected}")
    classes = sorted({c for split in ("train", eval_split) for c in _subdirs(os.path.join(source, split))})
    if not classes:
        raise ValueError(f"{source}/train has no class folders; {expected}")
    splits, problems = {}, []
    for split in ("train", eval_split):
        items = []
        for label, name in enumerate(classes):
            folder = os.path.join(source, split, name)
            if os.path.isdir(folder):
                items += [(path, label) for path in videoio.find_videos([folder])]
        if not items:
            problems.append(f"{source}/{split} holds no video files ({', '.join(videoio.VIDEO_EXTENSIONS)})")
        for path, _ in items:
            try:
                videoio.probe(path)
            except videoio.VideoError as e:
                problems.append(str(e))
        splits[split] = items
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ValueError(f"cannot prepare {source}:\n  {shown}")
    return FolderPlan(tuple(classes), splits)


def resized_frames(path: str, short_side: int | None) -> np.ndarray:
    """Every frame of `path` as uint8 RGB (T, H, W, 3), the short side resized to `short_side` (area
    averaging, `v3d_flax.video.resized_size`'s rounding; None keeps the size)."""
    frames = []
    for frame in videoio.iter_frames(path):
        if short_side is None:
            frames.append(frame.to_ndarray(format="rgb24"))
            continue
        height, width = videoio.resized_size(frame.height, frame.width, short_side)
        frames.append(frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray())
    if not frames:
        raise videoio.VideoError(f"{path}: the video stream holds no frames")
    return np.stack(frames)


def features(class_names, frames: str):
    """The tfds features of a folder dataset: video, label, and the source path relative to SRC."""
    import tensorflow_datasets as tfds

    video = (tfds.features.Video((None, None, None, 3), encoding_format="jpeg") if frames == "jpeg" else
             tfds.features.Tensor(shape=(None, None, None, 3), dtype=np.uint8, encoding="bytes"))
    return tfds.features.FeaturesDict({"video": video, "label": tfds.features.ClassLabel(names=list(class_names)),
                                       "path": tfds.features.Text()})


def prepare_folder(source: str | os.PathLike, name: str, data_dir: str | os.PathLike | None = None, *,
                   short_side: int | None = 128, frames: str = "jpeg", progress=None):
    """Write the videos under `source` as the tfds dataset `name` in `data_dir`; returns its DatasetInfo.

    `short_side`: frames are resized so that min(H, W) equals it (128 for 112 crops, 256 or 320 for
    224); None keeps them as decoded. `frames`: "jpeg" or "uint8" (see the module docstring).
    `progress(i, n, path)` is called before each video. Raises ValueError before any work when a
    setting, the layout or a file is wrong, or the dataset already exists.
    """
    from v3d_flax.data.sources import dataset_info

    if frames not in FRAME_FORMATS:
        raise ValueError(f"frames must be one of {', '.join(FRAME_FORMATS)}, got {frames!r}")
    if short_side is not None and (isinstance(short_side, bool) or not isinstance(short_side, int) or short_side < 1):
        raise ValueError(f"short_side must be a positive integer or None, got {short_side!r}")
    root = _root(data_dir)
    check_new_dataset(name, root)
    plan = plan_folder(source)
    keep_tensorflow_on_host()
    source = os.fspath(source)
    total, done = sum(len(v) for v in plan.splits.values()), [0]

    def examples(items):
        for path, label in items:
            if progress is not None:
                progress(done[0], total, path)
            done[0] += 1
            relative = os.path.relpath(path, source)
            yield relative, {"video": resized_frames(path, short_side), "label": label, "path": relative}

    store_dataset(name, root, features(plan.class_names, frames),
                  {split: examples(items) for split, items in plan.splits.items()},
                  f"videos of {source} ({plan.count()}), short side {short_side or 'as decoded'}, {frames} frames; "
                  f"prepared by v3d_flax.data from-folder")
    return dataset_info(name, root)


def check_new_dataset(name: str, root: str) -> str:
    """The folder a new dataset `name` will take in the data directory `root`; ValueError for a name tfds
    would refuse, a tfds catalogue name, or a dataset that exists."""
    import tensorflow_datasets as tfds

    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"the dataset name must be lower case letters, digits and underscores, starting with a "
                         f"letter (tfds's rule), got {name!r}")
    if name in tfds.list_builders(with_community_datasets=False):
        raise ValueError(f"{name!r} is a tfds catalogue dataset; choose another name")
    target = os.path.join(root, name, VERSION)
    if os.path.exists(target):
        raise ValueError(f"{target} already exists: remove it to prepare {name!r} again, or choose another name")
    return target


def store_dataset(name: str, root: str, features, split_examples: dict, description: str, metadata=None) -> None:
    """Write the examples as tfds dataset `name` in `root` (tfds writes a temporary folder and renames
    it), with `metadata` (a JSON dict, read back as the builder's info.metadata) when given; nothing
    of it stays when anything fails."""
    import tensorflow_datasets as tfds

    target = os.path.join(root, name, VERSION)
    downloads = os.path.join(root, "downloads")
    made_downloads = not os.path.exists(downloads)
    tfds.disable_progress_bar()
    try:
        tfds.dataset_builders.store_as_tfds_dataset(name, VERSION, features, split_examples, data_dir=root,
                                                    description=description)
        if metadata:
            tmp = os.path.join(target, "metadata.json.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(metadata, f)
            os.replace(tmp, os.path.join(target, "metadata.json"))
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    finally:
        tfds.enable_progress_bar()
        if made_downloads and os.path.isdir(downloads):  # tfds makes an empty download folder
            for sub in (os.path.join(downloads, "extracted"), downloads):
                if os.path.isdir(sub) and not os.listdir(sub):
                    os.rmdir(sub)
