"""Parity of the seed's building blocks, and what a frame-by-frame 2D conv cannot see."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from parity import ncdhw_to_ndhwc, randomize_batchnorm, rel_err
from v3d_flax import archfacts
from v3d_flax import blocks as fb
from v3d_flax import port
from v3d_torch_ref import blocks as tb

BLOCKS = {
    "conv3d_block": (dict(in_channels=3, out_channels=8), {}),
    "conv3d_block_pooled": (dict(in_channels=3, out_channels=8, pool_size=(1, 2, 2), pool_stride=(1, 2, 2)), {}),
    "spatiotemporal": (dict(in_channels=4, out_channels=8, stride=2), {}),
    "residual_3d": (dict(inplanes=4, planes=8, stride=2), dict(conv="3d")),
    "residual_keep_time": (dict(inplanes=4, planes=8, stride=2), dict(conv="3d", downsample_temporal=False)),
    "residual_no_temporal": (dict(inplanes=8, planes=8, stride=1), dict(conv="no_temporal")),
    "residual_2plus1d": (dict(inplanes=4, planes=8, stride=2), dict(conv="2plus1d")),
    "framewise_2d": (dict(in_channels=3, out_channels=8), {}),
}
CLASSES = {"conv3d_block": "Conv3DBlock", "conv3d_block_pooled": "Conv3DBlock", "spatiotemporal": "SpatioTemporalConv",
           "residual_3d": "Residual3DBlock", "residual_keep_time": "Residual3DBlock",
           "residual_no_temporal": "Residual3DBlock", "residual_2plus1d": "Residual3DBlock",
           "framewise_2d": "FramewiseConv2d"}


def _pair(key):
    args, kw = BLOCKS[key]
    torch.manual_seed(0)
    t = getattr(tb, CLASSES[key])(*args.values(), **kw)
    randomize_batchnorm(t)
    f = getattr(fb, CLASSES[key])(*args.values(), **kw, rngs=nnx.Rngs(1))
    port.from_torch(f, t.state_dict())
    return t, f


@pytest.mark.parametrize("key", sorted(BLOCKS))
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_block_parity(key, mode):
    t, f = _pair(key)
    getattr(t, mode)()
    getattr(f, mode)()
    cin = BLOCKS[key][0].get("in_channels", BLOCKS[key][0].get("inplanes"))
    x = np.random.RandomState(0).randn(2, cin, 4, 8, 8).astype(np.float32)
    with torch.no_grad():
        ref = t(torch.from_numpy(x)).numpy()
    with jax.default_matmul_precision("float32"):
        got = f(jnp.asarray(ncdhw_to_ndhwc(x)))
    assert rel_err(ncdhw_to_ndhwc(ref), got) < 1e-5
    if mode == "train":
        exported = port.to_torch(f)
        for k, v in t.state_dict().items():
            assert rel_err(v.numpy(), exported[k].numpy()) < 1e-5, k


def test_residual_downsample_temporal_controls_time_stride():
    x = jnp.zeros((1, 8, 8, 8, 4))
    keep = fb.Residual3DBlock(4, 8, 2, downsample_temporal=False, rngs=nnx.Rngs(0))
    halve = fb.Residual3DBlock(4, 8, 2, rngs=nnx.Rngs(0))
    assert keep(x).shape == (1, 8, 4, 4, 8)
    assert halve(x).shape == (1, 4, 4, 4, 8)


def test_spatiotemporal_mid_channels_match_3d_parameters():
    # torchvision's formula: layer2.0.conv2 of R(2+1)D-18 is 128 -> 230 -> 128
    assert archfacts.midplanes(64, 128) == 230
    flax_block = nnx.eval_shape(lambda: fb.Residual3DBlock(64, 128, 2, conv="2plus1d", rngs=nnx.Rngs(0)))
    assert flax_block.conv2[0][0].kernel.shape[-1] == 230
    assert tb.Residual3DBlock(64, 128, 2, conv="2plus1d").conv2[0][0].weight.shape[0] == 230
    counts = archfacts.conv_param_counts(64, 64)
    assert counts["2d"] * 3 == counts["3d"]
    assert abs(counts["(2+1)d"] - counts["3d"]) / counts["3d"] < 0.01


def test_framewise_2d_equals_1xkxk_3d_conv_and_ignores_frame_order():
    f2d = fb.FramewiseConv2d(3, 8, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.RandomState(0).randn(2, 6, 10, 10, 3).astype(np.float32))
    with jax.default_matmul_precision("float32"):
        as_3d = f2d.conv(x)  # the same kernel as a (1, 3, 3) 3D conv
        y = f2d(x)
        assert rel_err(as_3d, y) < 1e-6
        perm = np.array([3, 0, 5, 1, 4, 2])
        # A 2D conv per frame commutes with shuffling frames: motion is invisible to it ...
        assert rel_err(y[:, perm], f2d(x[:, perm])) < 1e-6
        # ... while a 3x3x3 conv does not.
        c3 = fb.Conv3DBlock(3, 8, rngs=nnx.Rngs(0))
        c3.eval()
        assert rel_err(c3(x)[:, perm], c3(x[:, perm])) > 1e-2
