"""Pretrained weights by name everywhere a checkpoint is taken: predict, convert and train.py's
--init-from (fine-tuning a Kinetics model on the embedded dataset), served from 127.0.0.1."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import trainrun
from videos import encode
from weights_server import WeightsServer

import v3d_torch_ref
from v3d_flax import convert, hub
from v3d_flax import predict as predict_cli
from v3d_flax.checkpoints import flax_state, load_model
from v3d_flax.predict import load_class_names

X3D_PATH = "/pytorchvideo/model_zoo/kinetics/X3D_XS.pyth"  # the record's URL path, served under the mirror


@pytest.fixture(scope="module")
def pyth() -> bytes:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save({"model_state": v3d_torch_ref.create_model("x3d_xs", num_classes=400).state_dict()}, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(pyth):
    s = WeightsServer()
    s.files[X3D_PATH] = pyth
    yield s
    s.stop()


@pytest.fixture
def weights_env(server, tmp_path, monkeypatch):
    """V3D_HOME in a fresh folder and the mirror at the local server, as a cluster without internet sets them."""
    env = {hub.HOME_ENV: str(tmp_path / "v3d_home"), hub.MIRROR_ENV: server.root}
    monkeypatch.delenv(hub.OFFLINE_ENV, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_predict_takes_a_weights_name_with_its_class_names(weights_env, tmp_path, capsys):
    frames = np.random.RandomState(0).randint(0, 255, (40, 48, 64, 3)).astype(np.uint8)
    video = encode(tmp_path / "clip.mp4", "mpeg4", frames)
    argv = ["--model", "x3d_xs", "--weights", "kinetics400", "--clips", "1", "--crops", "1", "--resize", "32",
            "--crop", "32", "--json", "--no-progress", video]
    assert predict_cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]["top_k"]
    kinetics = load_class_names("kinetics400", 400)
    assert [entry["label"] for entry in result] == [kinetics[entry["index"]] for entry in result]


def test_convert_from_a_weights_name_equals_converting_the_file(weights_env, pyth, tmp_path):
    (tmp_path / "X3D_XS.pyth").write_bytes(pyth)
    out = tmp_path / "x3d_xs.safetensors"
    assert convert.main(["--model", "x3d_xs", "--from", "kinetics400", "--to", str(out)]) == 0
    by_name = flax_state(load_model("x3d_xs", out))
    by_hand = flax_state(load_model("x3d_xs", tmp_path / "X3D_XS.pyth", source="pytorchvideo"))
    assert sorted(by_name) == sorted(by_hand)
    for key in by_hand:
        np.testing.assert_array_equal(by_name[key], by_hand[key], err_msg=key)


def test_fine_tuning_from_a_weights_name_through_train_py(weights_env, tmp_path):
    """The README's recipe: --init-from a Kinetics-400 record, the head sized for the dataset."""
    workdir = tmp_path / "run"
    args = ["--model", "x3d_xs", "--init-from", "kinetics400", "--dataset", trainrun.TINY_DATASET,
            "--num-frames", "4", "--crop-size", "16", "--batch-size", "8", "--eval-batch-size", "16",
            "--steps", "2", "--log-every", "1", "--no-progress", "--workdir", str(workdir)]
    proc = subprocess.run([sys.executable, trainrun.TRAIN, *args], env=trainrun.env(**weights_env), cwd=trainrun.REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the classifier blocks.5.proj starts fresh" in proc.stdout + proc.stderr
    records = trainrun.metrics(workdir)
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]
    assert [r["step"] for r in records if r["split"] == "eval"] == [2] and np.isfinite(records[-1]["loss"])


def test_an_unknown_weights_name_is_one_line_before_any_model(tmp_path):
    proc = subprocess.run([sys.executable, trainrun.TRAIN, "--model", "x3d_xs", "--init-from", "kinetics401"],
                          env=trainrun.env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "not a name of x3d_xs's pretrained weights" in proc.stderr and "Traceback" not in proc.stderr
