"""python -m v3d_flax.convert: torch <-> Flax round trips, atomic writes, training workdirs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from flax import nnx

from v3d_flax import checkpoints, convert
from v3d_flax.port import to_torch
from v3d_flax.preprocessing import Recipe
from v3d_torch_ref.registry import create_model as create_torch_model


def reference(name="mc3_18", num_classes=5, seed=0, **kw):
    """A v3d_torch_ref model with random weights and non-trivial BatchNorm buffers."""
    torch.manual_seed(seed)
    model = create_torch_model(name, num_classes=num_classes, **kw)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(17)
    return model


def assert_state_dicts_identical(a: dict, b: dict, *, ordered: bool = True):
    assert list(a) == list(b) if ordered else sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def mc3_pth(tmp_path_factory):
    model = reference()
    path = tmp_path_factory.mktemp("ckpt") / "mc3.pth"
    torch.save(model.state_dict(), path)
    return str(path), model.state_dict()


@pytest.mark.parametrize("flax_name", ["flax_ckpt", "flax.safetensors"])
def test_torch_to_flax_to_torch_is_bit_exact(mc3_pth, tmp_path, flax_name, capsys):
    src, state = mc3_pth
    flax_path, back = str(tmp_path / flax_name), str(tmp_path / "back.pth")
    assert convert.main(["--model", "mc3_18", "--from", src, "--to", flax_path]) == 0
    assert convert.main(["--model", "mc3_18", "--from", flax_path, "--to", back]) == 0
    assert "wrote" in capsys.readouterr().out
    restored = torch.load(back, weights_only=True)
    assert_state_dicts_identical(state, restored)
    fresh = create_torch_model("mc3_18", num_classes=5)
    fresh.load_state_dict(restored, strict=True)
    assert sorted(os.listdir(tmp_path)) == sorted([flax_name, "back.pth"])  # no temporaries left behind


def test_flax_checkpoint_loads_the_same_model(mc3_pth, tmp_path):
    src, _ = mc3_pth
    dest = str(tmp_path / "m.safetensors")
    assert convert.main(["--model", "mc3_18", "--from", src, "--to", dest]) == 0
    a, b = checkpoints.load_model("mc3_18", src), checkpoints.load_model("mc3_18", dest)
    sa, sb = checkpoints.flax_state(a), checkpoints.flax_state(b)
    assert sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert checkpoints.infer_num_classes("mc3_18", {k: v.shape for k, v in sa.items()}, kind="flax") == 5


def test_public_source_naming(tmp_path):
    """A torchvision-named checkpoint (same keys as v3d for the video ResNets, wrapped in "state_dict")."""
    model = reference("mc3_18", num_classes=3, seed=1)
    src = tmp_path / "tv.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, src)
    assert convert.main(["--model", "mc3_18", "--source", "torchvision", "--from", str(src),
                         "--to", str(tmp_path / "o.safetensors")]) == 0
    assert convert.main(["--model", "mc3_18", "--from", str(tmp_path / "o.safetensors"),
                         "--to", str(tmp_path / "o.pth")]) == 0
    assert_state_dicts_identical(model.state_dict(), torch.load(tmp_path / "o.pth", weights_only=True))


def test_c3d_clip_size_travels_with_the_checkpoint(tmp_path):
    model = reference("c3d", num_classes=4, num_frames=16, crop_size=32)
    src = tmp_path / "c3d.pth"
    torch.save(model.state_dict(), src)
    # a torch file carries no clip size: fc6's shape does not fit the default 112 crop
    assert convert.main(["--model", "c3d", "--from", str(src), "--to", str(tmp_path / "x")]) == 1
    flax_model = checkpoints.blank_model("c3d", 4, Recipe(frames=16, rate=1, resize=32, crop=32))
    from v3d_flax.port import from_torch

    from_torch(flax_model, model.state_dict())
    checkpoints.save_checkpoint(flax_model, tmp_path / "c3d_flax")
    assert convert.main(["--model", "c3d", "--from", str(tmp_path / "c3d_flax"), "--to", str(tmp_path / "b.pth")]) == 0
    assert_state_dicts_identical(model.state_dict(), torch.load(tmp_path / "b.pth", weights_only=True))


def test_refuses_to_overwrite_without_force(mc3_pth, tmp_path, capsys):
    src, state = mc3_pth
    for name in ("out.pth", "out_dir"):
        dest = tmp_path / name
        if name.endswith(".pth"):
            dest.write_bytes(b"keep me")
        else:
            dest.mkdir()
            (dest / "keep").write_text("me")
        assert convert.main(["--model", "mc3_18", "--from", src, "--to", str(dest)]) == 1
        assert "already exists; pass --force" in capsys.readouterr().err
        assert (dest.read_bytes() == b"keep me") if name.endswith(".pth") else (dest / "keep").exists()
        assert convert.main(["--model", "mc3_18", "--from", src, "--to", str(dest), "--force"]) == 0
    assert_state_dicts_identical(state, torch.load(tmp_path / "out.pth", weights_only=True))
    assert not (tmp_path / "out_dir" / "keep").exists() and (tmp_path / "out_dir" / "state").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["out.pth", "out_dir"]


def test_failed_conversion_writes_nothing(mc3_pth, tmp_path, capsys):
    src, _ = mc3_pth
    for dest in ("x.pth", "x.safetensors", "x_dir"):
        assert convert.main(["--model", "r3d_18", "--from", src, "--to", str(tmp_path / dest)]) == 1
        assert "looks like mc3_18, not r3d_18" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint")
    assert convert.main(["--model", "mc3_18", "--from", str(garbage), "--to", str(tmp_path / "y.pth")]) == 1
    assert "could not read" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["garbage.pth"]
    with pytest.raises(SystemExit) as e:
        convert.main(["--model", "mc3_18", "--from", src])
    assert e.value.code == 2


def test_another_models_checkpoint_is_named(mc3_pth, tmp_path, capsys):
    """mc3_18 weights converted as x3d_xs: a short error naming mc3_18, from a torch file, a Flax file that
    records its model, and a Flax file that does not (found by its keys)."""
    src, _ = mc3_pth
    assert convert.main(["--model", "x3d_xs", "--from", src, "--to", str(tmp_path / "x.pth")]) == 1
    err = capsys.readouterr().err
    assert len(err) < 2000 and "looks like mc3_18, not x3d_xs" in err and "pass --model mc3_18" in err, err
    flax_file = tmp_path / "mc3.safetensors"
    assert convert.main(["--model", "mc3_18", "--from", src, "--to", str(flax_file)]) == 0
    assert convert.main(["--model", "x3d_xs", "--from", str(flax_file), "--to", str(tmp_path / "x.pth")]) == 1
    err = capsys.readouterr().err
    assert "holds a mc3_18 checkpoint" in err and "pass --model mc3_18" in err
    from safetensors.numpy import load_file, save_file

    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(flax_file)), str(bare))  # the same tensors, no metadata
    assert convert.main(["--model", "x3d_xs", "--from", str(bare), "--to", str(tmp_path / "x.pth")]) == 1
    err = capsys.readouterr().err
    assert len(err) < 2000 and "looks like mc3_18, not x3d_xs" in err and "--num-classes" not in err, err
    assert not (tmp_path / "x.pth").exists()


def test_training_workdir_checkpoint_to_torch(tmp_path, capsys):
    """A v3d_flax.train workdir (params, BatchNorm stats, RNG streams, optimizer state) -> .pth."""
    import optax

    from v3d_flax.train.checkpointing import Checkpointer
    from v3d_flax.train.state import build_model, init_state, split_model

    model = build_model("mc3_18", num_classes=6, num_frames=8, crop_size=32, seed=3)
    for _, m in nnx.iter_modules(model):
        if hasattr(m, "mean") and isinstance(getattr(m, "mean"), nnx.BatchStat):
            m.mean[...] = m.mean[...] + 0.25
    _, model_state = split_model(model)
    state = init_state(model_state, optax.sgd(0.1, momentum=0.9))
    workdir = tmp_path / "run"
    ckpt = Checkpointer(str(workdir), async_save=False)
    ckpt.save(7, state, {"model": "mc3_18", "step": 7})
    ckpt.wait()
    ckpt.close()
    dest = tmp_path / "trained.pth"
    assert convert.main(["--model", "mc3_18", "--from", str(workdir), "--to", str(dest)]) == 0
    model.arch = "mc3_18"
    assert_state_dicts_identical(to_torch(model), torch.load(dest, weights_only=True), ordered=False)
    assert convert.main(["--model", "r3d_18", "--from", str(workdir), "--to", str(tmp_path / "no.pth")]) == 1
    assert "holds a mc3_18 checkpoint" in capsys.readouterr().err
