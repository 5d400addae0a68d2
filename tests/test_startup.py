"""Start-up cost: create_model draws its weights in one program, bit-identical to an eager build, and
loading a checkpoint draws none."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax import monitoring

import v3d_flax
from v3d_flax import checkpoints, layers
from v3d_flax.registry import abstract_model

LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"  # once per program, cached on disk or not


class Programs:
    """Counts the XLA programs lowered (compiled, or fetched from the persistent cache) while active."""

    def __init__(self):
        self.count, self.active = 0, False
        monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kwargs):
        if self.active and event == LOWERING_EVENT:
            self.count += 1

    def __enter__(self):
        self.count, self.active = 0, True
        return self

    def __exit__(self, *exc):
        self.active = False


@pytest.fixture(scope="module")
def programs():
    return Programs()


def flat(tree) -> dict:
    out = {}
    for path, v in nnx.to_flat_state(nnx.state(tree)):
        x = v.get_value() if hasattr(v, "get_value") else v
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        out[path] = np.asarray(x)
    return out


def assert_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


class Tiny(nnx.Module):
    """Every initialiser the models use, a shared variable, a weight overwritten after its init (as C3D's
    fc6/fc7) and a dropout stream."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv = layers.Conv3d(3, 8, (3, 1, 1), use_bias=True, rngs=rngs)
        self.bn = layers.BatchNorm(8)
        self.fc = layers.Linear(600, 5, rngs=rngs)  # 3000 elements: rows of 256 and a partial one
        self.fc.kernel.set_value(layers.NormalInit(scale=2.0, mode="fan_in")(rngs.params(), (600, 5)))
        self.head = layers.Linear(5, 3, use_bias=False, rngs=rngs)
        self.tied = self.head.kernel
        self.dropout = nnx.Dropout(0.5, rngs=rngs)


def test_batched_build_equals_the_eager_build_bit_for_bit():
    r_eager, r_batched = nnx.Rngs(3, dropout=4), nnx.Rngs(3, dropout=4)
    eager = Tiny(rngs=r_eager)
    batched = layers.build_batched(Tiny, rngs=r_batched)
    assert nnx.graphdef(batched) == nnx.graphdef(eager)
    assert batched.tied is batched.head.kernel
    assert_identical(flat(batched), flat(eager))
    assert_identical(flat(r_batched), flat(r_eager))  # the caller's streams advanced alike
    # traced (the path eval_shape and jit take): the same values
    traced = jax.jit(lambda: nnx.state(layers.build_batched(Tiny, rngs=nnx.Rngs(3, dropout=4))))()
    assert_identical(flat(traced), flat(eager))


def test_create_model_compiles_a_fixed_number_of_programs(programs):
    # Built eagerly, every weight shape compiled its own init programs: 86 for x3d_xs.
    jax.clear_caches()  # count as a fresh process would (the persistent cache is counted too)
    with programs:
        model = v3d_flax.create_model("x3d_xs", num_classes=7, rngs=nnx.Rngs(0))
        jax.block_until_ready(nnx.state(model))
    assert programs.count <= 8, programs.count
    assert model.arch == "x3d_xs" and model.blocks[5].proj.kernel.shape == (2048, 7)


def test_loading_a_checkpoint_draws_no_random_weights(tmp_path, programs, monkeypatch):
    source = checkpoints.blank_model("x3d_xs", 7)
    rng = np.random.default_rng(0)
    for _, var in nnx.to_flat_state(nnx.state(source, nnx.Param)):
        var.set_value(jax.device_put(rng.standard_normal(var.get_value().shape).astype(np.float32)))
    path = tmp_path / "x3d_xs.safetensors"
    checkpoints.save_checkpoint(source, path)

    draws = []
    real_draw = layers._draw_rows

    def watched(*args):
        draws.append(args)  # not even traced: the abstract model is built eagerly, without draws
        return real_draw(*args)

    monkeypatch.setattr(layers, "_draw_rows", watched)
    jax.clear_caches()
    with programs:
        model = checkpoints.load_model("x3d_xs", path)
        jax.block_until_ready(nnx.state(model))
    assert not draws
    assert programs.count <= 6, programs.count  # the RNG streams' seed, fold_in, counter: none per weight
    assert_identical(checkpoints.flax_state(model), checkpoints.flax_state(source))


def test_abstract_model_has_eval_shapes_structure():
    abstract = abstract_model("r3d_18", num_classes=5)
    traced = nnx.eval_shape(lambda: v3d_flax.create_model("r3d_18", num_classes=5, rngs=nnx.Rngs(0)))
    assert nnx.graphdef(abstract) == nnx.graphdef(traced) and abstract.arch == "r3d_18"
    leaves = jax.tree.leaves(nnx.state(abstract)), jax.tree.leaves(nnx.state(traced))
    assert [(type(x), x.shape, x.dtype) for x in leaves[0]] == [(type(x), x.shape, x.dtype) for x in leaves[1]]
