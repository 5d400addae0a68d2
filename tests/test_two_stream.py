"""Flow as a modality and two-stream fusion: train.py --modality flow / two-stream, predict --two-stream."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from trainrun import TINY, metrics, train
from v3d_flax import create_model, flow, predict, two_stream
from v3d_flax.registry import model_spec
from v3d_flax.train.steps import scores_and_loss
from v3d_flax.video import load_views
from videos import encode

SMALL_RECIPE = ["--frames", "4", "--rate", "2", "--resize", "32", "--crop", "32", "--clips", "2"]


def moving_bar(n: int = 24, size: int = 40) -> np.ndarray:
    """Frames of a textured background with a bright bar moving right by 2 pixels a frame."""
    rng = np.random.default_rng(0)
    background = rng.integers(40, 120, (size, size + 2 * n, 3), dtype=np.uint8)
    frames = np.stack([background[:, 2 * n - 2 * t: 2 * n - 2 * t + size] for t in range(n)])
    for t in range(n):
        frames[t, :, 4 + t: 10 + t] = 230
    return frames


def test_fusion_rules_and_the_two_stream_loss():
    a, b = jnp.asarray([[2.0, 0.0, -1.0]]), jnp.asarray([[0.0, 1.0, 0.5]])
    np.testing.assert_allclose(two_stream.fuse(a, b, "logits"), a + b)
    np.testing.assert_allclose(jax.nn.softmax(two_stream.fuse(a, b, "softmax")),
                               (jax.nn.softmax(a) + jax.nn.softmax(b)) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="fusion must be one of logits, softmax"):
        two_stream.fuse(a, b, "max")
    targets = jax.nn.one_hot(jnp.asarray([1]), 3)
    scores, loss = scores_and_loss({"rgb": a, "flow": b, "fused": a + b}, targets)
    np.testing.assert_allclose(scores, a + b)  # scored fused, each stream trained on its own loss
    expected = optax.softmax_cross_entropy(a, targets).mean() + optax.softmax_cross_entropy(b, targets).mean()
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert two_stream.clip_frames("flow", 16) == two_stream.clip_frames("two-stream", 16) == 17
    with pytest.raises(ValueError, match="modality must be one of rgb, flow, two-stream"):
        two_stream.clip_frames("depth", 16)


def test_predict_two_stream_is_the_streams_fused(tmp_path, capsys):
    from v3d_flax.checkpoints import save_checkpoint

    video = encode(tmp_path / "bar.mp4", "mpeg4", moving_bar())
    rgb_model = create_model("r3d_18", num_classes=5, rngs=nnx.Rngs(0))
    flow_model = create_model("r3d_18", num_classes=5, rngs=nnx.Rngs(1), in_channels=2)
    save_checkpoint(rgb_model, str(tmp_path / "rgb.safetensors"))
    save_checkpoint(flow_model, str(tmp_path / "flow.safetensors"))
    rc = predict.main(["--model", "r3d_18", "--weights", str(tmp_path / "rgb.safetensors"), "--two-stream",
                       "--flow-weights", str(tmp_path / "flow.safetensors"), *SMALL_RECIPE, "--json", "--no-progress",
                       video])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fusion"] == "logits" and report["views"] == 2
    # by hand: 5 frames per view as decoded, the RGB network on the first 4 normalised, the flow one on TV-L1
    recipe = model_spec("r3d_18").recipe.with_overrides(frames=5, rate=2, resize=32, crop=32)
    views = load_views(video, recipe, two_stream.RAW, clips=2, crops=1)
    norm = model_spec("r3d_18").normalization
    rgb_model.eval(), flow_model.eval()
    with jax.default_matmul_precision("float32"):
        rgb = rgb_model(jnp.asarray((views[:, :-1] - np.asarray(norm.mean)) / np.asarray(norm.std), jnp.float32))
        flows = flow.i3d_flow_input(flow.optical_flow(jnp.asarray(views)))
        probs = np.asarray(jax.nn.softmax(rgb + flow_model(flows))).mean(axis=0)
    top = report["results"][0]["top_k"]
    assert [e["index"] for e in top] == np.argsort(-probs, kind="stable").tolist()
    np.testing.assert_allclose([e["probability"] for e in top], np.sort(probs)[::-1], rtol=1e-4)


def test_flow_stream_learns_motion_and_predicts_from_its_workdir(tmp_path, capsys):
    workdir = tmp_path / "flow"
    run = train([*TINY, "--modality", "flow", "--steps", "80", "--log-every", "20", "--workdir", str(workdir)])
    assert run.returncode == 0, run.stderr[-2000:]
    final = [r for r in metrics(workdir) if r["split"] == "eval"][-1]
    assert final["top1"] >= 0.75, final  # chance is 1/8: single frames carry no class information
    assert json.loads((workdir / "run.json").read_text())["model_kwargs"] == {"in_channels": 2}
    from v3d_flax.train.init_from import architecture_of

    assert architecture_of("r3d_18", str(workdir), "flow") == {"in_channels": 2}  # fine-tunes as flow only
    with pytest.raises(ValueError, match="that run trained with --modality flow; this run's --modality is rgb"):
        architecture_of("r3d_18", str(workdir), "rgb")
    video = encode(tmp_path / "bar.mp4", "mpeg4", moving_bar())
    rc = predict.main(["--model", "r3d_18", "--weights", str(workdir), "--frames", "4", "--resize", "18",
                       "--crop", "16", "--json", "--no-progress", video])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["top_k"][0]["label"].startswith("right")


def test_two_stream_trains_both_streams_and_reports_each(tmp_path, capsys):
    workdir = tmp_path / "both"
    run = train([*TINY, "--modality", "two-stream", "--fusion", "softmax", "--steps", "2", "--workdir", str(workdir)])
    assert run.returncode == 0, run.stderr[-2000:]
    final = [r for r in metrics(workdir) if r["split"] == "eval"][-1]
    assert {"top1", "video_top1", "rgb_top1", "flow_top1", "rgb_video_top1", "flow_video_top1"} <= set(final)
    assert "fused; rgb top1" in run.stdout
    video = encode(tmp_path / "bar.mp4", "mpeg4", moving_bar())
    rc = predict.main(["--model", "r3d_18", "--weights", str(workdir), "--frames", "4", "--resize", "18",
                       "--crop", "16", "--json", "--no-progress", video])  # both networks, fused as trained
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["fusion"] == "softmax" and report["flow_weights"] == str(workdir)
    again = train([*TINY, "--modality", "rgb", "--steps", "3", "--workdir", str(workdir)])
    assert again.returncode != 0 and "--modality two-stream (now rgb)" in again.stderr


def test_modality_flags_are_checked_before_any_work(tmp_path):
    from v3d_flax.train.config import TrainConfig, resolve

    with pytest.raises(ValueError, match="--init-from with --modality two-stream is not supported"):
        resolve(TrainConfig(model="r3d_18", modality="two-stream", init_from="kinetics400"))
    with pytest.raises(ValueError, match="--compile-only projects RGB training only"):
        resolve(TrainConfig(model="r3d_18", modality="flow", compile_only=True, tpu_topology="v5e:2x2"))
    run = train([*TINY, "--modality", "depth", "--workdir", str(tmp_path / "x")])
    assert run.returncode == 2 and "--modality" in run.stderr


def test_sharded_flow_stays_on_each_device(tmp_path):
    """Under the batch-sharded jit each device runs its own clips' TV-L1 loops: no collective per iteration."""
    import subprocess
    import sys

    from trainrun import REPO, env

    script = """
import re, jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from v3d_flax import two_stream
mesh = Mesh(np.array(jax.devices()), ("data",))
sharded = NamedSharding(mesh, P("data"))
clips = np.random.default_rng(0).random((4, 3, 16, 16, 3)).astype(np.float32)
step = jax.jit(lambda c: two_stream.flow_input(c, mesh=mesh), out_shardings=sharded)
hlo = step.lower(jax.ShapeDtypeStruct(clips.shape, jnp.float32, sharding=sharded)).compile().as_text()
assert not re.search(r"all-reduce\\(|all-gather\\(", hlo), "a collective in the sharded flow"
np.testing.assert_array_equal(step(jax.device_put(clips, sharded)), two_stream.flow_input(jnp.asarray(clips)))
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", script], env=env(devices=2), cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_flow_frames_resize_and_mirror_as_flow():
    """Precomputed flow goes through the frame transforms as flow: vectors scale with the resize,
    mirroring negates x, and the normalisation gives I3D's f / 20."""
    import tensorflow as tf

    from v3d_flax.data import transforms

    flow_px = np.zeros((3, 20, 30, 2), np.float32)
    flow_px[..., 0], flow_px[..., 1] = 3.0, -2.0
    video = tf.constant(flow.quantize_flow(flow_px))
    norm = two_stream.FLOW_DATASET

    u = tf.constant([0.0, 0.99, 0.5, 0.5, 0.1])  # largest scale, mirrored
    clip, mirrored = transforms.train_clip(video, False, u, num_frames=3, crop_size=16, frame_stride=1, flip=True,
                                           flow=True)
    assert bool(mirrored) and clip.shape == (3, 16, 16, 2)
    short = round(transforms.TRAIN_SCALE[0] * 16 + 0.99 * (transforms.TRAIN_SCALE[1] - transforms.TRAIN_SCALE[0]) * 16)
    scale = short / 20
    got = np.asarray(transforms.normalize(clip, norm.mean, norm.std)) * flow.I3D_FLOW_BOUND
    np.testing.assert_allclose(got[..., 0], -3.0 * scale, atol=0.2)  # mirrored: x negated, then scaled
    np.testing.assert_allclose(got[..., 1], -2.0 * scale, atol=0.2)
    views = transforms.eval_views(video, False, 0, clips=1, crops=1, num_frames=3, crop_size=16, frame_stride=1,
                                  flow=True)
    got = np.asarray(transforms.normalize(views, norm.mean, norm.std)) * flow.I3D_FLOW_BOUND
    np.testing.assert_allclose(got[..., 0], 3.0 * round(transforms.EVAL_SCALE * 16) / 20, atol=0.2)


def test_precomputed_flow_dataset_trains_the_flow_stream(tmp_path):
    import subprocess
    import sys

    from trainrun import REPO
    from trainrun import env as train_env

    data_dir = str(tmp_path / "data")
    made = subprocess.run([sys.executable, "-m", "v3d_flax.data", "flow", "v3d_synthetic_motion/tiny", "tiny_flow",
                           "--data-dir", data_dir], env=train_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert made.returncode == 0, made.stderr[-2000:]
    assert "tiny_flow: 8 classes, 64 training videos" in made.stdout
    from v3d_flax.data import dataset_info

    info = dataset_info("tiny_flow", data_dir)
    assert info.modality == "flow" and info.hflip_label_map == dataset_info("v3d_synthetic_motion/tiny",
                                                                            data_dir).hflip_label_map
    args = [arg for arg in TINY if arg != "v3d_synthetic_motion/tiny" and arg != "--dataset"]
    run = train([*args, "--dataset", "tiny_flow", "--data-dir", data_dir, "--modality", "flow", "--steps", "2",
                 "--workdir", str(tmp_path / "run")])
    assert run.returncode == 0, run.stderr[-2000:]
    rgb = train([*args, "--dataset", "tiny_flow", "--data-dir", data_dir, "--steps", "2", "--workdir",
                 str(tmp_path / "rgb")])
    assert rgb.returncode != 0 and "holds precomputed flow" in rgb.stderr
    again = subprocess.run([sys.executable, "-m", "v3d_flax.data", "flow", "v3d_synthetic_motion/tiny", "tiny_flow",
                            "--data-dir", data_dir], env=train_env(), cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 1 and "already exists" in again.stderr
