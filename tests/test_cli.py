"""predict / features CLIs and the video pipeline, on small videos the tests encode with PyAV."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from v3d_flax import features as features_cli
from v3d_flax import predict as predict_cli
from v3d_flax.video import (Recipe, VideoError, clip_indices, crop_offsets, decode_frames, find_videos,
                            load_views, preprocess, probe, resized_size)
from v3d_flax.registry import model_spec
from v3d_torch_ref.registry import create_model as create_torch_model
from videos import encode

H, W = 48, 64
# Small clips keep the CPU forward passes cheap; r3d_18 pools globally, so any clip size works.
TINY = ["--frames", "4", "--rate", "2", "--resize", "32", "--crop", "32", "--clips", "2", "--crops", "1"]


def synthetic_frames(n: int, h: int = H, w: int = W) -> np.ndarray:
    """Frames whose content identifies their index: brightness ramps with time, a bar moves."""
    t = np.arange(n)[:, None, None]
    frames = np.zeros((n, h, w, 3), np.uint8)
    frames[..., 0] = (t * 5 + 20) % 256
    frames[..., 1] = np.linspace(0, 255, w, dtype=np.uint8)[None, None, :]
    frames[..., 2] = np.linspace(0, 255, h, dtype=np.uint8)[None, :, None]
    for i in range(n):
        x = (i * 3) % (w - 8)
        frames[i, :, x:x + 8, :] = 255
    return frames


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """{"mp4", "avi", "webm": 40-frame videos, "short": 6 frames, "corrupt": truncated mp4, "text": not a video}."""
    d = tmp_path_factory.mktemp("videos")
    frames = synthetic_frames(40)
    out = {"mp4": encode(d / "clip.mp4", "libx264", frames), "avi": encode(d / "clip.avi", "mpeg4", frames),
           "webm": encode(d / "clip.webm", "libvpx", frames), "short": encode(d / "short.mp4", "libx264", frames[:6])}
    data = open(out["mp4"], "rb").read()
    (d / "corrupt.mp4").write_bytes(data[: len(data) // 2])
    garbled = bytearray(data)  # opens (the index is intact) but the frame data is noise
    garbled[1000:2500] = np.random.default_rng(0).integers(0, 256, 1500, dtype=np.uint8).tobytes()
    (d / "garbled.mp4").write_bytes(bytes(garbled))
    out["garbled"] = str(d / "garbled.mp4")
    (d / "notes.avi").write_text("this is not a video\n")
    out["corrupt"], out["text"] = str(d / "corrupt.mp4"), str(d / "notes.avi")
    out["frames"] = frames
    return out


@pytest.fixture(scope="module")
def r3d_weights(tmp_path_factory):
    """A v3d_torch_ref r3d_18 with a 101-class head (UCF101 names) and non-trivial BN statistics, saved as .pth."""
    torch.manual_seed(0)
    model = create_torch_model("r3d_18", num_classes=101)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "r3d_18_ucf.pth"
    torch.save(model.state_dict(), path)
    return str(path), model.state_dict()


def api_model(weights, name, recipe):
    """The Python API's path: load the checkpoint into the model (bit-exactness of that is tested in
    test_cli_convert.py), in eval mode."""
    from v3d_flax.checkpoints import load_model

    return load_model(name, weights, recipe=recipe)


@nnx.jit
def api_probs(model, views):
    return jax.nn.softmax(model(views), axis=-1)


@nnx.jit(static_argnames="layer")
def api_features(model, views, layer=None):
    return model.forward_features(views, **({"layer": layer} if layer else {}))


# ------------------------------------------------------------------------------------------------ video

@pytest.mark.parametrize("kind", ["mp4", "avi", "webm"])
def test_decode_returns_the_requested_frames(videos, kind):
    info = probe(videos[kind])
    assert (info.num_frames, info.height, info.width) == (40, H, W) and info.fps == pytest.approx(30)
    wanted = [0, 7, 7, 39, 20]
    got = decode_frames(videos[kind], wanted).astype(np.float32)
    assert got.shape == (5, H, W, 3)
    ref = videos["frames"].astype(np.float32)
    errors = np.abs(got[:, None] - ref[None]).mean(axis=(2, 3, 4))  # (requested, all source frames)
    assert errors.argmin(axis=1).tolist() == wanted
    assert errors.min(axis=1).max() < 6.0  # lossy codecs, but close to the source frame


def test_clip_indices_spread_and_resample():
    r = Recipe(frames=16, rate=1, resize=128, crop=112, fps=15.0)
    idx = clip_indices(40, 30.0, r, 2)  # 30 -> 15 fps: stride 2, span 31, slack 9
    assert idx.tolist() == [list(range(2, 33, 2)), list(range(6, 37, 2))]
    assert clip_indices(31, 30.0, r, 1).tolist() == [list(range(0, 31, 2))]
    with pytest.raises(ValueError, match="has 30 frames.*needs 31"):
        clip_indices(30, 30.0, r, 1)
    x3d = model_spec("x3d_xs").recipe
    assert clip_indices(100, 30.0, x3d, 1).tolist() == [[31, 43, 55, 67]]  # span 37, slack 63, centred


def test_resize_and_crop_geometry():
    assert resized_size(240, 320, 128) == (128, 171)
    assert resized_size(320, 240, 256) == (341, 256)
    assert resized_size(240, 320, (128, 171)) == (128, 171)
    assert crop_offsets(128, 171, 112, 1) == [(8, 29)]
    assert crop_offsets(256, 341, 256, 3) == [(0, 0), (0, 42), (0, 85)]
    assert crop_offsets(341, 256, 256, 3) == [(0, 0), (42, 0), (85, 0)]
    with pytest.raises(ValueError, match="larger than"):
        crop_offsets(100, 120, 112, 1)


def test_preprocess_matches_torch_bilinear_and_normalisation():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    mean, std = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)
    ours = preprocess(frames, Recipe(frames=3, rate=1, resize=32, crop=32), mean, std)
    t = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    t = torch.nn.functional.interpolate(t, size=(32, 43), mode="bilinear", align_corners=False)
    t = (t - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    np.testing.assert_allclose(ours, t.permute(0, 2, 3, 1).numpy(), atol=2e-5)


def test_load_views_shapes_and_pathways(videos):
    r3d, slowfast = model_spec("r3d_18"), model_spec("slowfast_r50")
    views = load_views(videos["mp4"], r3d.recipe.with_overrides(frames=8, resize=40, crop=32), r3d.normalization,
                       clips=2, crops=3)
    assert views.shape == (6, 8, 32, 32, 3) and views.dtype == np.float32
    slow, fast = load_views(videos["avi"], slowfast.recipe.with_overrides(frames=16, rate=2, resize=32, crop=32),
                            slowfast.normalization, clips=1, crops=1)
    assert fast.shape == (1, 16, 32, 32, 3) and slow.shape == (1, 4, 32, 32, 3)
    np.testing.assert_array_equal(slow, fast[:, [0, 5, 10, 15]])  # linspace(0, 15, 4) truncated


@pytest.mark.parametrize("kind, message", [("short", "too short: the video has 6 frames"),
                                           ("corrupt", "not a readable video"), ("text", "not a readable video"),
                                           ("garbled", "corrupt video, decoding failed")])
def test_bad_files_raise_video_error_naming_the_file(videos, kind, message):
    with pytest.raises(VideoError, match=message) as e:
        spec = model_spec("r3d_18")
        load_views(videos[kind], spec.recipe.with_overrides(frames=8, resize=32, crop=32), spec.normalization, clips=1)
    assert str(e.value).startswith(videos[kind])
    with pytest.raises(VideoError, match="no such file"):
        probe(videos[kind] + ".missing")


def test_find_videos_expands_directories(videos, tmp_path):
    d = os.path.dirname(videos["mp4"])
    found = find_videos([d, videos["text"]])
    assert [os.path.basename(f) for f in found] == ["clip.avi", "clip.mp4", "clip.webm", "corrupt.mp4", "garbled.mp4",
                                                    "notes.avi", "short.mp4", "notes.avi"]


# ------------------------------------------------------------------------------------------------ predict

def test_class_name_lists():
    k400 = predict_cli.load_class_names("kinetics400", 400)
    assert (k400[0], k400[-1], len(set(k400))) == ("abseiling", "zumba", 400) and k400 == sorted(k400)
    ucf = predict_cli.load_class_names(None, 101)
    assert (ucf[0], ucf[34], ucf[35], ucf[-1]) == ("ApplyEyeMakeup", "Hammering", "HammerThrow", "YoYo")
    assert predict_cli.load_class_names(None, 3) == ["class_0", "class_1", "class_2"]
    with pytest.raises(ValueError, match="has 400 class names but the model has 101"):
        predict_cli.load_class_names("kinetics400", 101)


def test_predict_cli_equals_api_and_reports_bad_files(videos, r3d_weights, capsys):
    path = r3d_weights[0]
    files = [videos["mp4"], videos["corrupt"], videos["avi"], videos["text"], videos["webm"], videos["short"]]
    with jax.default_matmul_precision("float32"):
        rc = predict_cli.main(["--model", "r3d_18", "--weights", path, *TINY, "--top-k", "3", "--json", *files])
        out, err = capsys.readouterr()
        assert rc == 1
        report = json.loads(out)
        assert [r["file"] for r in report["results"]] == [videos["mp4"], videos["avi"], videos["webm"]]
        assert [e["file"] for e in report["errors"]] == [videos["corrupt"], videos["text"], videos["short"]]
        for name in ("corrupt.mp4", "notes.avi", "short.mp4"):
            assert name in err
        ucf = predict_cli.load_class_names("ucf101", 101)
        recipe = model_spec("r3d_18").recipe.with_overrides(frames=4, rate=2, resize=32, crop=32)
        model = api_model(path, "r3d_18", recipe)
        for result in report["results"]:
            views = load_views(result["file"], recipe, model_spec("r3d_18").normalization, clips=2, crops=1)
            probs = np.asarray(api_probs(model, jnp.asarray(views))).mean(axis=0)
            expected = np.argsort(-probs, kind="stable")[:3]
            assert [e["index"] for e in result["top_k"]] == expected.tolist()
            assert [e["label"] for e in result["top_k"]] == [ucf[i] for i in expected]
            np.testing.assert_allclose([e["probability"] for e in result["top_k"]], probs[expected], rtol=1e-5)


def test_predict_cli_text_output_all_ok(videos, r3d_weights, capsys):
    rc = predict_cli.main(["--model", "r3d_18", "--weights", r3d_weights[0], *TINY, "--top-k", "2",
                           videos["mp4"], videos["webm"]])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[0] == videos["mp4"] and out[3] == videos["webm"]
    assert out[1].startswith("  1. 0.") and out[2].startswith("  2. 0.")
    p1, p2 = float(out[1].split()[1]), float(out[2].split()[1])
    assert 1 >= p1 >= p2 > 0


def test_predict_names_the_classes_a_training_run_recorded(videos, tmp_path, capsys):
    from v3d_flax import create_model
    from v3d_flax.checkpoints import save_checkpoint

    names = [f"motion {i}" for i in range(8)]
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(create_model("r3d_18", num_classes=8, rngs=nnx.Rngs(0)), str(run / "weights"))
    (run / "run.json").write_text(json.dumps({"model": "r3d_18", "num_classes": 8, "class_names": names}))
    rc = predict_cli.main(["--model", "r3d_18", "--weights", str(run / "weights"), *TINY, "--top-k", "8", "--json",
                           "--no-progress", videos["mp4"]])
    assert rc == 0
    assert sorted(e["label"] for e in json.loads(capsys.readouterr().out)["results"][0]["top_k"]) == names


def test_predict_cli_checkpoint_errors(videos, r3d_weights, tmp_path, capsys):
    assert predict_cli.main(["--model", "mc3_18", "--weights", r3d_weights[0], *TINY, videos["mp4"]]) == 1
    assert "looks like r3d_18, not mc3_18" in capsys.readouterr().err  # same key names, other shapes
    assert predict_cli.main(["--model", "r3d_18", "--weights", str(tmp_path / "none.pth"), videos["mp4"]]) == 1
    assert "no checkpoint" in capsys.readouterr().err


def test_python_dash_m_usage_error_exits_2():
    proc = subprocess.run([sys.executable, "-m", "v3d_flax.predict", "--model", "no_such_model", "--weights", "x",
                           "v.mp4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown model 'no_such_model'" in proc.stderr


def test_another_models_checkpoint_is_named_before_the_head_size_is_asked(videos, r3d_weights, capsys):
    """An r3d_18 file given as x3d_xs: one short line naming r3d_18, not 'pass --num-classes' or 563 keys."""
    assert predict_cli.main(["--model", "x3d_xs", "--weights", r3d_weights[0], videos["mp4"]]) == 1
    err = capsys.readouterr().err
    assert len(err) < 2000 and err.count("\n") == 1, err
    assert "looks like r3d_18, not x3d_xs" in err and "--model r3d_18" in err and "--num-classes" not in err
    assert predict_cli.main(["--model", "x3d_xs", "--num-classes", "101", "--weights", r3d_weights[0],
                             videos["mp4"]]) == 1
    err = capsys.readouterr().err
    assert len(err) < 2000 and "looks like r3d_18" in err


def test_predict_takes_a_directory_and_reports_progress_on_stderr(videos, r3d_weights, tmp_path, capsys):
    d = tmp_path / "clips"
    (d / "sub").mkdir(parents=True)
    shutil.copy(videos["mp4"], d / "a.mp4")
    shutil.copy(videos["webm"], d / "sub" / "b.webm")
    (d / "notes.txt").write_text("not a video\n")
    assert predict_cli.main(["--model", "r3d_18", "--weights", r3d_weights[0], *TINY, "--json", str(d)]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)  # progress never reaches stdout
    assert [r["file"] for r in report["results"]] == [str(d / "a.mp4"), str(d / "sub" / "b.webm")]
    assert "predict: 1/2 videos" in err and "predict: 2/2 videos" in err
    (tmp_path / "empty").mkdir()
    assert predict_cli.main(["--model", "r3d_18", "--weights", r3d_weights[0], str(tmp_path / "empty")]) == 1
    assert "no video files found" in capsys.readouterr().err


def test_predict_checks_its_inputs_before_loading_the_model(r3d_weights, videos, monkeypatch, capsys):
    from v3d_flax import checkpoints

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(checkpoints, "load_model", fail)
    with pytest.raises(SystemExit) as e:
        predict_cli.main(["--model", "r3d_18", "--weights", r3d_weights[0], videos["mp4"], "missing.mp4"])
    assert e.value.code == 2 and "no such file or directory: missing.mp4" in capsys.readouterr().err


def test_progress_is_quiet_for_one_item_and_plain_off_a_terminal():
    from v3d_flax.cli import Progress

    one = io.StringIO()
    with Progress(1, "predict", stream=one) as p:
        p.update()
    assert one.getvalue() == ""
    many = io.StringIO()
    with Progress(20, "predict", stream=many) as p:
        for i in range(20):
            p.update(failed=i == 1)
    lines = many.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in many.getvalue()  # a line per tenth, no bar redraws
    assert lines[0].startswith("predict: 2/20 videos, 1 failed, ") and lines[-1].startswith("predict: 20/20 videos")
    off = io.StringIO()
    with Progress(20, "predict", stream=off, enabled=False) as p:
        p.update()
    assert off.getvalue() == ""


# ------------------------------------------------------------------------------------------------ features

def test_features_cli_writes_index_and_equals_api(videos, r3d_weights, tmp_path, capsys):
    out = tmp_path / "feats.npz"
    d = os.path.dirname(videos["mp4"])
    with jax.default_matmul_precision("float32"):
        rc = features_cli.main(["--model", "r3d_18", "--weights", r3d_weights[0], *TINY, "--no-progress",
                                "--out", str(out), d])
        assert rc == 1  # the directory holds a truncated, a garbled, a non-video and a too-short file
        data = np.load(out)
        assert data["files"].tolist() == [videos["avi"], videos["mp4"], videos["webm"]]
        assert sorted(data["failed"].tolist()) == sorted([videos["corrupt"], videos["garbled"], videos["text"],
                                                          videos["short"]])
        assert data["features"].shape == (3, 512) and str(data["model"]) == "r3d_18"
        recipe = model_spec("r3d_18").recipe.with_overrides(frames=4, rate=2, resize=32, crop=32)
        model = api_model(r3d_weights[0], "r3d_18", recipe)
        for row, f in zip(data["features"], data["files"]):
            views = load_views(str(f), recipe, model_spec("r3d_18").normalization, clips=2)
            expected = np.asarray(api_features(model, jnp.asarray(views)))
            np.testing.assert_allclose(row, expected.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert "corrupt.mp4" in capsys.readouterr().err
    before = out.read_bytes()
    assert features_cli.main(["--model", "r3d_18", "--weights", r3d_weights[0], "--out", str(out), d]) == 1
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before


def test_features_cli_c3d_fc6(videos, tmp_path):
    torch.manual_seed(0)
    ref = create_torch_model("c3d", num_classes=5, num_frames=16, crop_size=32)
    weights = tmp_path / "c3d.pth"
    torch.save(ref.state_dict(), weights)
    out = tmp_path / "c3d.npz"
    args = ["--model", "c3d", "--weights", str(weights), "--resize", "40", "--crop", "32", "--clips", "1",
            "--no-progress", "--out", str(out), videos["mp4"]]
    with jax.default_matmul_precision("float32"):
        assert features_cli.main([*args, "--layer", "fc6"]) == 0
        data = np.load(out)
        assert data["features"].shape == (1, 4096) and str(data["layer"]) == "fc6"
        recipe = model_spec("c3d").recipe.with_overrides(resize=40, crop=32)
        model = api_model(str(weights), "c3d", recipe)
        views = load_views(videos["mp4"], recipe, model_spec("c3d").normalization, clips=1)
        np.testing.assert_allclose(data["features"][0], np.asarray(api_features(model, jnp.asarray(views), "fc6"))[0],
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(SystemExit) as e:
        features_cli.main(["--model", "r3d_18", "--weights", str(weights), "--layer", "fc6", "--out", "x.npz", "v"])
    assert e.value.code == 2
