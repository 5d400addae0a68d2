"""The data side: embedded dataset, input pipeline contracts, evaluation views, normalisation, metrics."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from v3d_flax import data
from v3d_flax.data import synthetic
from v3d_flax.registry import model_spec

TINY = "v3d_synthetic_motion/tiny"  # 12 frames of 24x24, 64 train / 16 test videos
CLIP = dict(num_frames=6, crop_size=16, normalization=model_spec("r3d_18").normalization)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("tfds"))
    data.dataset_info(TINY, data_dir=root)  # builds it
    return root


def _batches(it, n: int) -> list[dict]:
    return [next(it) for _ in range(n)]


# --- the embedded dataset -------------------------------------------------------------------------

def test_embedded_dataset_builds_in_seconds_and_is_byte_identical_for_a_seed(tmp_path):
    t0 = time.perf_counter()
    info = data.dataset_info(TINY, data_dir=tmp_path / "a")
    assert time.perf_counter() - t0 < 30
    assert (info.num_classes, info.num_train, info.num_eval) == (8, 64, 16)
    assert info.class_names[:2] == ("right_slow", "right_fast") and info.eval_split == "test"
    assert info.hflip_label_map == (2, 3, 0, 1, 4, 5, 6, 7)
    data.dataset_info(TINY, data_dir=tmp_path / "b")
    files = lambda root: sorted(Path(root).rglob("*.tfrecord*"))  # noqa: E731
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert len(a) == 2 and [p.name for p in a] == [p.name for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    # Another seed renders other videos.
    other = synthetic.render_clip(synthetic.example_rng(1, "train", 0), 0, 12, 24)
    assert not np.array_equal(other, synthetic.render_clip(synthetic.example_rng(0, "train", 0), 0, 12, 24))


def _pair_features(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Correlation of frame a with frame b shifted by each small displacement (a motion detector)."""
    a = a - a.mean(axis=(1, 2), keepdims=True)
    b = b - b.mean(axis=(1, 2), keepdims=True)
    shifts = [(0, 0), (0, 1), (0, 2), (0, -1), (0, -2), (1, 0), (2, 0), (-1, 0), (-2, 0)]
    f = np.stack([(a * np.roll(b, s, axis=(1, 2))).mean(axis=(1, 2)) for s in shifts], axis=1)
    return f / np.linalg.norm(f, axis=1, keepdims=True)  # contrast varies from clip to clip


def _nearest_centroid_accuracy(x: np.ndarray, y: np.ndarray, classes: int) -> float:
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    half = len(x) // 2
    centroids = np.stack([x[:half][y[:half] == c].mean(0) for c in range(classes)])
    pred = np.argmin(((x[half:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    return float((pred == y[half:]).mean())


def test_single_frames_carry_no_label_information_but_frame_pairs_do():
    n, frames, size, classes = 800, 3, 24, 8
    labels = np.arange(n) % classes
    clips = np.stack([synthetic.render_clip(synthetic.example_rng(7, "train", i), int(labels[i]), frames, size)
                      for i in range(n)]).astype(np.float64)
    gray = clips.mean(-1)
    chance = 1 / classes
    # The same motion detector: on a frame and the next it reads the class; on one frame, nothing.
    assert _nearest_centroid_accuracy(_pair_features(gray[:, 0], gray[:, 1]), labels, classes) > 0.9
    assert _nearest_centroid_accuracy(_pair_features(gray[:, 1], gray[:, 1]), labels, classes) < chance + 0.1
    # A linear (ridge) classifier on the pixels of single frames stays at chance too.
    x = np.concatenate([clips[:, 1].reshape(n, -1) / 255.0, np.ones((n, 1))], axis=1)
    onehot = np.eye(classes)[labels]
    half = n // 2
    w = np.linalg.solve(x[:half].T @ x[:half] + 10.0 * np.eye(x.shape[1]), x[:half].T @ onehot[:half])
    assert float((np.argmax(x[half:] @ w, 1) == labels[half:]).mean()) < chance + 0.1
    # Per-class mean frames agree within sampling noise.
    means = np.stack([clips[labels == c, 2].mean(axis=(0, 1, 2)) for c in range(classes)])
    assert np.ptp(means, axis=0).max() < 12.0


def test_hflip_label_map_mirrors_the_velocity():
    for label, mirrored in enumerate(synthetic.hflip_label_map()):
        (dy, dx), (my, mx) = synthetic.velocity(label), synthetic.velocity(mirrored)
        assert (my, mx) == (dy, -dx)


# --- training batches --------------------------------------------------------------------------------

def test_train_batches_shapes_normalisation_and_seed(data_dir):
    kw = dict(data_dir=data_dir, global_batch_size=8, **CLIP)
    a = _batches(data.train_batches(TINY, seed=0, **kw), 3)
    b = _batches(data.train_batches(TINY, seed=0, **kw), 3)
    c = next(data.train_batches(TINY, seed=1, **kw))
    for batch in a:
        assert batch["video"].shape == (8, 6, 16, 16, 3) and batch["video"].dtype == np.float32
        assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
        mean, std = CLIP["normalization"].mean, CLIP["normalization"].std
        pixels = batch["video"] * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    for x, y in zip(a, b):
        assert np.array_equal(x["video"], y["video"]) and np.array_equal(x["label"], y["label"])
    assert not np.array_equal(a[0]["video"], c["video"])


def test_resume_at_step_k_equals_step_k_of_a_fresh_iterator(data_dir):
    kw = dict(data_dir=data_dir, global_batch_size=24, seed=5, **CLIP)
    fresh = _batches(data.train_batches(TINY, **kw), 7)  # 64 examples: crosses two epoch boundaries
    for k in (3, 5):
        resumed = _batches(data.train_batches(TINY, start_step=k, **kw), 2)
        for got, want in zip(resumed, fresh[k:k + 2]):
            assert np.array_equal(got["video"], want["video"]) and np.array_equal(got["label"], want["label"])
    bounded = list(data.train_batches(TINY, start_step=3, stop_step=6, **kw))  # a run's steps [3, 6), then the end
    assert len(bounded) == 3
    for got, want in zip(bounded, fresh[3:6]):
        assert np.array_equal(got["video"], want["video"]) and np.array_equal(got["label"], want["label"])
    with pytest.raises(ValueError, match="stop_step must be an integer >= 3"):
        data.train_batches(TINY, start_step=3, stop_step=2, **kw)


def test_processes_together_see_the_single_process_batch(data_dir):
    kw = dict(data_dir=data_dir, global_batch_size=8, seed=2, **CLIP)
    single = _batches(data.train_batches(TINY, **kw), 9)
    parts = [_batches(data.train_batches(TINY, process_index=p, process_count=2, **kw), 9) for p in range(2)]
    for k in range(9):
        assert parts[0][k]["video"].shape[0] == 4
        for key in ("video", "label"):
            assert np.array_equal(np.concatenate([parts[0][k][key], parts[1][k][key]]), single[k][key])
    with pytest.raises(ValueError, match="does not divide over 3 processes"):
        data.train_batches(TINY, process_index=0, process_count=3, **kw)


def test_each_epoch_visits_every_example_once_in_a_seeded_order():
    order = data.TrainOrder(64, 8, seed=3)
    epoch0 = np.concatenate([order.step(k)[0] for k in range(8)])
    epoch1 = np.concatenate([order.step(k)[0] for k in range(8, 16)])
    assert sorted(epoch0) == list(range(64)) and sorted(epoch1) == list(range(64))
    assert not np.array_equal(epoch0, epoch1)
    assert np.array_equal(epoch0, np.concatenate([data.TrainOrder(64, 8, seed=3).step(k)[0] for k in range(8)]))
    u = order.step(2)[1]
    assert u.shape == (8, 5) and 0 <= u.min() and u.max() < 1


def test_horizontal_flip_mirrors_the_clip_and_maps_the_label(data_dir):
    kw = dict(data_dir=data_dir, global_batch_size=16, seed=4, **CLIP)
    flipped, plain = next(data.train_batches(TINY, **kw)), next(data.train_batches(TINY, flip=False, **kw))
    mirrored = data.TrainOrder(64, 16, seed=4).step(0)[1][:, 4] < 0.5
    assert 0 < mirrored.sum() < 16
    lut = np.asarray(synthetic.hflip_label_map())
    assert np.array_equal(flipped["label"], np.where(mirrored, lut[plain["label"]], plain["label"]))
    assert np.array_equal(flipped["video"][mirrored], plain["video"][mirrored][:, :, :, ::-1])
    assert np.array_equal(flipped["video"][~mirrored], plain["video"][~mirrored])


def test_array_record_files_give_the_same_batches_as_tfrecord(data_dir, tmp_path):
    synthetic.V3dSyntheticMotion(config="tiny", data_dir=tmp_path, file_format="array_record").download_and_prepare()
    assert data.open_source(TINY, tmp_path)._file_format == "array_record"
    kw = dict(global_batch_size=8, seed=0, start_step=9, **CLIP)
    a = next(data.train_batches(TINY, data_dir=tmp_path, **kw))
    b = next(data.train_batches(TINY, data_dir=data_dir, **kw))
    assert np.array_equal(a["video"], b["video"]) and np.array_equal(a["label"], b["label"])


# --- evaluation -------------------------------------------------------------------------------------

@pytest.mark.parametrize("clips,crops,processes", [(1, 1, 1), (2, 3, 1), (2, 3, 2)])
def test_eval_views_cover_every_video_with_fixed_shapes(data_dir, clips, crops, processes):
    kw = dict(data_dir=data_dir, batch_size=10, clips=clips, crops=crops, **CLIP)
    per_process = [list(data.eval_batches(TINY, process_index=p, process_count=processes, **kw))
                   for p in range(processes)]
    assert len({len(b) for b in per_process}) == 1  # same number of batches everywhere
    rows = 10 // processes
    seen = []
    for batches in per_process:
        for batch in batches:
            assert batch["video"].shape == (rows, 6, 16, 16, 3) and batch["mask"].dtype == bool
            seen.append(batch["video_index"][batch["mask"]])
            assert np.all(batch["video_index"][~batch["mask"]] == -1)
    seen = np.concatenate(seen)
    assert np.array_equal(np.bincount(seen), np.full(16, clips * crops))
    assert np.all(np.diff(seen) >= 0)  # a video's views are consecutive


def test_centre_view_is_the_normalised_centre_of_the_stored_clip(data_dir):
    # crop 21: one-crop evaluation resizes the short side to round(21 * 8/7) = 24, the stored size.
    source = data.open_source(TINY, data_dir)
    batch = next(data.eval_batches(TINY, data_dir=data_dir, batch_size=4, num_frames=6, crop_size=21,
                                   normalization=model_spec("i3d").normalization))
    import tensorflow as tf

    video, label = source.parse(source.reader("test")[0])
    start = (12 - 6) // 2
    want = video.numpy()[start:start + 6, 2:23, 2:23].astype(np.float32) / 255.0 * 2.0 - 1.0  # i3d: [-1, 1]
    assert int(label) == batch["label"][0] and tf.is_tensor(video)
    np.testing.assert_allclose(batch["video"][0], want, atol=1e-5)


# --- normalisation and metrics ----------------------------------------------------------------------

def test_normalization_per_family():
    def mean_std(name):
        return model_spec(name).normalization.mean, model_spec(name).normalization.std

    assert mean_std("r2plus1d_18") == ((0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989))
    assert model_spec("c3d").normalization == model_spec("r3d_18").normalization
    for name in ("slowfast_r50", "x3d_m", "i3d_r50", "slow_r50", "c2d_r50", "csn_r101", "r2plus1d_r50"):
        assert mean_std(name) == ((0.45,) * 3, (0.225,) * 3), name
    assert mean_std("i3d") == ((0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        model_spec("resnet50")


def test_video_level_accuracy_averages_the_views_of_each_video():
    # Video 0 (label 0): views 1 right, 1 wrong but the average favours class 0. Video 1 (label 2): both wrong.
    logits = np.log(np.array([[0.9, 0.05, 0.05], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3],
                              [0.0, 0.0, 1.0]]) + 1e-12)
    labels = np.array([0, 0, 2, 2, 1])
    videos = np.array([0, 0, 1, 1, 7])
    mask = np.array([True, True, True, True, False])
    m = data.video_metrics(logits, labels, videos, mask)
    assert m["clip_top1"] == 0.25 and m["video_top1"] == 0.5
    assert m["clip_top5"] == 1.0 and (m["num_clips"], m["num_videos"]) == (4, 2)
    acc = data.VideoMetrics()
    acc.update(logits[:2], labels[:2], videos[:2])
    acc.update(logits[2:], labels[2:], videos[2:], mask[2:])
    assert acc.result() == m
    with pytest.raises(ValueError, match="different labels"):
        data.video_metrics(logits[:2], np.array([0, 1]), np.array([3, 3]))


# --- real and generic tfds datasets ------------------------------------------------------------------

def test_ucf101_not_prepared_says_how_to_prepare_it(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(data.DatasetNotPreparedError) as err:
        data.dataset_info("ucf101", data_dir=tmp_path)
    message = str(err.value)
    assert "python -m v3d_flax.data prepare ucf101 --data-dir DIR" in message
    assert "tfds build ucf101 --data_dir DIR" in message and str(tmp_path) in message and "--data-dir" in message
    with pytest.raises(data.DatasetNotPreparedError):
        data.train_batches("ucf101", data_dir=tmp_path, global_batch_size=2, seed=0, **CLIP)
    assert time.perf_counter() - t0 < 20
    assert not any(tmp_path.iterdir())  # nothing was downloaded or written
    with pytest.raises(ValueError, match="unknown tfds dataset 'no_such_video_dataset'"):
        data.dataset_info("no_such_video_dataset", data_dir=tmp_path)


class V3dTestVideos(tfds.core.GeneratorBasedBuilder):
    """A generic tfds video dataset: PNG-encoded `Video` frames of varying length, 3 classes, a validation split.

    Frame t of every video is one flat grey level, 20 t + 5 label, so a clip's frames say which ones were read.
    """

    VERSION = tfds.core.Version("0.1.0")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return epath.Path(__file__)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "clip": tfds.features.Video(shape=(None, 20, 28, 3), encoding_format="png"),
            "action": tfds.features.ClassLabel(names=["wave", "jump", "run"]), "fps": np.int32}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(9), "validation": self._generate_examples(4)}

    def _generate_examples(self, count):
        for i in range(count):
            label, length = i % 3, 8 + i % 3
            frames = np.broadcast_to((20 * np.arange(length) + 5 * label).astype(np.uint8)[:, None, None, None],
                                     (length, 20, 28, 3))
            yield i, {"clip": np.ascontiguousarray(frames), "action": label, "fps": 25}


class V3dTestImages(V3dTestVideos):
    """No video feature: refused with a message naming the features it has."""

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)), "label": tfds.features.ClassLabel(num_classes=2)}))

    def _generate_examples(self, count):
        for i in range(count):
            yield i, {"image": np.zeros((8, 8, 3), np.uint8), "label": i % 2}


def test_any_tfds_video_dataset_with_a_class_label_works(tmp_path):
    V3dTestVideos(data_dir=tmp_path).download_and_prepare()
    info = data.dataset_info("v3d_test_videos", data_dir=tmp_path)
    assert (info.num_classes, info.num_train, info.num_eval, info.eval_split) == (3, 9, 4, "validation")
    assert (info.video_key, info.label_key, info.hflip_label_map) == ("clip", "action", None)
    batch = next(data.train_batches("v3d_test_videos", data_dir=tmp_path, global_batch_size=4, num_frames=4,
                                    crop_size=16, normalization=model_spec("i3d").normalization, seed=0))
    assert batch["video"].shape == (4, 4, 16, 16, 3)
    # Every clip is 4 consecutive frames of its video: grey levels 20 t + 5 label for t = start .. start + 3.
    levels = np.round((batch["video"][:, :, 8, 8, 0] + 1) / 2 * 255)
    starts = (levels[:, 0] - 5 * batch["label"]) / 20
    assert np.array_equal(levels, 20 * (starts[:, None] + np.arange(4)) + 5 * batch["label"][:, None])
    # Evaluation: 2 uniformly spaced clips per video; a clip longer than a video repeats its last frame.
    views = list(data.eval_batches("v3d_test_videos", data_dir=tmp_path, batch_size=8, num_frames=10,
                                   crop_size=16, normalization=model_spec("i3d").normalization, clips=2))
    first = np.round((views[0]["video"][0, :, 8, 8, 0] + 1) / 2 * 255)  # video 0: 8 frames, label 0
    assert np.array_equal(first, np.minimum(np.arange(10), 7) * 20)
    short = list(data.eval_batches("v3d_test_videos", data_dir=tmp_path, batch_size=2, num_frames=4, crop_size=16,
                                   normalization=model_spec("i3d").normalization, clips=2))
    clip0, clip1 = (np.round((short[0]["video"][j, :, 8, 8, 0] + 1) / 2 * 255) / 20 for j in (0, 1))
    assert clip0[0] == 1 and clip1[0] == 3  # free range 0..4 of an 8-frame video: starts at 1/4 and 3/4

    V3dTestImages(data_dir=tmp_path).download_and_prepare()
    with pytest.raises(ValueError, match=r"needs a video feature .* it has: image: Image"):
        data.dataset_info("v3d_test_images", data_dir=tmp_path)


def test_concurrent_processes_build_the_embedded_dataset_once(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from v3d_flax import data; "
            f"i = data.dataset_info({TINY!r}, data_dir=sys.argv[1]); print(i.num_train, i.num_eval)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert [out.split() for out, _ in outs] == [["64", "16"], ["64", "16"]]
    assert len(list(tmp_path.rglob("*.tfrecord*"))) == 2 and not list(tmp_path.rglob("*incomplete*"))


def test_data_cli_describes_a_prepared_dataset_and_explains_a_missing_one(data_dir, tmp_path, capsys):
    from v3d_flax.data.__main__ import main

    assert main(["info", TINY, "--data-dir", data_dir]) == 0
    assert "8 classes, 64 training videos (train), 16 evaluation videos (test)" in capsys.readouterr().out
    assert main(["info", "ucf101", "--data-dir", str(tmp_path)]) == 1
    assert "python -m v3d_flax.data prepare ucf101 --data-dir DIR" in capsys.readouterr().err


def test_tensorflow_is_kept_off_the_gpus_when_a_source_is_opened_not_at_import(data_dir):
    import subprocess
    import sys

    code = ("import sys, tensorflow as tf; calls = []; "
            "tf.config.set_visible_devices = lambda devices, kind=None: calls.append((list(devices), kind)); "
            "from v3d_flax.data import pipeline, sources; print(calls); "
            "sources.open_source(sys.argv[1], data_dir=sys.argv[2]); sources.dataset_info(sys.argv[1], sys.argv[2]); "
            "print(calls)")
    done = subprocess.run([sys.executable, "-c", code, TINY, data_dir], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["[]", "[([], 'GPU')]"]
