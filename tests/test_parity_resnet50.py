"""PyTorchVideo's ResNet family (i3d_r50, slow_r50, c2d_r50, csn_r101, r2plus1d_r50): Flax against the
PyTorch reference, the layout that decides checkpoint compatibility, head pooling and input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import v3d_flax
from parity import build_pair, check_parity, head_pair, rel_err
from v3d_flax import port
from v3d_flax.models import resnet50 as flax_r50
from v3d_torch_ref.models import resnet50 as torch_r50


# 64x64 leaves res5 a 2x2 map and batch 2 gives train-mode BatchNorm 8+ values per channel. On such
# clips R(2+1)D-50 (98 BN layers) and CSN-101 are ill-conditioned in float32 (PyTorch's own train
# output sits 3e-4..5e-4 from its float64 one): check_parity then bounds by that (see parity.py).
@pytest.mark.parametrize("name,shape", [
    ("i3d_r50", (2, 3, 4, 48, 48)),  # 5x7x7 stem, 3-1 alternating conv_a, (2, 1, 1) pool as blocks.2
    ("slow_r50", (2, 3, 4, 64, 64)),  # 1x1x1 conv_a in res2/res3, temporal 3 from res4 on
    ("c2d_r50", (2, 3, 4, 64, 64)),  # every conv 2D, the stage pool as blocks.2
    ("csn_r101", (2, 3, 4, 64, 64)),  # depthwise 3x3x3 conv_b, 101 layers
    ("r2plus1d_r50", (2, 3, 4, 64, 64)),  # temporal-first (2+1)D conv_b, temporal strides in res4/res5
])
def test_full_parity(name, shape):
    check_parity(name, shape)


@pytest.mark.parametrize("name", ["i3d_r50", "slow_r50", "c2d_r50", "csn_r101", "r2plus1d_r50"])
def test_feature_width(name):
    features = jax.eval_shape(lambda x: v3d_flax.create_model(name, num_classes=6, rngs=nnx.Rngs(0))
                              .forward_features(x), jax.ShapeDtypeStruct((1, 4, 32, 32, 3), jnp.float32))
    assert features.shape == (1, 2048)


def test_pytorchvideo_layout():
    """Where PyTorchVideo puts things: the stage pool at blocks.2 (c2d/i3d), head index, kernels."""
    shapes = {n: port.torch_shapes(nnx.eval_shape(lambda n=n: v3d_flax.create_model(n, num_classes=400,
                                                                                     rngs=nnx.Rngs(0))))
              for n in ("i3d_r50", "slow_r50", "c2d_r50", "csn_r101", "r2plus1d_r50")}
    assert "blocks.6.proj.weight" in shapes["i3d_r50"] and "blocks.6.proj.weight" in shapes["c2d_r50"]
    assert not any(k.startswith("blocks.2.") for k in shapes["i3d_r50"])  # the weightless max-pool
    assert "blocks.5.proj.weight" in shapes["slow_r50"] and "blocks.5.proj.weight" in shapes["csn_r101"]
    i3d = shapes["i3d_r50"]
    assert i3d["blocks.0.conv.weight"] == (64, 3, 5, 7, 7)
    assert [i3d[f"blocks.3.res_blocks.{j}.branch2.conv_a.weight"][2] for j in range(4)] == [3, 1, 3, 1]
    assert [i3d[f"blocks.5.res_blocks.{j}.branch2.conv_a.weight"][2] for j in range(3)] == [1, 3, 1]
    assert shapes["slow_r50"]["blocks.2.res_blocks.0.branch2.conv_a.weight"][2] == 1
    assert shapes["slow_r50"]["blocks.3.res_blocks.0.branch2.conv_a.weight"][2] == 3
    assert shapes["csn_r101"]["blocks.3.res_blocks.22.branch2.conv_b.weight"] == (256, 1, 3, 3, 3)
    r21 = shapes["r2plus1d_r50"]
    assert r21["blocks.1.res_blocks.0.branch2.conv_b.conv_t.weight"] == (64, 64, 3, 1, 1)
    assert r21["blocks.1.res_blocks.0.branch2.conv_b.conv_xy.weight"] == (64, 64, 1, 3, 3)
    counts = {n: sum(int(np.prod(s)) for k, s in sh.items() if not k.endswith(("running_mean", "running_var",
                                                                                "num_batches_tracked")))
              for n, sh in shapes.items()}
    assert counts == {"i3d_r50": 28_043_472, "slow_r50": 32_454_096, "c2d_r50": 24_327_632,
                      "csn_r101": 22_213_776, "r2plus1d_r50": 28_107_600}


# csn_r101 is left out only for time (tracing 101 layers at 32x224x224); its strides use the same code.
@pytest.mark.parametrize("name", ["i3d_r50", "slow_r50", "c2d_r50", "r2plus1d_r50"])
def test_feature_map_at_canonical_clip_equals_hub_head_pool(name):
    """At the canonical clip the last map is exactly the hub model's fixed head-pool kernel, so the
    global pool (our default) and PyTorchVideo's AvgPool3d coincide there."""
    t, h, w = v3d_flax.registry.model_spec(name).clip
    out = jax.eval_shape(lambda x: v3d_flax.create_model(name, num_classes=400, rngs=nnx.Rngs(0)).forward_map(x),
                         jax.ShapeDtypeStruct((1, t, h, w, 3), jnp.float32))
    assert out.shape[1:4] == v3d_flax.registry.model_spec(name).head_pool_kernel and out.shape[4] == 2048


def test_fixed_head_pool_kernel_matches_reference():
    """head_pool_kernel reproduces PyTorchVideo's stride-1 AvgPool3d head on a map larger than the kernel
    (overlapping windows, proj, then the mean over windows); equal to global pooling where they fit.
    The head alone (the last block) on random final maps."""
    rng = np.random.RandomState(2)
    tm, fm = build_pair("c2d_r50", num_classes=5, head_pool_kernel=(2, 1, 2))
    head = len(fm.blocks) - 1

    def logits(final_map, kernel):  # the same head weights under a fixed kernel, or global pooling (None)
        tm.blocks[head].pool_kernel = fm.blocks[head].pool_kernel = kernel
        return head_pair(tm, fm, [final_map], head)

    final_map = rng.rand(1, 2048, 4, 2, 2).astype(np.float32)  # c2d's res5 map of an 8x64x64 clip
    ref, got = logits(final_map, (2, 1, 2))
    assert rel_err(ref, got) < 1e-4
    ref_global, got_global = logits(final_map, None)
    assert rel_err(ref_global, got_global) < 1e-4
    assert rel_err(got_global, got) > 1e-3  # overlapping windows differ from a global mean here
    _, got_fit = logits(final_map, (4, 2, 2))
    np.testing.assert_allclose(got_fit, got_global, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="head_pool_kernel=None"):
        fm.blocks[head](jnp.zeros((1, 1, 1, 1, 2048)))  # a final map smaller than the kernel


def test_other_clip_sizes_and_input_checks():
    model = nnx.eval_shape(lambda: v3d_flax.create_model("slow_r50", num_classes=3, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    clip = jax.ShapeDtypeStruct((1, 3, 24, 40, 3), jnp.float32)
    assert jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, clip).shape == (1, 3)
    with pytest.raises(ValueError, match="NDHWC"):
        model(jnp.zeros((1, 3, 4, 32, 32)))  # NCDHW
    with pytest.raises(ValueError, match="NDHWC"):
        model(jnp.zeros((4, 32, 32, 3)))
    i3d = nnx.eval_shape(lambda: v3d_flax.create_model("i3d_r50", num_classes=3, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="at least 2 frames"):
        i3d(jnp.zeros((1, 1, 32, 32, 3)))
    with pytest.raises(ValueError, match="conv_b kind"):
        flax_r50.make_conv_b("3d", 8, (1, 1, 1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="conv_b kind"):
        torch_r50.make_conv_b("3d", 8, (1, 1, 1))
