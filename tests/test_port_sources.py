"""Checkpoint sources as one registry: port.list_sources, port.load_weights, and the --source of every CLI."""

from __future__ import annotations

import pytest
import torch

import v3d_torch_ref
from parity import flax_model_without_init
from v3d_flax import port
from v3d_flax.port.sources import SOURCES


def test_every_source_serves_the_models_whose_records_name_it():
    assert port.list_sources()[0] == "v3d" and set(port.list_sources()) == set(SOURCES)
    assert {s.kind for s in SOURCES.values()} == {"state_dict", "tensorflow", "inflate_2d"}
    assert port.get_source("deepmind-tf").models() == ["i3d"]
    assert set(port.get_source("imagenet-2d").models()) == {"i3d", "i3d_r50", "slow_r50", "c2d_r50"}
    assert port.sources_for("r3d_18") == ["v3d", "torchvision"]
    assert set(port.get_source("v3d").models()) == set(v3d_torch_ref.list_models())


def test_load_weights_of_a_state_dict_source(tmp_path):
    tm = v3d_torch_ref.create_model("x3d_xs", num_classes=5)
    fm = flax_model_without_init("x3d_xs", num_classes=5)
    path = tmp_path / "X3D_XS.pyth"
    torch.save({"model_state": tm.state_dict()}, path)  # as PyTorchVideo's hub files
    assert not port.load_weights(fm, path, source="pytorchvideo")
    got = port.to_torch(fm)
    assert all(torch.equal(got[k], v) for k, v in tm.state_dict().items())
    with pytest.raises(TypeError, match="takes no options"):
        port.load_weights(fm, tm.state_dict(), head=False)


def test_a_source_that_does_not_serve_the_model_names_those_that_do(tmp_path):
    fm = flax_model_without_init("x3d_xs", num_classes=5)
    with pytest.raises(ValueError, match=r"no key map for model 'x3d_xs'.*the sources for x3d_xs are: v3d, pytorchvideo"):
        port.load_weights(fm, {}, source="deepmind-tf")
    with pytest.raises(ValueError, match="unknown source 'imagenet'.*did you mean imagenet-2d"):
        port.load_weights(fm, {}, source="imagenet")


@pytest.mark.parametrize("command", ["predict", "features", "convert"])
def test_every_cli_offers_every_source_and_checks_it_for_the_model(command, tmp_path, capsys):
    import importlib

    module = importlib.import_module(f"v3d_flax.{command}")
    choices = next(a.choices for a in module.build_parser()._actions if a.dest == "source")
    assert list(choices) == port.list_sources()
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    args = {"predict": ["--weights", "w.pth", str(video)],
            "features": ["--weights", "w.pth", "--out", str(tmp_path / "f.npz"), str(video)],
            "convert": ["--from", "w.pth", "--to", str(tmp_path / "w.safetensors")]}[command]
    with pytest.raises(SystemExit) as exit_:
        module.main(["--model", "r3d_18", "--source", "imagenet-2d", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--source imagenet-2d" in err and "the sources for r3d_18 are: v3d, torchvision" in err, err
