"""Datasets: resolving a tfds name, preparing it, describing it, and reading its examples by index.

Any tfds dataset with a video feature (`tfds.features.Video`, or a uint8 `Tensor` of shape
(T, H, W, 3)) and a `ClassLabel` feature works. The embedded "v3d_synthetic_motion" builds itself
on first use; every other dataset must already be prepared in the data directory (training never
downloads: on several hosts every process would) and `prepare()` runs tfds's real download and
preparation once, e.g. `python -m v3d_flax.data prepare ucf101 --data-dir DIR`.

Examples are read by index straight from the prepared files (tfrecord: an index of record offsets
built once per shard; array_record: its own random access), so an input pipeline can start at any
position without reading what comes before it.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import io
import logging
import os
import struct
import sys
import threading
import warnings

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from v3d_flax.data import synthetic


class _QuietTfds(logging.Filter):
    """Drops tfds's absl warnings that every normal start would print: a dataset variant folder
    probed before it is built, and a deprecation inside tfds's own feature decoding."""

    NOISE = ("has no dataset_info.json", "`FeatureConnector.dtype` is deprecated")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in self.NOISE)


logging.getLogger("absl").addFilter(_QuietTfds())

EMBEDDED = {synthetic.NAME}
EVAL_SPLITS = ("validation", "val", "test")
_PREPARE_NOTES = {
    "ucf101": "UCF101 downloads about 6.5 GB and decodes the .avi files with ffmpeg (install it first); "
              "its default config ucf101_1_256 stores 256x256 JPEG frames of split 1",
}


class DatasetNotPreparedError(FileNotFoundError, ValueError):
    """The dataset's prepared files are not in the data directory; the message says how to prepare them.

    Also a ValueError: like a bad flag, it is a setting (--dataset / --data-dir) the user must fix.
    """


FLOW_KEY = "flow"  # the feature of a precomputed-flow dataset: uint8 (T, H, W, 2), see transforms.FLOW_ZERO


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the training loop needs to know about a dataset.

    `hflip_label_map`: None when a horizontal flip keeps the label; otherwise the label each class
    takes in the mirrored video (the embedded dataset: right <-> left). `flip_ok`: False when the
    dataset's metadata says flips must not be used at all.
    """

    num_classes: int
    num_train: int
    num_eval: int
    class_names: tuple[str, ...]
    train_split: str
    eval_split: str
    name: str = ""
    video_key: str = "video"
    label_key: str = "label"
    hflip_label_map: tuple[int, ...] | None = None
    flip_ok: bool = True
    modality: str = "rgb"  # "flow": precomputed TV-L1 flow (`python -m v3d_flax.data flow`), 2 channels


@functools.cache
def keep_tensorflow_on_host() -> None:
    """Hide the GPUs from TensorFlow: JAX owns the accelerators and tf.data runs on the host, but a
    GPU build of TensorFlow reserves GPU memory once it places its first op. Called where a source is
    opened or prepared, before any TensorFlow op; once TensorFlow has placed one its devices are
    fixed, and a warning says so if it holds GPUs."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already initialised its devices
        if tf.config.list_logical_devices("GPU"):
            warnings.warn("TensorFlow placed an op on the GPU before the input pipeline opened its dataset, so "
                          "it keeps its GPUs (and their reserved memory); the input pipeline runs on the host "
                          "regardless", RuntimeWarning, stacklevel=3)


def default_data_dir() -> str:
    """tfds's default data directory ($TFDS_DATA_DIR or ~/tensorflow_datasets)."""
    return os.path.expanduser(tfds.core.constants.DATA_DIR)


def _root(data_dir: str | os.PathLike | None) -> str:
    return os.path.expanduser(os.fspath(data_dir)) if data_dir else default_data_dir()


def _base_name(name: str) -> str:
    return name.split("/")[0].split(":")[0]


def _builder(name: str, root: str):
    if not isinstance(name, str) or not name:
        raise ValueError(f"expected a tfds dataset name such as 'ucf101' or {synthetic.NAME!r}, got {name!r}")
    try:
        return tfds.builder(name, data_dir=root)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(f"unknown tfds dataset {name!r}: {str(e).splitlines()[0]}. Use a tfds name with a video "
                         f"feature and a class label (e.g. ucf101), or {synthetic.NAME!r}, the embedded one") from e


def not_prepared_message(name: str, root: str, builder) -> str:
    """How to prepare `name` and point --data-dir at it."""
    note = _PREPARE_NOTES.get(_base_name(name))
    where = f"the data directory {root}" + ("" if os.path.isdir(root) else " (which does not exist)")
    return (f"the tfds dataset {name!r} is not prepared in {where} (expected "
            f"{builder.data_dir}); training does not download datasets. Prepare it once on a machine with internet "
            f"access:\n    python -m v3d_flax.data prepare {name} --data-dir DIR\n"
            f"(tfds's download and preparation, the same as `tfds build {name} --data_dir DIR`"
            + (f"; {note}" if note else "") + "), then pass --data-dir DIR (data_dir=DIR), or copy the prepared "
            f"DIR/{builder.name} directory into {root}.")


def _build_embedded(builder, root: str) -> None:
    """Generate the embedded dataset once, under a lock so that concurrent processes build it only once."""
    import fcntl

    if not os.path.isdir(root):
        print(f"creating the data directory {root} for the embedded dataset", file=sys.stderr, flush=True)
        os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".{builder.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not builder.is_prepared():
                print(f"building the embedded dataset {builder.name}/{builder.builder_config.name} in {root} "
                      "(once, a few seconds)", file=sys.stderr, flush=True)
                tfds.disable_progress_bar()
                chatter = io.StringIO()  # tfds's "Downloading and preparing dataset Unknown size ..." lines
                try:
                    with contextlib.redirect_stdout(chatter):
                        builder.download_and_prepare(
                            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
                except BaseException:
                    sys.stderr.write(chatter.getvalue())
                    raise
                finally:
                    tfds.enable_progress_bar()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def prepare(name: str, data_dir: str | os.PathLike | None = None) -> DatasetInfo:
    """Download and prepare `name` with tfds (needs internet for real datasets); returns its DatasetInfo."""
    keep_tensorflow_on_host()
    root = _root(data_dir)
    builder = _builder(name, root)
    if _base_name(name) in EMBEDDED:
        _build_embedded(builder, root)
    elif not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except ModuleNotFoundError as e:
            raise RuntimeError(f"preparing {name!r} needs the Python package {e.name!r} "
                               f"(pip install {e.name}); tfds imports it without declaring it") from e
        except Exception as e:
            raise RuntimeError(f"tfds could not download and prepare {name!r} into {root}: {e}. With no direct "
                               f"internet access, prepare it elsewhere and copy the directory "
                               f"{builder.name}/ into {root}") from e
    return _source(name, root).info


@functools.lru_cache(maxsize=None)
def _source(name: str, root: str) -> "Source":
    builder = _builder(name, root)
    if not builder.is_prepared():
        if _base_name(name) not in EMBEDDED:
            raise DatasetNotPreparedError(not_prepared_message(name, root, builder))
        _build_embedded(builder, root)
        builder = _builder(name, root)  # another process may have built it: read the split sizes from disk
    return Source(name, builder)


def open_source(name: str, data_dir: str | os.PathLike | None = None) -> "Source":
    """The prepared dataset `name` in `data_dir` (the embedded one is built on first use)."""
    keep_tensorflow_on_host()
    return _source(name, _root(data_dir))


def dataset_info(name: str, data_dir: str | os.PathLike | None = None) -> DatasetInfo:
    """Classes, split names and sizes of the dataset `name` (see `DatasetInfo`)."""
    return open_source(name, data_dir).info


def _find_features(features, name: str) -> tuple[str, str]:
    video = [k for k, f in features.items() if isinstance(f, tfds.features.Video)
             or (type(f) is tfds.features.Tensor and len(f.shape) == 4 and np.dtype(f.np_dtype) == np.uint8
                 and (f.shape[-1] in (1, 3) or (k == FLOW_KEY and f.shape[-1] == 2)))]
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    described = ", ".join(f"{k}: {type(f).__name__}{getattr(f, 'shape', '')}" for k, f in features.items())
    if not video or not labels:
        raise ValueError(f"the tfds dataset {name!r} needs a video feature (tfds.features.Video or a uint8 Tensor "
                         f"of shape (T, H, W, 3)) and a ClassLabel feature at its top level; it has: {described}")
    pick = lambda keys, preferred: preferred if preferred in keys else keys[0]  # noqa: E731
    return pick(video, "video"), pick(labels, "label")


class Source:
    """A prepared tfds dataset: its DatasetInfo, example decoding and per-split random access."""

    def __init__(self, name: str, builder):
        self.name, self.builder = name, builder
        features = builder.info.features
        video_key, label_key = _find_features(features, name)
        self.video_feature = features[video_key]
        self.encoded_frames = isinstance(self.video_feature, tfds.features.Video)
        splits = builder.info.splits
        if "train" not in splits:
            raise ValueError(f"the tfds dataset {name!r} has no 'train' split (splits: {', '.join(splits)})")
        eval_split = next((s for s in EVAL_SPLITS if s in splits), None)
        if eval_split is None:
            raise ValueError(f"the tfds dataset {name!r} has no evaluation split (looked for "
                             f"{', '.join(EVAL_SPLITS)}; splits: {', '.join(splits)})")
        metadata = builder.info.metadata or {}
        flip_map = metadata.get("hflip_label_map")
        label = features[label_key]
        self.info = DatasetInfo(
            num_classes=label.num_classes, num_train=splits["train"].num_examples,
            num_eval=splits[eval_split].num_examples, class_names=tuple(label.names), train_split="train",
            eval_split=eval_split, name=name, video_key=video_key, label_key=label_key,
            hflip_label_map=tuple(int(v) for v in flip_map) if flip_map is not None else None,
            flip_ok=bool(metadata.get("hflip", True)), modality="flow" if video_key == FLOW_KEY else "rgb")
        if flip_map is not None and sorted(self.info.hflip_label_map) != list(range(label.num_classes)):
            raise ValueError(f"{name!r}: metadata hflip_label_map must be a permutation of the labels, got {flip_map}")
        self._file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format) or "tfrecord")

    def num_examples(self, split: str) -> int:
        """Examples in `split`."""
        return self.builder.info.splits[split].num_examples

    def reader(self, split: str) -> "RecordReader":
        """A new random-access reader of serialized examples (one per pipeline: it holds open files)."""
        instructions = [(os.fspath(fi.filename), fi.skip, fi.take)
                        for fi in self.builder.info.splits[split].file_instructions]
        return RecordReader(instructions, self._file_format)

    def parse(self, serialized):
        """TF: serialized example -> (video, label). Video frames stay encoded (a string per frame) for
        tfds.features.Video, so that only the frames a clip needs get decoded; otherwise uint8 (T, H, W, C)."""
        decoders = {self.info.video_key: tfds.decode.SkipDecoding()} if self.encoded_frames else None
        example = self.builder.info.features.deserialize_example(serialized, decoders=decoders)
        return example[self.info.video_key], example[self.info.label_key]


_INDEX_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4096)
def _tfrecord_offsets(path: str) -> np.ndarray:
    """(offset, length) of every record's payload in a tfrecord file, read from the record headers."""
    entries = []
    with tf.io.gfile.GFile(path, "rb") as f:
        size, pos = f.size(), 0
        while pos < size:
            f.seek(pos)
            header = f.read(12)
            if len(header) < 12:
                raise ValueError(f"truncated tfrecord file {path} at byte {pos}")
            (length,) = struct.unpack("<Q", header[:8])
            entries.append((pos + 12, length))
            pos += 12 + length + 4
    return np.asarray(entries, dtype=np.int64).reshape(-1, 2)


class RecordReader:
    """Serialized example `i` of a split, for any i, without reading the records before it."""

    def __init__(self, instructions: list[tuple[str, int, int]], file_format: str):
        self._instructions = instructions
        self._starts = np.cumsum([0] + [take for _, _, take in instructions]).tolist()
        self._format = file_format
        if file_format not in ("tfrecord", "array_record"):
            raise ValueError(f"cannot read {file_format} files by index; prepare the dataset as tfrecord "
                             "(tfds's default) or array_record")
        self._files: dict[str, object] = {}

    def __len__(self) -> int:
        return self._starts[-1]

    def _open(self, path: str):
        if path not in self._files:
            if self._format == "array_record":
                from array_record.python.array_record_module import ArrayRecordReader

                self._files[path] = ArrayRecordReader(path, "readahead_buffer_size:0,max_parallelism:0")
            elif "://" in path:
                self._files[path] = tf.io.gfile.GFile(path, "rb")
            else:
                self._files[path] = open(path, "rb")
        return self._files[path]

    def __getitem__(self, i: int) -> bytes:
        if not 0 <= i < len(self):
            raise IndexError(f"example {i} out of range for a split of {len(self)} examples")
        shard = bisect.bisect_right(self._starts, i) - 1
        path, skip, _ = self._instructions[shard]
        j = skip + i - self._starts[shard]
        f = self._open(path)
        if self._format == "array_record":
            return f.read([j])[0]
        with _INDEX_LOCK:
            offsets = _tfrecord_offsets(path)
        offset, length = offsets[j]
        f.seek(int(offset))
        return f.read(int(length))

    def close(self) -> None:
        """Close the open files."""
        for f in self._files.values():
            with contextlib.suppress(Exception):
                f.close()
        self._files.clear()
