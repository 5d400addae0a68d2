"""The tf.data input pipeline: infinite, exactly resumable training batches and multi-view evaluation.

Training order. The training split is read as an endless stream of samples: sample s is example
perm_e[s mod N] of epoch e = s // N, where perm_e is a numpy permutation seeded by (seed, e), and
its augmentation (temporal position, scale, crop, flip) comes from uniforms that are a hash of
(seed, s). Global step k is samples [k G, (k + 1) G) for the global batch size G, and process p of
P takes the contiguous rows [p G/P, (p + 1) G/P) of it. So a batch depends only on (dataset, seed,
k, process index and count, clip settings): resuming is `start_step=k`, which costs nothing
(no skipped example is read), and P processes together see exactly the single-process batch.

Horizontal flips follow the dataset: when its metadata carries `hflip_label_map` (the embedded
dataset: right <-> left) a mirrored clip takes the mapped label; metadata `hflip: false` turns flips
off; other datasets flip with the label unchanged.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import tensorflow as tf

from v3d_flax.data import transforms
from v3d_flax.preprocessing import Normalization
from v3d_flax.data.sources import open_source

NUM_UNIFORMS = 5  # temporal position, scale, crop y, crop x, flip
_ENDLESS = 2**62


def _shaped(tensors, *shapes):
    return tuple(tf.ensure_shape(t, s) for t, s in zip(tensors, shapes))


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective scramble of uint64 values."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def sample_uniforms(seed: int, positions: np.ndarray) -> np.ndarray:
    """float32 (len(positions), NUM_UNIFORMS) in [0, 1): a pure function of (seed, sample position)."""
    counters = (np.asarray(positions, np.uint64)[:, None] * np.uint64(NUM_UNIFORMS)
                + np.arange(NUM_UNIFORMS, dtype=np.uint64))
    with np.errstate(over="ignore"):
        key = _mix64(np.asarray([seed], np.uint64) + np.uint64(0x9E3779B97F4A7C15))
        bits = _mix64(_mix64(counters ^ key) + key)
    return ((bits >> np.uint64(40)).astype(np.float64) / float(1 << 24)).astype(np.float32)


class TrainOrder:
    """Which examples (and augmentation uniforms) make up global step k; see the module docstring."""

    def __init__(self, num_examples: int, global_batch_size: int, seed: int):
        if num_examples < 1:
            raise ValueError("the training split is empty")
        self.num_examples, self.global_batch_size, self.seed = num_examples, global_batch_size, seed

    @functools.lru_cache(maxsize=4)
    def permutation(self, epoch: int) -> np.ndarray:
        """The order of the training examples in `epoch`."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def step(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(example indices (G,), uniforms (G, NUM_UNIFORMS)) of global step k."""
        positions = np.arange(k * self.global_batch_size, (k + 1) * self.global_batch_size, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.num_examples)
        indices = np.empty_like(positions)
        for e in np.unique(epochs):
            sel = epochs == e
            indices[sel] = self.permutation(int(e))[offsets[sel]]
        return indices, sample_uniforms(self.seed, positions)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_processes(batch: int, process_index: int, process_count: int, what: str) -> int:
    _check_int("process_count", process_count, 1)
    _check_int("process_index", process_index, 0)
    if process_index >= process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    _check_int(what, batch, 1)
    if batch % process_count:
        raise ValueError(f"{what} {batch} does not divide over {process_count} processes")
    return batch // process_count


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = True
    return options


def _numpy_batches(ds: tf.data.Dataset, keys: tuple[str, ...]):
    for values in ds.as_numpy_iterator():
        yield dict(zip(keys, values))


def train_batches(name: str, *, data_dir, global_batch_size: int, num_frames: int, crop_size: int,
                  normalization: Normalization,
                  seed: int, start_step: int = 0, stop_step: int | None = None, process_index: int = 0,
                  process_count: int = 1, frame_stride: int = 1, flip: bool = True):
    """Training batches {"video": float32 (B, T, H, W, 3) NDHWC, "label": int32 (B,)}, normalised by
    `normalization` (a model's: `v3d_flax.registry.model_spec(name).normalization`). A dataset of
    precomputed flow (`DatasetInfo.modality` "flow") gives (B, T, H, W, 2), normalised the same way.

    B = global_batch_size // process_count. Batch k of this iterator is global step start_step + k;
    see the module docstring for the determinism contract. Endless unless `stop_step` is given (then
    the steps [start_step, stop_step)). `flip=False` turns horizontal flips off.
    Raises DatasetNotPreparedError / ValueError at call time, not at the first batch.
    """
    for what, value, minimum in (("num_frames", num_frames, 1), ("crop_size", crop_size, 1), ("seed", seed, 0),
                                 ("start_step", start_step, 0), ("frame_stride", frame_stride, 1)):
        _check_int(what, value, minimum)
    if stop_step is not None:
        _check_int("stop_step", stop_step, start_step)
    local = _check_processes(global_batch_size, process_index, process_count, "global_batch_size")
    mean, std = normalization.mean, normalization.std
    source = open_source(name, data_dir)
    info = source.info
    order = TrainOrder(info.num_train, global_batch_size, int(seed))
    flip_map = tf.constant(info.hflip_label_map or list(range(info.num_classes)), tf.int32)
    do_flip = bool(flip and info.flip_ok)
    rows = slice(process_index * local, (process_index + 1) * local)

    reader = source.reader(info.train_split)

    def read_step(k):
        indices, uniforms = order.step(int(k))
        return np.array([reader[int(i)] for i in indices[rows]], dtype=object), uniforms[rows]

    def make_clip(serialized, u):
        video, label = source.parse(serialized)
        clip, mirrored = transforms.train_clip(video, source.encoded_frames, u, num_frames=num_frames,
                                               crop_size=crop_size, frame_stride=frame_stride, flip=do_flip,
                                               flow=info.modality == "flow")
        label = tf.cast(label, tf.int32)
        label = tf.where(mirrored, tf.gather(flip_map, label), label)
        return transforms.normalize(clip, mean, std), label

    # Python only reads the records of each step (cheap); decoding and augmentation run in parallel in TF.
    # A bounded run ends its pipeline with its last step: an endless one still has reads in flight
    # when the iterator is deleted, and that deletion can stall (docs/performance.md).
    ds = tf.data.Dataset.range(int(start_step), _ENDLESS if stop_step is None else int(stop_step)).map(
        lambda k: _shaped(tf.numpy_function(read_step, [k], (tf.string, tf.float32)),
                          [local], [local, NUM_UNIFORMS]))
    ds = (ds.unbatch().map(make_clip, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE).with_options(_options()))
    return _numpy_batches(ds, ("video", "label"))


def eval_batches(name: str, *, data_dir, batch_size: int, num_frames: int, crop_size: int,
                 normalization: Normalization,
                 clips: int = 1, crops: int = 1, process_index: int = 0, process_count: int = 1,
                 frame_stride: int = 1):
    """One pass over the evaluation split, every video as clips x crops views normalised by `normalization`.

    Yields {"video": float32 (B, T, H, W, 3), "label": int32 (B,), "video_index": int32 (B,), "mask": bool (B,)}
    with B = batch_size // process_count (batch_size is global). Process p takes the contiguous
    videos [p N / P, (p + 1) N / P); a video's views are consecutive rows (clip-major). Every
    process yields the same number of batches: the tail is padded with mask False rows
    (video_index -1, label 0, zero video) so that the batches have a fixed shape.
    """
    for what, value, minimum in (("num_frames", num_frames, 1), ("crop_size", crop_size, 1), ("clips", clips, 1),
                                 ("frame_stride", frame_stride, 1)):
        _check_int(what, value, minimum)
    if crops not in (1, 3):
        raise ValueError(f"crops must be 1 (centre crop) or 3 (two ends and the centre), got {crops!r}")
    local = _check_processes(batch_size, process_index, process_count, "batch_size")
    mean, std = normalization.mean, normalization.std
    source = open_source(name, data_dir)
    info = source.info
    n = info.num_eval
    first, last = process_index * n // process_count, (process_index + 1) * n // process_count
    num_batches = math.ceil(math.ceil(n / process_count) * clips * crops / local)

    reader = source.reader(info.eval_split)

    def read_video(v):
        return np.asarray(reader[int(v)], dtype=object)

    def make_views(serialized, video_index, clip_index):
        video, label = source.parse(serialized)
        views = transforms.eval_views(video, source.encoded_frames, clip_index, clips=clips, crops=crops,
                                      num_frames=num_frames, crop_size=crop_size, frame_stride=frame_stride,
                                      flow=info.modality == "flow")
        views = transforms.normalize(views, mean, std)
        return (views, tf.fill([crops], tf.cast(label, tf.int32)), tf.fill([crops], video_index),
                tf.ones([crops], tf.bool))

    def read_view(i):
        v = tf.cast(i // clips, tf.int32)
        serialized = tf.ensure_shape(tf.numpy_function(read_video, [v], tf.string), [])
        return serialized, v, tf.cast(i % clips, tf.int32)

    # One element per (video, clip): the video's record is read once per clip (the OS caches it).
    ds = tf.data.Dataset.range(first * clips, last * clips).map(read_view)
    ds = (ds.map(make_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
          .batch(local).prefetch(tf.data.AUTOTUNE).with_options(_options()))
    return _padded(_numpy_batches(ds, ("video", "label", "video_index", "mask")), num_batches, local,
                   (num_frames, crop_size, crop_size, 2 if info.modality == "flow" else 3))


def _padded(batches, num_batches: int, size: int, clip_shape: tuple[int, ...]):
    """Pad the last batch to `size` rows and append empty batches up to `num_batches` (mask False)."""
    def pad(batch: dict, rows: int) -> dict:
        fill = {"video": 0.0, "label": 0, "video_index": -1, "mask": False}
        return {k: np.concatenate([v, np.full((rows, *v.shape[1:]), fill[k], v.dtype)]) for k, v in batch.items()}

    produced = 0
    for batch in batches:
        produced += 1
        yield pad(batch, size - len(batch["label"])) if len(batch["label"]) < size else batch
    empty = {"video": np.zeros((0, *clip_shape), np.float32), "label": np.zeros(0, np.int32),
             "video_index": np.zeros(0, np.int32), "mask": np.zeros(0, bool)}
    for _ in range(num_batches - produced):
        yield pad(empty, size)
