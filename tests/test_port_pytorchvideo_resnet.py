"""Importing PyTorchVideo's ResNet-family hub checkpoints (i3d_r50, slow_r50, c2d_r50, csn_r101,
r2plus1d_r50; files holding {"model_state": state_dict}) through source="pytorchvideo"."""

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

ARCHS = ["i3d_r50", "slow_r50", "c2d_r50", "csn_r101", "r2plus1d_r50"]


def _manifest(manifests, arch):
    return {k: tuple(v) for k, v in manifests[f"pytorchvideo/{arch}"].items()}


def _abstract(arch, num_classes=400):
    return nnx.eval_shape(lambda: v3d_flax.create_model(arch, num_classes=num_classes, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("arch", ARCHS)
def test_pytorchvideo_manifest_maps_onto_our_keys(manifests, arch):
    renamed = port.rename_keys(_manifest(manifests, arch), "pytorchvideo", arch)
    assert renamed == port.torch_shapes(_abstract(arch))
    tm = v3d_torch_ref.create_model(arch, num_classes=400)
    assert renamed == {k: tuple(v.shape) for k, v in tm.state_dict().items()}


def _fake_checkpoint(manifest, seed=0):
    """Random tensors under PyTorchVideo's names, He-scaled so the deep net's activations stay finite."""
    rng = np.random.RandomState(seed)
    state = {}
    for key, shape in manifest.items():
        if key.endswith("num_batches_tracked"):
            value = np.array(rng.randint(1, 1000), np.int64)
        elif key.endswith(("running_var", "norm.weight", "_a.weight", "_b.weight", "_c.weight")) and len(shape) == 1:
            value = (rng.rand(*shape) * 0.5 + 0.5).astype(np.float32)
        elif len(shape) == 5:
            value = (rng.randn(*shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)
        elif len(shape) == 2:
            value = (rng.randn(*shape) * 0.01).astype(np.float32)
        else:
            value = (rng.randn(*shape) * 0.1).astype(np.float32)
        state[key] = torch.from_numpy(value)
    return state


def test_pytorchvideo_checkpoint_file_loads_and_matches(tmp_path, manifests):
    """A .pyth laid out like PyTorchVideo's hub files loads strictly via load_torch_checkpoint +
    from_torch(source="pytorchvideo") and gives the reference's logits (i3d_r50: the blocks.2 pool)."""
    arch = "i3d_r50"
    state = _fake_checkpoint(_manifest(manifests, arch))
    path = tmp_path / "I3D_8x8_R50.pyth"
    torch.save({"epoch": 196, "model_state": state, "optimizer_state": {"state": {}, "param_groups": []}}, path)

    fm = flax_model_without_init(arch, num_classes=400)
    assert not port.from_torch(fm, port.load_torch_checkpoint(path), source="pytorchvideo")
    tm = v3d_torch_ref.create_model(arch, num_classes=400)
    tm.load_state_dict(state, strict=True)
    tm.eval()
    fm.eval()
    x = np.random.RandomState(1).randn(1, 3, 4, 64, 64).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    with jax.default_matmul_precision("float32"):
        got, = jitted_forward(fm, jnp.asarray(ncdhw_to_ndhwc(x)), "__call__")
    assert np.all(np.isfinite(ref)) and np.abs(ref).max() > 1e-3 and rel_err(ref, got) < 1e-4
    exported = port.to_torch(fm)
    for k, v in state.items():
        assert torch.equal(exported[k], v), k


def test_checkpoint_for_another_family_member_is_refused(manifests):
    """Same key names across the family, different layouts: slow_r50's file into c2d_r50 or i3d_r50."""
    slow = {k: np.zeros(s, np.float32) for k, s in _manifest(manifests, "slow_r50").items()}
    c2d = _abstract("c2d_r50")
    with pytest.raises(port.PortError, match=r"missing keys \(97\): by module: .*blocks\.6 2") as err:
        port.from_torch(c2d, slow, source="pytorchvideo")
    assert "blocks.6.proj.weight" in err.value.missing  # the message summarises; the exception keeps every key
    i3d_keys = {k: np.zeros(s, np.float32) for k, s in _manifest(manifests, "i3d_r50").items()}
    with pytest.raises(port.PortError, match=r"mis-shaped keys.*blocks.0.conv.weight"):
        port.from_torch(c2d, i3d_keys, source="pytorchvideo")  # same keys, 5x7x7 vs 1x7x7 stem
