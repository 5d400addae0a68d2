"""MViT (torchvision's mvit_v1_b, mvit_v2_s): Flax against the PyTorch reference, torchvision's state_dict
layout, the clip-size checks, and resize_state (weights of one clip size loaded into a model of another)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import v3d_flax
import v3d_torch_ref
from v3d_flax.registry import abstract_model
from parity import check_parity, flax_model_without_init, jitted_forward, rel_err
from v3d_flax import port
from v3d_flax.models import mvit as flax_mvit
from v3d_flax.train.remat import remat_blocks

MANIFESTS = os.path.join(os.path.dirname(__file__), "data", "state_dict_manifests.json")
MODELS = ["mvit_v1_b", "mvit_v2_s"]


# 4x32x32 clips: a 2x8x8 patch grid, pooled to 2x1x1 by the last stage. v2 at 40x40 (a 10x10 grid, pooled
# to 5, 3, 2) has odd grids where torchvision's table sizes (floor division) differ from the pooled grids,
# so its attention interpolates the relative position tables (blocks 3 to 15).
@pytest.mark.parametrize("name,crop", [("mvit_v1_b", 32), ("mvit_v2_s", 40)])
def test_mvit_parity(name, crop):
    check_parity(name, (2, 3, 4, crop, crop), num_frames=4, crop_size=crop)


def test_v2_tables_are_interpolated_at_odd_grids():
    """The 40x40 parity run above does go through the interpolation (and 224 does not)."""
    for crop, interpolated in ((40, True), (224, False)):
        model = abstract_model("mvit_v2_s", num_classes=3, num_frames=4, crop_size=crop)
        seen = []
        for block in model.blocks:
            a = block.attn
            seen.append(a.rel_pos_h.shape[0] != 2 * max(a.q_grid[1], a.kv_grid[1]) - 1)
        assert any(seen) == interpolated, crop


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_is_torchvisions(name):
    """Keys and shapes of torchvision's state_dict at 16x224x224, on both sides (the twin on the meta device)."""
    with open(MANIFESTS) as fh:
        manifest = {k: tuple(v) for k, v in json.load(fh)[f"torchvision/{name}"].items()}
    flax_shapes = port.torch_shapes(abstract_model(name, num_classes=400))
    assert flax_shapes == manifest
    with torch.device("meta"):
        twin = v3d_torch_ref.create_model(name, num_classes=400)
    assert {k: tuple(v.shape) for k, v in twin.state_dict().items()} == manifest
    assert list(twin.state_dict()) == list(manifest)  # torchvision's order too
    assert sum(int(np.prod(s)) for s in manifest.values()) == v3d_flax.registry.model_spec(name).published.params


@pytest.mark.parametrize("name", MODELS)
def test_torchvision_source_imports_a_twin_state_dict(name):
    torch.manual_seed(0)
    sd = v3d_torch_ref.create_model(name, num_classes=5, num_frames=4, crop_size=32).state_dict()
    model = flax_model_without_init(name, num_classes=5, num_frames=4, crop_size=32)
    port.from_torch(model, sd, source="torchvision")
    exported = port.to_torch(model)
    assert all(torch.equal(exported[k], v) for k, v in sd.items())


def test_structure_follows_torchvision():
    v1 = abstract_model("mvit_v1_b", num_classes=3)
    v2 = abstract_model("mvit_v2_s", num_classes=3)
    for model in (v1, v2):
        assert [i for i, b in enumerate(model.blocks) if b.pool_skip is not None] == [1, 3, 14]
        assert [b.attn.q_grid for b in model.blocks][::5] == [(8, 56, 56), (8, 14, 14), (8, 14, 14), (8, 7, 7)]
        assert model.blocks[0].attn.kv_grid == (8, 7, 7) and model.blocks[15].attn.kv_grid == (8, 7, 7)
        rates = [b.stochastic_depth.rate for b in model.blocks]
        np.testing.assert_allclose(rates, [0.2 * i / 15 for i in range(16)])
        assert model.head[0].rate == 0.5 and model.norm.eps == 1e-6
        assert len(remat_blocks(model)) == 20  # conv_proj, pos_encoding, the 16 blocks, norm, head
    assert [b.attn.pool_q is not None for b in v1.blocks] == [i in (1, 3, 14) for i in range(16)]
    assert all(b.attn.pool_q is not None for b in v2.blocks)
    # v1 widens the skip after the attention (from norm2), v2 before it (from norm1): the MLP's width
    assert v1.blocks[0].mlp[0].kernel.shape == (96, 384) and v2.blocks[1].mlp[0].kernel.shape == (192, 768)
    assert v2.blocks[1].attn.pool_q.pool.kernel.shape == (3, 3, 3, 1, 96)  # depthwise over head_dim 96


def test_blocks_take_one_array_and_remat():
    """Each block's __call__ takes the token array only (its grids are fixed at build), as `--remat`'s
    custom_vjp needs: train.py's step with --remat traces (shapes only, nothing compiled)."""
    from v3d_flax.train import TrainConfig, resolve
    from v3d_flax.train.state import build_model, build_optimizer, init_state, split_model
    from v3d_flax.train.steps import make_train_step

    model = nnx.eval_shape(lambda: build_model("mvit_v2_s", num_classes=5, num_frames=4, crop_size=32, seed=0,
                                               remat=True))
    assert all(type(b).__name__ == "RematMultiscaleBlock" for b in model.blocks)
    defs, mstate = split_model(model)
    tx, schedule = build_optimizer(resolve(TrainConfig(model="mvit_v2_s", workdir="-", lr=0.1, steps=10,
                                                       warmup_steps=0)), 10)
    state = jax.eval_shape(lambda m: init_state(m, tx), mstate)
    batch = {"video": jax.ShapeDtypeStruct((2, 4, 32, 32, 3), jnp.float32),
             "label": jax.ShapeDtypeStruct((2,), jnp.int32)}
    step = make_train_step(defs, tx, schedule, num_classes=5, label_smoothing=0.1, precision="fp32")
    new_state, metrics = jax.eval_shape(step, state, batch)
    assert jax.tree.structure(new_state["params"]) == jax.tree.structure(state["params"])


@pytest.mark.parametrize("name", MODELS)
def test_rejects_other_clip_sizes(name):
    model = abstract_model(name, num_classes=3, num_frames=4, crop_size=32)
    graphdef, state = nnx.split(model)
    for shape in ((1, 8, 32, 32, 3), (1, 4, 64, 64, 3)):
        with pytest.raises(ValueError, match=r"built for 4x32x32 clips.*num_frames/crop_size"):
            jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, jax.ShapeDtypeStruct(shape, jnp.float32))
    with pytest.raises(ValueError, match="NDHWC"):
        model(jnp.zeros((1, 3, 4, 32, 32)))
    for frames, crop in ((5, 32), (4, 30)):
        with pytest.raises(ValueError, match="even num_frames and a crop_size divisible by 4"):
            abstract_model(name, num_classes=3, num_frames=frames, crop_size=crop)


def test_resize_matrices_are_torchs():
    rng = np.random.RandomState(0)
    table = rng.randn(7, 5)
    for n in (3, 7, 13, 20):
        ref = torch.nn.functional.interpolate(torch.from_numpy(table.T[None]), size=n, mode="linear")[0].T.numpy()
        assert rel_err(ref, flax_mvit.linear_resize_matrix(7, n) @ table) < 1e-12
    grid = rng.randn(8, 8, 3)
    for n in (4, 8, 14):
        ref = torch.nn.functional.interpolate(torch.from_numpy(grid.transpose(2, 0, 1)[None]), size=(n, n),
                                              mode="bicubic", align_corners=False)[0].numpy().transpose(1, 2, 0)
        m = flax_mvit.cubic_resize_matrix(8, n)
        assert rel_err(ref, np.einsum("ih,jw,hwc->ijc", m, m, grid)) < 1e-12


@pytest.mark.parametrize("name", MODELS)
def test_resize_state(name):
    """Identity at the same size; tables and position embeddings resized to a model built for another clip,
    which then loads (`port.from_torch(..., resize=True)`) and runs."""
    torch.manual_seed(0)
    sd = {k: v.numpy() for k, v in v3d_torch_ref.create_model(name, num_classes=5, num_frames=4,
                                                                 crop_size=32).state_dict().items()}
    small = abstract_model(name, num_classes=5, num_frames=4, crop_size=32)
    same = flax_mvit.resize_state(sd, port.torch_shapes(small))
    assert same.keys() == sd.keys() and all(same[k] is sd[k] for k in sd)

    other = flax_model_without_init(name, num_classes=5, num_frames=6, crop_size=48)
    shapes = port.torch_shapes(other)
    resized = flax_mvit.resize_state(sd, shapes)
    changed = sorted(k for k in sd if resized[k].shape != sd[k].shape)
    assert all(resized[k].shape == shapes[k] for k in sd)
    assert all(np.array_equal(resized[k], sd[k]) for k in sd if k not in changed)
    if name == "mvit_v1_b":
        assert changed == ["pos_encoding.spatial_pos", "pos_encoding.temporal_pos"]
    else:
        assert changed and all(k.rsplit(".", 1)[1] in ("rel_pos_h", "rel_pos_w", "rel_pos_t") for k in changed)
    with pytest.raises(port.PortError):
        port.from_torch(other, sd)
    port.from_torch(other, sd, resize=True)
    other.eval()
    logits, = jitted_forward(other, jnp.asarray(np.random.RandomState(1).randn(1, 6, 48, 48, 3), jnp.float32),
                             "__call__")
    assert logits.shape == (1, 5) and np.all(np.isfinite(logits))
