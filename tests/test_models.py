"""Registry, input checks and the model interface (`VideoModel`) shared by every model."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
import torch
from flax import nnx

import v3d_flax
import v3d_torch_ref
from v3d_flax.models import VideoModel
from v3d_flax.registry import abstract_model, model_spec


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


@pytest.mark.parametrize("name", v3d_flax.list_models())
def test_every_model_has_the_video_model_interface(name):
    """`VideoModel` in both frameworks: in_channels, num_features, forward_map (unpooled) and
    forward_features (B, num_features); shapes only (no weights drawn, nothing compiled; the logits'
    shapes are every parity test's)."""
    spec = model_spec(name)
    model = abstract_model(name, num_classes=5, **spec.size_kwargs(16, 32))
    assert isinstance(model, VideoModel)
    assert model.in_channels == 3
    shapes = spec.input_shapes((16, 32, 32), batch=2)
    x = tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes)
    graphdef, state = nnx.split(model)

    def forward(state, x):
        m = nnx.merge(graphdef, state)
        return m.forward_map(x), m.forward_features(x)

    trunk, features = jax.eval_shape(forward, state, x if len(x) > 1 else x[0])
    assert features.shape == (2, model.num_features)
    for fmap in trunk if spec.pathways == 2 else (trunk,):
        assert fmap.ndim == 5 and fmap.shape[0] == 2
    with torch.device("meta"):  # the reference's structure, without allocating its weights
        reference = v3d_torch_ref.create_model(name, num_classes=5, **spec.size_kwargs(16, 32))
    assert (reference.in_channels, reference.num_features) == (model.in_channels, model.num_features)
    assert callable(reference.forward_map) and callable(reference.forward_features)
    if spec.head_pool_kernel is not None:  # the hub's fixed head pool, under the one argument name
        abstract_model(name, num_classes=5, head_pool_kernel=spec.head_pool_kernel)
        with torch.device("meta"):
            v3d_torch_ref.create_model(name, num_classes=5, head_pool_kernel=spec.head_pool_kernel)


def test_architecture_facts_import_no_framework():
    """`v3d_flax.archfacts` (and the `VideoModel` protocol) serve both frameworks: importing them loads
    neither JAX, Flax nor PyTorch."""
    code = ("import sys, v3d_flax.archfacts, v3d_flax.models; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'torch')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
