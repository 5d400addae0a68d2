"""Importing PyTorchVideo's SlowFast and X3D hub checkpoints ({"model_state": ...}) through the key map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import v3d_flax
import v3d_torch_ref
from parity import flax_model_without_init, jitted_forward, ncdhw_to_ndhwc, rel_err
from v3d_flax import port

ARCHS = ["slowfast_r50", "slowfast_r101", "x3d_xs", "x3d_s", "x3d_m", "x3d_l"]


def _manifest(manifests, arch):
    return {k: tuple(v) for k, v in manifests[f"pytorchvideo/{arch}"].items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_pytorchvideo_manifest_maps_onto_our_keys(manifests, arch):
    renamed = port.rename_keys(_manifest(manifests, arch), "pytorchvideo", arch)
    flax_model = nnx.eval_shape(lambda: v3d_flax.create_model(arch, num_classes=400, rngs=nnx.Rngs(0)))
    assert renamed == port.torch_shapes(flax_model)
    tm = v3d_torch_ref.create_model(arch, num_classes=400)
    assert renamed == {k: tuple(v.shape) for k, v in tm.state_dict().items()}


def test_manifest_has_the_layout_details_we_mirror(manifests):
    x3d = _manifest(manifests, "x3d_xs")
    assert x3d["blocks.0.conv.conv_t.weight"] == (24, 3, 1, 3, 3)  # spatial, despite its name
    assert x3d["blocks.0.conv.conv_xy.weight"] == (24, 1, 5, 1, 1)  # temporal depthwise
    assert "blocks.1.res_blocks.0.branch1_conv.weight" in x3d
    assert not any(k.startswith("blocks.1.res_blocks.0.branch1_norm") for k in x3d)
    sf = _manifest(manifests, "slowfast_r50")
    assert sf["blocks.0.multipathway_fusion.conv_fast_to_slow.weight"] == (16, 8, 7, 1, 1)
    assert not any(k.startswith("blocks.4.multipathway_fusion") for k in sf)
    assert _manifest(manifests, "slowfast_r101")["blocks.0.multipathway_fusion.conv_fast_to_slow.weight"] == (16, 8, 5, 1, 1)


def _fake_checkpoint(manifest, seed=0):
    """Random tensors under PyTorchVideo's names, scaled so a deep net's activations stay finite."""
    rng = np.random.RandomState(seed)
    state = {}
    for key, shape in manifest.items():
        if key.endswith("num_batches_tracked"):
            value = np.array(rng.randint(1, 1000), np.int64)
        elif key.endswith(("running_var", "norm.weight", "norm_a.weight", "norm_b.weight", "norm_b.0.weight",
                           "norm_c.weight", "branch1_norm.weight", "pre_norm.weight")):
            value = (rng.rand(*shape) * 0.5 + 0.5).astype(np.float32)
        elif len(shape) == 5:
            value = (rng.randn(*shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)
        elif len(shape) == 2:
            value = (rng.randn(*shape) * 0.01).astype(np.float32)
        else:
            value = (rng.randn(*shape) * 0.1).astype(np.float32)
        state[key] = torch.from_numpy(value)
    return state


@pytest.mark.parametrize("arch,inputs", [
    ("x3d_xs", [(1, 3, 4, 64, 64)]),
    ("slowfast_r50", [(1, 3, 2, 64, 64), (1, 3, 8, 64, 64)]),
])
def test_pytorchvideo_checkpoint_file_loads_and_matches(tmp_path, manifests, arch, inputs):
    """A file laid out like PyTorchVideo's hub .pyth (PySlowFast's checkpoint dict) loads strictly
    through load_torch_checkpoint + from_torch(source="pytorchvideo") and gives the reference's outputs."""
    state = _fake_checkpoint(_manifest(manifests, arch))
    path = tmp_path / f"{arch}.pyth"
    torch.save({"epoch": 196, "model_state": state, "optimizer_state": {"state": {}, "param_groups": []},
                "cfg": "MODEL:\n  ARCH: pytorchvideo\n"}, path)

    fm = flax_model_without_init(arch, num_classes=400)
    assert not port.from_torch(fm, port.load_torch_checkpoint(path), source="pytorchvideo")
    tm = v3d_torch_ref.create_model(arch, num_classes=400)
    tm.load_state_dict(state, strict=True)
    tm.eval()
    fm.eval()
    rng = np.random.RandomState(1)
    xs = [rng.randn(*s).astype(np.float32) for s in inputs]
    with torch.no_grad():
        ref = tm([torch.from_numpy(x) for x in xs] if len(xs) > 1 else torch.from_numpy(xs[0])).numpy()
    with jax.default_matmul_precision("float32"):
        flax_in = tuple(jnp.asarray(ncdhw_to_ndhwc(x)) for x in xs)
        got, = jitted_forward(fm, flax_in if len(flax_in) > 1 else flax_in[0], "__call__")
    assert np.all(np.isfinite(ref)) and rel_err(ref, got) < 1e-4


def test_pytorchvideo_checkpoint_for_the_wrong_model_is_refused(manifests):
    x3d_l = nnx.eval_shape(lambda: v3d_flax.create_model("x3d_l", num_classes=400, rngs=nnx.Rngs(0)))
    x3d_l.arch = "x3d_l"
    xs_keys = {k: np.zeros(s, np.float32) for k, s in _manifest(manifests, "x3d_xs").items()}
    with pytest.raises(port.PortError, match="missing keys"):
        port.from_torch(x3d_l, xs_keys, source="pytorchvideo")
