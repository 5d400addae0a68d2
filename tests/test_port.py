"""Porting mechanics: strict errors, key maps, checkpoint files, and torchvision's key names."""

import pickle

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import v3d_flax
import v3d_torch_ref
from parity import flax_model_without_init
from v3d_flax import port
from v3d_flax.transformer_layers import LayerNorm

TORCHVISION = ["r3d_18", "mc3_18", "r2plus1d_18"]


@pytest.fixture(scope="module")
def r3d_pair():
    torch.manual_seed(0)
    tm = v3d_torch_ref.create_model("r3d_18", num_classes=5)
    return tm, flax_model_without_init("r3d_18", num_classes=5)


@pytest.mark.parametrize("name", TORCHVISION)
def test_reference_keys_and_shapes_equal_torchvision(name, manifests):
    ours = {k: list(v.shape) for k, v in v3d_torch_ref.create_model(name, num_classes=400).state_dict().items()}
    assert ours == manifests[f"torchvision/{name}"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_source_maps_every_manifest_key(name, manifests):
    flax_model = nnx.eval_shape(lambda: v3d_flax.create_model(name, num_classes=400, rngs=nnx.Rngs(0)))
    expected = port.torch_shapes(flax_model)
    renamed = port.rename_keys(manifests[f"torchvision/{name}"], "torchvision", name)
    assert {k: tuple(v) for k, v in renamed.items()} == expected


def test_strict_error_names_missing_unexpected_and_misshaped_keys(r3d_pair):
    tm, fm = r3d_pair
    sd = dict(tm.state_dict())
    del sd["layer1.0.conv1.0.weight"]
    sd["layer9.extra.weight"] = torch.zeros(3)
    sd["fc.weight"] = torch.zeros(7, 512)
    watched = {"fc": fm.fc.kernel, "stem": fm.stem[0].kernel}
    before = {name: np.asarray(p[...]).copy() for name, p in watched.items()}
    with pytest.raises(port.PortError) as err:
        port.from_torch(fm, sd)
    msg = str(err.value)
    assert "missing keys (1): layer1.0.conv1.0.weight" in msg
    assert "unexpected keys (1): layer9.extra.weight" in msg
    assert "fc.weight (checkpoint (7, 512), model (5, 512))" in msg
    for name, p in watched.items():  # nothing half-loaded
        np.testing.assert_array_equal(np.asarray(p[...]), before[name])


def test_non_strict_loads_what_fits_and_reports_the_rest(r3d_pair):
    tm, fm = r3d_pair
    sd = {k: v for k, v in tm.state_dict().items() if not k.startswith("fc.")}
    report = port.from_torch(fm, sd, strict=False)
    assert report.missing == ["fc.weight", "fc.bias"] and not report.unexpected and not report.mismatched
    np.testing.assert_array_equal(np.asarray(fm.stem[0].kernel[...]),
                                  sd["stem.0.weight"].numpy().transpose(2, 3, 4, 1, 0))


def test_old_checkpoints_without_num_batches_tracked_load(r3d_pair):
    tm, fm = r3d_pair
    sd = {k: v for k, v in tm.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert not port.from_torch(fm, sd)


def test_unknown_source_and_uncovered_model_are_refused(r3d_pair):
    tm, fm = r3d_pair
    with pytest.raises(ValueError, match="unknown source 'nope'; known sources: .*torchvision"):
        port.from_torch(fm, tm.state_dict(), source="nope")
    c3d = nnx.eval_shape(lambda: v3d_flax.create_model("c3d", num_classes=5, num_frames=16, crop_size=32,
                                                       rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="no key map for model 'c3d'"):
        port.from_torch(c3d, {}, source="torchvision")


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model_state", "model", "module_prefix"])
def test_load_torch_checkpoint_unwraps(tmp_path, r3d_pair, wrapper):
    tm, fm = r3d_pair
    sd = tm.state_dict()
    obj = {"module." + k: v for k, v in sd.items()} if wrapper == "module_prefix" else sd
    if wrapper not in (None, "module_prefix"):
        obj = {wrapper: obj, "epoch": 3}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    loaded = port.load_torch_checkpoint(path)
    assert set(loaded) == set(sd)
    port.from_torch(fm, loaded)
    np.testing.assert_array_equal(port.to_torch(fm)["fc.weight"].numpy(), sd["fc.weight"].numpy())


def test_load_safetensors(tmp_path, r3d_pair):
    from safetensors.torch import save_file

    tm, _ = r3d_pair
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, tmp_path / "w.safetensors")
    loaded = port.load_torch_checkpoint(tmp_path / "w.safetensors")
    np.testing.assert_array_equal(loaded["layer4.1.conv2.0.weight"], tm.state_dict()["layer4.1.conv2.0.weight"].numpy())


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_load_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": {"w": _Evil()}}, fh)
    with pytest.raises(ValueError, match="weights_only=True"):
        port.load_torch_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        port.load_torch_checkpoint(tmp_path / "absent.pth")


def test_c3d_fc6_columns_follow_the_flatten_order():
    torch.manual_seed(0)
    tm = v3d_torch_ref.create_model("c3d", num_classes=4, num_frames=16, crop_size=32).eval()
    fm = flax_model_without_init("c3d", num_classes=4, num_frames=16, crop_size=32)
    port.from_torch(fm, tm.state_dict())
    # pool5 of a 16x32x32 clip is 512 x 1 x 2 x 2; torch column c*4 + h*2 + w is Flax row (h*2 + w)*512 + c.
    w_t = tm.fc6.weight.detach().numpy()
    k_f = np.asarray(fm.fc6.kernel[...])
    for c, h, w in [(0, 0, 1), (7, 1, 0), (511, 1, 1)]:
        np.testing.assert_array_equal(k_f[(h * 2 + w) * 512 + c], w_t[:, c * 4 + h * 2 + w])
    assert torch.equal(port.to_torch(fm)["fc6.weight"], tm.fc6.weight.detach())


class _Attention(nnx.Module):
    """A module with its own parameter (a position table) and a buffer that follows its configuration."""

    def __init__(self, size: int, rngs: nnx.Rngs):
        self.size = size
        self.table = nnx.Param(jax.random.normal(rngs.params(), (2 * size - 1, 2)))
        self.qkv = v3d_flax.layers.Linear(2, 6, rngs=rngs)

    def torch_buffers(self):
        return {"index": np.arange(self.size * self.size, dtype=np.int64).reshape(self.size, self.size)}


class _Tokens(nnx.Module):
    def __init__(self, size: int, rngs: nnx.Rngs):
        self.class_token = nnx.Param(jax.random.normal(rngs.params(), (2,)))
        self.norm = LayerNorm(2)
        self.attn = _Attention(size, rngs)


def test_layer_norms_own_parameters_and_configuration_buffers_port_under_torch_names():
    model = _Tokens(3, nnx.Rngs(0))
    exported = port.to_torch(model)
    assert {k: tuple(v.shape) for k, v in exported.items()} == port.torch_shapes(model) == {
        "class_token": (2,), "norm.weight": (2,), "norm.bias": (2,), "attn.table": (5, 2), "attn.index": (3, 3),
        "attn.qkv.weight": (6, 2), "attn.qkv.bias": (6,)}
    assert exported["attn.index"].dtype == torch.int64
    fresh = _Tokens(3, nnx.Rngs(1))
    port.from_torch(fresh, exported)
    assert np.array_equal(np.asarray(fresh.attn.table[...]), np.asarray(model.attn.table[...]))
    assert np.array_equal(np.asarray(fresh.class_token[...]), exported["class_token"].numpy())

    changed = dict(exported, **{"attn.index": exported["attn.index"].flip(0)})
    with pytest.raises(port.PortError, match=r"attn.index \(its values differ from the model's configuration\)"):
        port.from_torch(fresh, changed)
    with pytest.raises(port.PortError, match=r"missing keys \(1\): attn.index"):
        port.from_torch(fresh, {k: v for k, v in exported.items() if k != "attn.index"})
    with pytest.raises(port.PortError, match=r"attn.table \(checkpoint \(5, 2\), model \(7, 2\)\)"):
        port.from_torch(_Tokens(4, nnx.Rngs(0)), {k: v for k, v in exported.items() if k != "attn.index"},
                        strict=True)


def test_resize_needs_a_record_that_can_resize(r3d_pair):
    tm, fm = r3d_pair
    with pytest.raises(ValueError, match=r"r3d_18 has no size-dependent tensors to interpolate"):
        port.from_torch(fm, tm.state_dict(), resize=True)
