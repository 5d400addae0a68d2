"""X3D: Flax against the PyTorch reference, structure details of PyTorchVideo's X3D, head pooling, input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import v3d_flax
from parity import build_pair, check_parity, head_pair, rel_err
from v3d_flax.records.x3d import x3d_dims
from v3d_flax.models import x3d as flax_x3d
import v3d_torch_ref


def torch_x3d_create(name):
    return v3d_torch_ref.create_model(name, num_classes=7)


# X3D-XS/S/M share one network (they differ only in the clip they are trained on: the test below
# proves it, so one parity run covers the three); X3D-L is deeper (5, 10, 25, 15 blocks). 32x32
# leaves res5 a 1x1 map (8 values per BN channel in train mode); X3D-L's 59 blocks need 64x64 to
# stay near float32's conditioning limit (see parity.py).
@pytest.mark.parametrize("name,shape", [("x3d_xs", (2, 3, 4, 32, 32)), ("x3d_l", (2, 3, 4, 64, 64))])
def test_x3d_parity(name, shape):
    check_parity(name, shape)


@pytest.mark.parametrize("name", ["x3d_s", "x3d_m"])
def test_x3d_s_and_m_are_the_x3d_xs_network(name):
    """Same module graph, same variable shapes, same reference state_dict: x3d_xs's parity run is theirs."""
    def flax_tree(n):
        model = nnx.eval_shape(lambda: v3d_flax.create_model(n, num_classes=7, rngs=nnx.Rngs(0)))
        modules = [(path, type(m).__name__, sorted((k, repr(v)) for k, v in vars(m).items()
                                                   if isinstance(v, (int, float, str, tuple, type(None)))
                                                   and k != "arch"))  # the name itself
                   for path, m in nnx.iter_modules(model)]
        return modules, [(path, type(v).__name__, v.shape) for path, v in nnx.to_flat_state(nnx.state(model))]

    assert flax_tree(name) == flax_tree("x3d_xs")
    torch.manual_seed(0)
    ref = {k: v.shape for k, v in torch_x3d_create(name).state_dict().items()}
    torch.manual_seed(0)
    assert ref == {k: v.shape for k, v in torch_x3d_create("x3d_xs").state_dict().items()}
    assert repr(torch_x3d_create(name)) == repr(torch_x3d_create("x3d_xs"))


def test_x3d_structure_follows_pytorchvideo():
    model = nnx.eval_shape(lambda: v3d_flax.create_model("x3d_s", num_classes=400, rngs=nnx.Rngs(0)))
    stem = model.blocks[0].conv
    assert stem.conv_t.kernel.shape == (1, 3, 3, 3, 24)  # conv_t is the spatial conv (swapped names)
    assert stem.conv_xy.kernel.shape == (5, 1, 1, 1, 24) and stem.conv_xy.groups == 24  # temporal depthwise
    assert [len(s.res_blocks) for s in list(model.blocks)[1:5]] == [3, 5, 11, 7]
    for stage, (inner, se) in zip(list(model.blocks)[1:5], [(54, 8), (108, 8), (216, 16), (432, 32)]):
        for j, block in enumerate(stage.res_blocks):
            assert block.branch2.conv_b.groups == inner
            squeeze = block.branch2.norm_b[1]
            if j % 2 == 0:  # SE on blocks 0, 2, 4, ...
                assert squeeze.block[0].kernel.shape == (1, 1, 1, inner, se) and squeeze.block[0].bias is not None
            else:
                assert isinstance(squeeze, flax_x3d.Identity)
    first = model.blocks[1].res_blocks[0]
    assert first.branch1_conv is not None and first.branch1_norm is None  # 24 -> 24, stride 2: bare conv
    assert model.blocks[2].res_blocks[0].branch1_norm is not None
    assert model.blocks[5].pool.pre_conv.kernel.shape[-2:] == (192, 432)
    assert model.blocks[5].pool.post_conv.kernel.shape[-2:] == (432, 2048)
    # X3D-L (depth factor 5): 5, 10, 25, 15 blocks at create_x3d's widths
    assert x3d_dims(depth_factor=5.0) == (24, [(5, 54, 24), (10, 108, 48), (25, 216, 96), (15, 432, 192)])


def test_fixed_head_pool_kernel_matches_reference_and_global_pool_at_its_size():
    """PyTorchVideo's X3D pools its head with a kernel fixed by the build-time clip
    (T, ceil(crop / 32), ceil(crop / 32)); the ReLU after post_conv makes window pooling differ
    from global pooling on larger clips (XS built at 160 and tested at 182, as its hub recipe does).
    The head alone (block 5) on random final maps; the full model's kernel is pinned by
    test_pytorchvideo_head_kernel_is_the_final_map_of_its_build_clip."""
    tm, fm = build_pair("x3d_xs", num_classes=5, head_pool_kernel=(2, 2, 2))
    rng = np.random.RandomState(1)
    channels = fm.blocks[5].pool.pre_conv.kernel.shape[3]

    def logits(final_map, kernel):  # the same head weights under a fixed kernel, or global pooling (None)
        tm.blocks[5].pool.pool_kernel = fm.blocks[5].pool.pool_kernel = kernel
        return head_pair(tm, fm, [final_map], 5)

    fitting = rng.randn(1, channels, 2, 2, 2).astype(np.float32)
    ref, got = logits(fitting, (2, 2, 2))
    assert rel_err(ref, got) < 1e-4
    ref_global, got_global = logits(fitting, None)
    assert rel_err(ref_global, got_global) < 1e-4
    np.testing.assert_allclose(got_global, got, rtol=1e-5, atol=1e-6)
    larger = rng.randn(1, channels, 3, 3, 3).astype(np.float32)  # 8 overlapping windows
    ref, got = logits(larger, (2, 2, 2))
    assert rel_err(ref, got) < 1e-4
    _, other = logits(larger, None)
    assert rel_err(got, other) > 1e-4
    fm.blocks[5].pool.pool_kernel = (2, 2, 2)
    with pytest.raises(ValueError, match="head_pool_kernel"):
        fm.blocks[5](jnp.zeros((1, 1, 2, 2, channels)))  # a final map smaller than the kernel


def test_x3d_rejects_bad_input():
    model = nnx.eval_shape(lambda: v3d_flax.create_model("x3d_xs", num_classes=3, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="NDHWC"):
        model(jnp.zeros((1, 3, 4, 32, 32)))
    with pytest.raises(ValueError, match="NDHWC"):
        model(jnp.zeros((4, 32, 32, 3)))


@pytest.mark.parametrize("arch,frames,crop", [("x3d_xs", 4, 160), ("x3d_s", 13, 160), ("x3d_m", 16, 224),
                                              ("x3d_l", 16, 312)])
def test_pytorchvideo_head_kernel_is_the_final_map_of_its_build_clip(arch, frames, crop):
    """create_x3d's kernel (T, ceil(crop / 32), ceil(crop / 32)) covers the whole final map of the
    clip the hub model is built for, where global pooling is the same operation."""
    kernel = v3d_flax.registry.model_spec(arch).head_pool_kernel
    assert kernel == (frames, -(-crop // 32), -(-crop // 32))
    model = nnx.eval_shape(lambda: v3d_flax.create_model(arch, num_classes=400, head_pool_kernel=kernel,
                                                         rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((1, frames, crop, crop, 3), jnp.float32)
    trunk = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).forward_map(x), state, x)
    assert trunk.shape[1:4] == kernel
