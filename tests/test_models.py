"""Registry and input checks shared by every model."""

import jax.numpy as jnp
import pytest
from flax import nnx

import v3d_flax
import v3d_torch_ref


def test_both_registries_list_the_same_names():
    assert v3d_flax.list_models() == v3d_torch_ref.list_models()
    assert {"c3d", "r3d_18", "r3d_34", "mc3_18", "r2plus1d_18", "r2plus1d_34"} <= set(v3d_flax.list_models())


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"unknown model 'r3d_19'; available models: .*r3d_18"):
        v3d_flax.create_model("r3d_19", num_classes=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"unknown model 'r3d_19'; available models: .*r3d_18"):
        v3d_torch_ref.create_model("r3d_19", num_classes=2)


@pytest.fixture(scope="module")
def r3d():
    return v3d_flax.create_model("r3d_18", num_classes=3, rngs=nnx.Rngs(0))


def test_ncdhw_input_is_refused_with_the_layout_expected(r3d):
    with pytest.raises(ValueError, match=r"expects NDHWC input with 3 channels .*looks like NCDHW"):
        r3d(jnp.zeros((1, 3, 8, 32, 32)))


def test_wrong_rank_is_refused(r3d):
    with pytest.raises(ValueError, match="5-D NDHWC clip"):
        r3d(jnp.zeros((8, 32, 32, 3)))


def test_other_clip_sizes_work_with_global_pooling(r3d):
    r3d.eval()
    assert r3d(jnp.zeros((2, 4, 24, 40, 3))).shape == (2, 3)


def test_c3d_refuses_other_clip_sizes():
    model = v3d_flax.create_model("c3d", num_classes=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"built for 16x112x112 .*got 16x128x128"):
        model(jnp.zeros((1, 16, 128, 128, 3)))
    with pytest.raises(ValueError, match="at least 16 frames"):
        v3d_flax.create_model("c3d", num_classes=3, num_frames=8, crop_size=32, rngs=nnx.Rngs(0))
