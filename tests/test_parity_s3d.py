"""S3D: Flax against the PyTorch reference, torchvision's keys, the fixed (2, 7, 7) head and its clip limits."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import v3d_torch_ref
from parity import build_pair, check_parity, eval_pair, nan_like, rel_err
from v3d_flax import port
from v3d_flax.registry import abstract_model, model_spec
from v3d_flax.records.s3d import S3D_HEAD_POOL, s3d_map_size, s3d_min_clip

MANIFESTS = Path(__file__).parent / "data" / "state_dict_manifests.json"


def test_s3d_parity():
    # 21x61x67 leaves a (3, 2, 2) map: odd sizes for every padded stride-2 conv and pool, and a (2, 2, 2)
    # head window that slides over time (two windows), so the stride-1 pool and the mean after the
    # classifier are both exercised; torchvision's (2, 7, 7) needs 13x209x209 (the test below).
    check_parity("s3d", (2, 3, 21, 61, 67), head_pool_kernel=(2, 2, 2))


def test_s3d_default_head_at_the_smallest_clip_it_takes():
    """torchvision's own head, eval mode, on the smallest clip whose map covers (2, 7, 7): 13x209x209."""
    frames, side = s3d_min_clip()
    tm, fm = build_pair("s3d", num_classes=5)
    ref, got, ref_features, got_features = eval_pair(tm, fm, np.random.RandomState(3).randn(
        1, 3, frames, side, side).astype(np.float32))
    assert got.shape == (1, 5) and got_features.shape == (1, 1024)
    assert rel_err(ref, got) < 1e-4 and rel_err(ref_features, got_features) < 1e-4


def test_s3d_keys_and_shapes_are_torchvisions():
    manifest = {k: tuple(v) for k, v in json.loads(MANIFESTS.read_text())["torchvision/s3d"].items()}
    torch.manual_seed(0)
    reference = v3d_torch_ref.create_model("s3d", num_classes=400)
    state = reference.state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == list(manifest.items())  # the order too
    flax_model = abstract_model("s3d", num_classes=400)
    assert {k: tuple(v) for k, v in port.torch_shapes(flax_model).items()} == manifest
    bn = reference.features[0][0][1]
    assert (bn.eps, bn.momentum) == (1e-3, 1e-3)
    # a twin-written state_dict is what the torchvision source reads
    flax_model = nan_like(flax_model)
    report = port.from_torch(flax_model, state, source="torchvision")
    assert not report.missing and not report.unexpected
    np.testing.assert_array_equal(np.asarray(flax_model.classifier[1].bias.get_value()),
                                  state["classifier.1.bias"].numpy())
    np.testing.assert_array_equal(np.asarray(flax_model.features[0][0][0].kernel.get_value()),
                                  state["features.0.0.0.weight"].numpy().transpose(2, 3, 4, 1, 0))


def test_s3d_clip_limits_follow_the_head_window():
    spec = model_spec("s3d")
    assert spec.head_pool_kernel == S3D_HEAD_POOL == (2, 7, 7)
    assert s3d_map_size(*spec.clip) == S3D_HEAD_POOL  # torchvision's 16x224x224 leaves exactly one window
    assert s3d_map_size(128, 224, 224) == (16, 7, 7)  # the published clip-level evaluation: 15 windows
    # torchvision's metadata says 14 frames and 224 pixels; 13 and 209 are the smallest that run
    assert s3d_min_clip() == (13, 209)
    assert s3d_map_size(12, 209, 209) == (1, 7, 7) and s3d_map_size(13, 208, 209) == (2, 6, 7)


def test_s3d_rejects_clips_too_small_for_its_head():
    model = abstract_model("s3d", num_classes=3)
    model.eval()
    for shape in [(1, 12, 224, 224, 3), (1, 16, 208, 224, 3), (1, 16, 224, 200, 3)]:
        with pytest.raises(ValueError, match=r"at least 13 frames and 209x209 pixels"):
            model(jnp.zeros(shape))
        with pytest.raises(ValueError, match=r"head_pool_kernel \(2, 7, 7\)"):
            model.forward_features(jnp.zeros(shape))
    with pytest.raises(ValueError, match="NDHWC"):
        model(jnp.zeros((1, 3, 16, 224, 224)))
    with pytest.raises(ValueError, match="5-D NDHWC"):
        model(jnp.zeros((16, 224, 224, 3)))
    # the trunk itself takes any clip that leaves it a map
    assert shape_of(model, "forward_map", (1, 12, 64, 64, 3)) == (1, 1, 2, 2, 1024)
    with pytest.raises(ValueError, match=r"global pooling takes clips of at least 5 frames and 17x17 pixels"):
        model.forward_map(jnp.zeros((1, 4, 64, 64, 3)))
    pooled = abstract_model("s3d", num_classes=3, head_pool_kernel=None)  # global pooling: any clip with a map
    pooled.eval()
    assert shape_of(pooled, "__call__", (2, 5, 17, 17, 3)) == (2, 3)


def shape_of(model, method: str, shape) -> tuple:
    """The output shape of `model.method` on a float32 input of `shape`, traced without weights."""
    graphdef, state = nnx.split(model)
    out = jax.eval_shape(lambda s, x: getattr(nnx.merge(graphdef, s), method)(x), state,
                         jax.ShapeDtypeStruct(shape, jnp.float32))
    return tuple(out.shape)
