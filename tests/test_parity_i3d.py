"""I3D: Flax against the PyTorch reference, and both against TensorFlow's own 'SAME' ops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import v3d_flax
from parity import build_pair, check_parity, jitted_forward, ncdhw_to_ndhwc, rel_err
from v3d_flax.layers import Conv3d, max_pool3d
from v3d_torch_ref.models.i3d import MaxPool3dSame, Unit3D


def test_i3d_parity():
    # 9x35x37: odd sizes make every stride-2 'SAME' pad asymmetric, and Mixed_5c's 2x2x2 map
    # clamps the (2, 7, 7) logits window. Batch 1 keeps train-mode BN well-conditioned in float32.
    check_parity("i3d", (1, 3, 9, 35, 37))


def test_i3d_flow_eval_parity_and_per_time_logits():
    tm, fm = build_pair("i3d", in_channels=2, num_classes=5)
    tm.eval()
    fm.eval()
    x = np.random.RandomState(1).randn(2, 2, 17, 32, 32).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
        ref_time = tm.time_logits(torch.from_numpy(x)).numpy()  # (B, classes, T')
        ref_feat = tm.forward_features(torch.from_numpy(x)).numpy()
    with jax.default_matmul_precision("float32"):
        got_time, got, got_feat = jitted_forward(fm, jnp.asarray(ncdhw_to_ndhwc(x)), "time_logits", "__call__",
                                                 "forward_features")
    assert ref_time.shape == (2, 5, 2)  # 17 frames -> Mixed_5c T=3 -> window 2 -> 2 logits in time
    assert rel_err(ref_time, np.transpose(got_time, (0, 2, 1))) < 1e-4
    assert rel_err(ref, got) < 1e-4
    np.testing.assert_allclose(ref, ref_time.mean(-1), rtol=1e-5, atol=1e-6)
    assert got_feat.shape == (2, 1024) and rel_err(ref_feat, got_feat) < 1e-4


def test_i3d_rejects_bad_input():
    model = nnx.eval_shape(lambda: v3d_flax.create_model("i3d", num_classes=4, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="NDHWC"):
        model(jnp.zeros((1, 3, 8, 32, 32)))  # NCDHW
    with pytest.raises(ValueError, match="NDHWC"):
        model(jnp.zeros((8, 32, 32, 3)))
    with pytest.raises(ValueError, match="endpoint"):
        model.forward_map(jnp.zeros((1, 8, 32, 32, 3)), "Mixed_6a")


# (input T, H, W), kernel, stride: odd and even sizes, stride 1 and 2, as in I3D's layers.
SAME_CASES = [((9, 13, 12), (7, 7, 7), (2, 2, 2)), ((4, 7, 8), (1, 3, 3), (1, 2, 2)),
              ((5, 6, 7), (3, 3, 3), (2, 2, 2)), ((5, 5, 5), (2, 2, 2), (2, 2, 2)), ((3, 4, 5), (3, 3, 3), (1, 1, 1))]


@pytest.mark.parametrize("size,kernel,stride", SAME_CASES)
def test_same_padding_matches_tensorflow(size, kernel, stride):
    """Conv and max-pool 'SAME' in both frameworks equal TensorFlow's ops (pools on negative inputs,
    where padding with zeros, as piergiaj's port does, would differ)."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.RandomState(0)
    x = (rng.randn(2, *size, 3) - 3.0).astype(np.float32)  # NDHWC, mostly negative
    w = rng.randn(*kernel, 3, 4).astype(np.float32)  # DHWIO, TF's layout
    tf_conv = tf.nn.conv3d(x, w, (1, *stride, 1), "SAME").numpy()
    tf_pool = tf.nn.max_pool3d(x, (1, *kernel, 1), (1, *stride, 1), "SAME").numpy()

    unit = Unit3D(3, 4, kernel, stride, use_bn=False, activation=False)
    with torch.no_grad():
        unit.conv3d.weight.copy_(torch.from_numpy(np.transpose(w, (4, 3, 0, 1, 2))))
        xt = torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 4, 1, 2, 3))))
        torch_conv = ncdhw_to_ndhwc(unit(xt).numpy())
        torch_pool = ncdhw_to_ndhwc(MaxPool3dSame(kernel, stride)(xt).numpy())
    conv = Conv3d(3, 4, kernel, stride, "SAME", rngs=nnx.Rngs(0))
    conv.kernel[...] = jnp.asarray(w)
    with jax.default_matmul_precision("float32"):
        flax_conv = np.asarray(conv(jnp.asarray(x)))
    flax_pool = np.asarray(max_pool3d(jnp.asarray(x), kernel, stride, "SAME"))

    assert tf_conv.shape == torch_conv.shape == flax_conv.shape
    assert rel_err(tf_conv, torch_conv) < 1e-5 and rel_err(tf_conv, flax_conv) < 1e-5
    np.testing.assert_array_equal(torch_pool, tf_pool)
    np.testing.assert_array_equal(flax_pool, tf_pool)
