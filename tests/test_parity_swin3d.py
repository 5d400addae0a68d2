"""Swin3D: Flax against the PyTorch reference, torchvision's key names, windows, masks and resize_state."""

import inspect
import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import v3d_flax
import v3d_torch_ref
from parity import check_parity, flax_model_without_init
from v3d_flax import port
from v3d_flax.models import swin3d as flax_swin
from v3d_flax.records.swin3d import SWIN3D, window_and_shift
from v3d_flax.registry import abstract_model
from v3d_torch_ref.models import swin3d as torch_swin

NAMES = ["swin3d_t", "swin3d_s", "swin3d_b"]


# Tokens are (T/2, H/4, W/4), halved in H and W by each PatchMerging; a window axis no longer than the map
# is clipped to it and not shifted. 4x32x32 -> 2x8x8 tokens: stage 1 rolls H and W by 3 (padded 8 -> 14,
# masked regions), T clipped to 2; stages 2-4 (2x4x4, 2x2x2, 2x1x1) have clipped, unshifted windows (and
# torchvision's first-V slice of the full window's index). 18x32x32 -> 9x8x8: stage 1 shifts all three
# axes (padded to 16x14x14), stage 2 (9x4x4) shifts T only. A (2, 3, 3) window on 8x32x32 shifts and pads
# every axis in stages 1-2 with another table size.
@pytest.mark.parametrize("shape,kwargs", [((2, 3, 4, 32, 32), {}), ((1, 3, 18, 32, 32), {}),
                                          ((1, 3, 8, 32, 32), {"window_size": (2, 3, 3)})],
                         ids=["hw_shift_then_clipped", "thw_shift", "window_2x3x3"])
def test_swin3d_t_parity(shape, kwargs):
    check_parity("swin3d_t", shape, **kwargs)


def test_the_cases_cover_clipped_and_shifted_windows():
    assert window_and_shift((2, 8, 8), (8, 7, 7), (4, 3, 3)) == ((2, 7, 7), (0, 3, 3))
    assert window_and_shift((2, 4, 4), (8, 7, 7), (4, 3, 3)) == ((2, 4, 4), (0, 0, 0))
    assert window_and_shift((9, 8, 8), (8, 7, 7), (4, 3, 3)) == ((8, 7, 7), (4, 3, 3))
    assert window_and_shift((9, 4, 4), (8, 7, 7), (4, 3, 3)) == ((8, 4, 4), (4, 0, 0))
    assert window_and_shift((8, 7, 7), (8, 7, 7), (4, 3, 3)) == ((8, 7, 7), (0, 0, 0))  # "no larger": clipped


@pytest.fixture(scope="module")
def reference_shapes():
    """Each twin's state_dict shapes at 400 classes, built once on the meta device (no weights allocated)."""
    with torch.device("meta"):
        return {name: {k: list(v.shape) for k, v in v3d_torch_ref.create_model(name, num_classes=400)
                       .state_dict().items()} for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_keys_and_shapes_equal_torchvision(name, manifests, reference_shapes):
    """swin3d_s and swin3d_b are swin3d_t's classes at other depths and widths (their parity runs would
    cost 18-block stages): both frameworks' names and shapes are torchvision's (the twin's in its order too)."""
    assert list(reference_shapes[name].items()) == list(manifests[f"torchvision/{name}"].items())
    flax_shapes = port.torch_shapes(abstract_model(name, num_classes=400))
    assert flax_shapes == {k: tuple(v) for k, v in manifests[f"torchvision/{name}"].items()}
    model = abstract_model(name, num_classes=400)
    config = SWIN3D[name]
    stages = [model.features[i] for i in range(0, 7, 2)]
    assert [len(s) for s in stages] == list(config["depths"])
    assert [s[0].attn.num_heads for s in stages] == list(config["num_heads"])
    assert model.num_features == 8 * config["embed_dim"]


def test_block_rules_follow_torchvision():
    """Shift half a window on odd blocks; stochastic depth 0.1 * i / (blocks - 1) over all blocks."""
    model = abstract_model("swin3d_s", num_classes=3)
    blocks = [b for i in range(0, 7, 2) for b in model.features[i]]
    assert [b.attn.shift_size for b in model.features[4]][:3] == [(0, 0, 0), (4, 3, 3), (0, 0, 0)]
    np.testing.assert_allclose([b.stochastic_depth.rate for b in blocks], 0.1 * np.arange(24) / 23)
    with torch.device("meta"):
        reference = v3d_torch_ref.create_model("swin3d_s", num_classes=3)
    ref_blocks = [b for i in range(0, 7, 2) for b in reference.features[i]]
    assert [b.stochastic_depth.p for b in ref_blocks] == [b.stochastic_depth.rate for b in blocks]
    assert [b.attn.shift_size for b in ref_blocks] == [b.attn.shift_size for b in blocks]


@pytest.mark.parametrize("window", [(8, 7, 7), (2, 3, 3), (1, 4, 2), (3, 1, 1)])
def test_relative_position_index_equals_the_reference(window):
    np.testing.assert_array_equal(flax_swin.relative_position_index(window),
                                  torch_swin.relative_position_index(window).numpy())


@pytest.mark.parametrize("padded,window,shift", [((16, 14, 14), (8, 7, 7), (4, 3, 3)),
                                                 ((2, 14, 14), (2, 7, 7), (0, 3, 3)),
                                                 ((16, 4, 4), (8, 4, 4), (4, 0, 0)),
                                                 ((6, 6, 9), (2, 3, 3), (1, 1, 1))])
def test_shifted_window_mask_equals_torchvisions_slice_assignment(padded, window, shift):
    labels = flax_swin.shifted_window_mask(padded, window, shift)
    ours = np.where(labels[:, :, None] != labels[:, None, :], -100.0, 0.0)
    np.testing.assert_array_equal(ours, torch_swin.attention_mask(padded, window, shift).numpy())
    assert ours.shape == (math.prod(p // w for p, w in zip(padded, window)), math.prod(window), math.prod(window))


@pytest.fixture(scope="module")
def swin3d_t_state():
    torch.manual_seed(0)
    return v3d_torch_ref.create_model("swin3d_t", num_classes=10).state_dict()


def test_torchvision_source_imports_a_twin_state_dict(swin3d_t_state):
    model = flax_model_without_init("swin3d_t", num_classes=10)
    port.from_torch(model, swin3d_t_state, source="torchvision")
    table = model.features[0][1].attn.relative_position_bias_table[...]
    np.testing.assert_array_equal(np.asarray(table),
                                  swin3d_t_state["features.0.1.attn.relative_position_bias_table"].numpy())
    bad = dict(swin3d_t_state)
    bad["features.0.0.attn.relative_position_index"] = torch.zeros(392, 392, dtype=torch.int64)
    with pytest.raises(port.PortError, match="relative_position_index"):
        port.from_torch(model, bad, source="torchvision")


def _numpy_state(state):
    return {k: v.numpy() for k, v in state.items()}


def test_resize_state_is_the_identity_at_the_original_window(swin3d_t_state):
    state = _numpy_state(swin3d_t_state)
    shapes = port.torch_shapes(abstract_model("swin3d_t", num_classes=10))
    resized = flax_swin.resize_state(state, shapes)
    assert list(resized) == list(state)
    for key, value in state.items():
        assert resized[key] is value


def _load_resized(model, state):
    if "resize" in inspect.signature(port.from_torch).parameters:
        return port.from_torch(model, state, resize=True)
    return port.from_torch(model, flax_swin.resize_state(state, port.torch_shapes(model)))


def test_resize_state_loads_into_another_window(swin3d_t_state):
    state = _numpy_state(swin3d_t_state)
    model = flax_model_without_init("swin3d_t", num_classes=10, window_size=(8, 5, 5))
    _load_resized(model, state)
    attn = model.features[2][1].attn
    key = "features.2.1.attn.relative_position_bias_table"
    got = np.asarray(attn.relative_position_bias_table[...])
    assert got.shape == (15 * 9 * 9, 6)
    # T unchanged: per temporal offset and head, torch's 2D bicubic (align_corners=False) over (H, W)
    grid = torch.from_numpy(state[key].T.reshape(1, 6 * 15, 13, 13))
    theirs = torch.nn.functional.interpolate(grid, size=(9, 9), mode="bicubic", align_corners=False)
    np.testing.assert_allclose(got, theirs.numpy().reshape(6, -1).T, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(np.asarray(model.head.kernel[...])))  # every other key loaded as it was
    np.testing.assert_array_equal(np.asarray(model.head.kernel[...]), state["head.weight"].T)
    exported = port.to_torch(model)
    np.testing.assert_array_equal(exported["features.2.1.attn.relative_position_index"].numpy(),
                                  flax_swin.relative_position_index((8, 5, 5)))


def test_resize_bias_table_is_bicubic_along_each_changed_axis():
    """Time too: a table changing only T is torch's 1D cubic (bicubic on a one-column image) per column."""
    rng = np.random.RandomState(0)
    table = rng.randn(15 * 3 * 3, 2).astype(np.float32)
    got = flax_swin.resize_bias_table(table, (8, 2, 2), (4, 2, 2))
    image = torch.from_numpy(table.T.reshape(2, 15, 9).transpose(0, 2, 1).reshape(1, 18, 15, 1).copy())
    theirs = torch.nn.functional.interpolate(image, size=(7, 1), mode="bicubic", align_corners=False)
    np.testing.assert_allclose(got, theirs.numpy().reshape(2, 9, 7).transpose(0, 2, 1).reshape(2, -1).T,
                               rtol=1e-5, atol=1e-5)  # torch's float32 weights
    np.testing.assert_array_equal(flax_swin.resize_bias_table(table, (8, 2, 2), (8, 2, 2)), table)


def test_swin3d_rejects_bad_input():
    model = nnx.eval_shape(lambda: v3d_flax.create_model("swin3d_t", num_classes=3, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="NCDHW"):
        model(jnp.zeros((1, 3, 4, 32, 32)))
    with pytest.raises(ValueError, match="5-D NDHWC"):
        model(jnp.zeros((4, 32, 32, 3)))
    with pytest.raises(ValueError, match="window_size"):
        abstract_model("swin3d_t", num_classes=3, window_size=(8, 7))
