"""SlowFast: Flax against the PyTorch reference, PyTorchVideo's slow-pathway sampling, head pooling, input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import v3d_flax
from parity import build_pair, check_parity, head_pair, ncdhw_to_ndhwc, rel_err
from v3d_flax.models import slowfast as flax_sf
from v3d_torch_ref.models import slowfast as torch_sf


@pytest.mark.parametrize("name", ["slowfast_r50", "slowfast_r101"])
def test_slowfast_parity(name):
    # 48x48 leaves res5 a 2x2 map; batch 2 x 2 slow frames keeps train-mode BN well-conditioned.
    # R101 differs from R50 in res4's depth (23 blocks) and the fusion convs' temporal kernel (5).
    check_parity(name, [(2, 3, 2, 48, 48), (2, 3, 8, 48, 48)])


def test_slowfast_r101_fusion_kernel():
    fm = nnx.eval_shape(lambda: v3d_flax.create_model("slowfast_r101", num_classes=6, rngs=nnx.Rngs(0)))
    assert fm.blocks[0].multipathway_fusion.conv_fast_to_slow.kernel.shape == (5, 1, 1, 8, 16)


@pytest.mark.parametrize("alpha", [2, 4, 8])
def test_slow_indices_equal_pytorchvideo_linspace(alpha):
    """PyTorchVideo's uniform_temporal_subsample: torch.linspace(0, T - 1, T // alpha), clamped, .long()."""
    for t in range(alpha, 257):
        ref = torch.clamp(torch.linspace(0, t - 1, t // alpha), 0, t - 1).long().numpy()
        np.testing.assert_array_equal(flax_sf.slow_indices(t, alpha), ref, err_msg=f"T={t}")
        assert torch_sf.slow_indices(t, alpha) == ref.tolist()
    # not a plain stride: 32 frames -> 8 at linspace(0, 31, 8) = 0, 4.43, 8.86, ... truncated
    assert flax_sf.slow_indices(32, 4).tolist() == [0, 4, 8, 13, 17, 22, 26, 31]


def test_pack_pathways_flax_equals_torch():
    clip = np.random.RandomState(0).randn(2, 3, 30, 4, 5).astype(np.float32)  # NCDHW
    slow_t, fast_t = torch_sf.pack_pathways(torch.from_numpy(clip), alpha=4)
    slow_f, fast_f = flax_sf.pack_pathways(jnp.asarray(ncdhw_to_ndhwc(clip)), alpha=4)
    assert slow_f.shape == (2, 7, 4, 5, 3)
    np.testing.assert_array_equal(np.asarray(slow_f), ncdhw_to_ndhwc(slow_t.numpy()))
    np.testing.assert_array_equal(np.asarray(fast_f), ncdhw_to_ndhwc(fast_t.numpy()))
    slow_np, _ = flax_sf.pack_pathways(ncdhw_to_ndhwc(clip))  # numpy in, numpy out
    np.testing.assert_array_equal(slow_np, ncdhw_to_ndhwc(slow_t.numpy()))
    with pytest.raises(ValueError, match="NDHWC"):
        flax_sf.pack_pathways(np.zeros((30, 4, 5, 3)))
    with pytest.raises(ValueError, match="alpha"):
        flax_sf.pack_pathways(np.zeros((1, 3, 4, 5, 3)), alpha=4)


def test_fixed_head_pool_kernels_match_reference_and_global_pool_at_their_size():
    """PyTorchVideo's fixed stride-1 head kernels ((8, 7, 7), (32, 7, 7) in its hub models): equal to
    global pooling where the final maps are the kernels' size, reproduced by both frameworks where
    they are larger (overlapping windows, then proj, then the mean over windows). The head alone
    (blocks 5 and 6) on random final maps: the full model's wiring of the kernels is pinned by
    test_pytorchvideo_head_kernels_fit_224_and_slide_at_256."""
    rng = np.random.RandomState(1)
    tm, fm = build_pair("slowfast_r50", num_classes=5, head_pool_kernel=((2, 1, 1), (8, 1, 1)))

    def logits(maps, kernels):  # the same head weights under fixed kernels, or global pooling (None)
        tm.blocks[5].pool_kernel = fm.blocks[5].pool_kernel = kernels
        return head_pair(tm, fm, maps, 5)

    def final_maps(slow_frames, fast_frames):  # post-ReLU res5 maps: 2048 slow, 256 fast channels
        return [rng.rand(1, 2048, slow_frames, 1, 1).astype(np.float32),
                rng.rand(1, 256, fast_frames, 1, 1).astype(np.float32)]

    fitting = final_maps(2, 8)
    ref, got = logits(fitting, ((2, 1, 1), (8, 1, 1)))
    assert rel_err(ref, got) < 1e-4
    ref_global, got_global = logits(fitting, None)
    assert rel_err(ref_global, got_global) < 1e-4
    np.testing.assert_allclose(got_global, got, rtol=1e-5, atol=1e-6)

    # final maps (3, 1, 1) / (12, 1, 1); kernels 2 and 11 give 2 windows each
    larger = final_maps(3, 12)
    ref, got = logits(larger, ((2, 1, 1), (11, 1, 1)))
    assert rel_err(ref, got) < 1e-4
    _, other = logits(larger, None)
    assert rel_err(got, other) > 1e-4  # overlapping windows weight the middle frames more than global pooling


def test_one_clip_is_packed_into_the_pair():
    """A single clip is split as PyTorchVideo's PackPathway does (slow frames 0 and 7 of 8) by the
    input check every forward starts with, before the pathways see it."""
    model = nnx.eval_shape(lambda: v3d_flax.create_model("slowfast_r50", num_classes=5, rngs=nnx.Rngs(0)))
    fast = jnp.asarray(np.random.RandomState(2).randn(1, 8, 32, 32, 3).astype(np.float32))
    for got, want in zip(model._check(fast), (fast[:, np.array([0, 7])], fast)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_slowfast_rejects_bad_input():
    model = nnx.eval_shape(lambda: v3d_flax.create_model("slowfast_r50", num_classes=3, rngs=nnx.Rngs(0)))
    slow, fast = jnp.zeros((1, 2, 32, 32, 3)), jnp.zeros((1, 8, 32, 32, 3))
    with pytest.raises(ValueError, match="pair"):
        model(jnp.zeros((8, 32, 32, 3)))
    with pytest.raises(ValueError, match="pair"):
        model((slow, fast, fast))
    with pytest.raises(ValueError, match="alpha"):
        model((slow, slow))
    with pytest.raises(ValueError, match="NDHWC"):
        model((jnp.zeros((1, 3, 2, 32, 32)), jnp.zeros((1, 3, 8, 32, 32))))


def test_pytorchvideo_head_kernels_fit_224_and_slide_at_256():
    model = nnx.eval_shape(lambda: v3d_flax.create_model(
        "slowfast_r50", num_classes=400, head_pool_kernel=v3d_flax.registry.model_spec("slowfast_r50").head_pool_kernel,
        rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)

    def pooled_shape(size):
        xs = (jax.ShapeDtypeStruct((1, 8, size, size, 3), jnp.float32),
              jax.ShapeDtypeStruct((1, 32, size, size, 3), jnp.float32))

        def pooled(s, x):  # the head's pool (blocks.5) of the final maps
            model = nnx.merge(graphdef, s)
            return model.blocks[5](model.forward_map(x))

        return jax.eval_shape(pooled, state, xs).shape

    assert pooled_shape(224) == (1, 1, 1, 1, 2304)  # one window: global pooling
    assert pooled_shape(256) == (1, 1, 2, 2, 2304)  # PyTorchVideo's 256 test crops: 2x2 overlapping windows
    with pytest.raises(ValueError, match="exceed the final maps"):
        pooled_shape(192)
