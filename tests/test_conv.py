"""Every conv3d formulation equals lax.conv_general_dilated, forward and gradients; Conv3d computes
with the formulation its `impl` field names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from v3d_flax import conv as conv_ops
from v3d_flax import layers, onednn

# (x shape NDHWC, kernel DHWIO, strides, padding, groups, dilation)
CASES = [
    ((2, 5, 9, 8, 6), (3, 3, 3, 6, 4), (1, 1, 1), ((1, 1), (1, 1), (1, 1)), 1, (1, 1, 1)),
    ((2, 7, 9, 8, 6), (3, 2, 3, 3, 4), (2, 2, 1), ((2, 0), (0, 1), (1, 2)), 2, (1, 1, 1)),
    ((1, 6, 10, 7, 4), (3, 3, 3, 4, 5), (1, 2, 2), ((1, 1), (0, 2), (1, 0)), 1, (2, 1, 2)),
    ((2, 7, 9, 8, 6), (3, 1, 1, 6, 4), (2, 2, 1), ((1, 1), (0, 0), (0, 0)), 1, (1, 1, 1)),
    ((2, 3, 9, 8, 6), (1, 1, 1, 6, 4), (1, 2, 2), ((0, 0), (0, 0), (0, 0)), 1, (1, 1, 1)),
    ((2, 4, 2, 2, 8), (3, 3, 3, 8, 4), (1, 1, 1), ((1, 1), (1, 1), (1, 1)), 1, (1, 1, 1)),  # tiny map
    ((2, 4, 8, 8, 3), (3, 7, 7, 3, 4), (1, 1, 1), ((1, 1), (3, 3), (3, 3)), 1, (1, 1, 1)),  # RGB stem
    ((2, 7, 9, 8, 6), (3, 3, 3, 1, 6), (1, 2, 2), ((1, 1), (1, 1), (1, 1)), 6, (1, 1, 1)),  # depthwise
    ((2, 7, 9, 8, 6), (3, 3, 3, 1, 12), (2, 1, 2), ((0, 1), (2, 1), (1, 1)), 6, (2, 1, 2)),  # depthwise x2
    ((1, 5, 6, 6, 4), (5, 1, 1, 1, 4), (1, 1, 1), ((2, 2), (0, 0), (0, 0)), 4, (1, 1, 1)),  # temporal dw
]


def _operands(case, seed=0):
    xs, ks = case[0], case[1]
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal(xs), jnp.float32),
            jnp.asarray(rng.standard_normal(ks), jnp.float32))


def _loss(f):
    return lambda x, k: jnp.sum(jnp.sin(f(x, k)))


def _applies(impl, case):
    """Whether `impl` computes this case itself (otherwise conv3d falls back to another formulation)."""
    xs, ks, strides, _, groups, dilation = case
    if impl == "shift_add":
        return groups > 1 and groups == xs[-1]
    if impl == "im2col":
        return groups == 1 and strides == (1, 1, 1) and dilation == (1, 1, 1)
    if impl == "time2d_lax_grad":
        return groups == 1 and strides == (1, 1, 1) and ks[1:3] != (1, 1)
    return True


def _onednn_runs() -> bool:
    return jax.default_backend() == "cpu" and onednn.available()


# Every formulation that is not XLA's own conv, on every case it covers; "auto" as CPU picks it.
IMPL_CASES = [(impl, case) for impl in ("auto", "xla", "time2d", "time2d_lax_grad", "im2col", "shift_add", "onednn")
              for case in CASES if _applies(impl, case)]


@pytest.mark.accelerator
@pytest.mark.parametrize("impl,case", IMPL_CASES,
                         ids=[f"{i}-x{c[0]}k{c[1]}s{c[2]}g{c[4]}d{c[5]}" for i, c in IMPL_CASES])
def test_formulation_equals_lax_forward_and_gradients(impl, case):
    if impl == "onednn" and not _onednn_runs():
        pytest.skip("oneDNN convs run on CPU only, where the extension builds")
    _, _, strides, padding, groups, dilation = case
    x, k = _operands(case)
    kw = dict(strides=strides, padding=padding, groups=groups, dilation=dilation)
    ref = lambda x, k: conv_ops.conv3d_lax(x, k, **kw)
    with jax.default_matmul_precision("float32"):
        f = lambda x, k: conv_ops.conv3d(x, k, **kw, impl=impl)
        assert impl in ("auto", "xla") or conv_ops.select_impl(x, k, strides=strides, groups=groups,
                                                      dilation=dilation, impl=impl) == impl

        @jax.jit  # one compile for both formulations, forward and gradients
        def both(x, k):
            return (f(x, k), ref(x, k), jax.grad(_loss(f), argnums=(0, 1))(x, k),
                    jax.grad(_loss(ref), argnums=(0, 1))(x, k))

        y, y_ref, g, g_ref = both(x, k)
    assert y.shape == y_ref.shape
    for got, want in [(y, y_ref), (g[0], g_ref[0]), (g[1], g_ref[1])]:
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5,
                                   atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_auto_selection_on_cpu():
    x = jnp.zeros((1, 4, 16, 16, 8))
    sel = lambda k, groups=1, strides=(1, 1, 1), impl="auto": conv_ops.select_impl(
        x, jnp.zeros(k), strides=strides, groups=groups, dilation=(1, 1, 1), impl=impl)
    assert jax.default_backend() == "cpu" and onednn.available()
    for k, groups, strides in [((3, 3, 3, 8, 8), 1, (1, 1, 1)), ((3, 3, 3, 8, 8), 1, (2, 2, 2)),
                               ((1, 1, 1, 8, 8), 1, (1, 1, 1)), ((3, 1, 1, 8, 8), 1, (1, 1, 1)),
                               ((3, 3, 3, 1, 8), 8, (1, 1, 1)), ((3, 3, 3, 2, 8), 4, (1, 2, 2))]:
        assert sel(k, groups, strides) == "onednn"
    assert conv_ops.select_impl(jnp.zeros((1, 4, 4, 4, 8)), jnp.zeros((3, 3, 3, 8, 8)), strides=(1, 1, 1),
                                groups=1, dilation=(1, 1, 1)) == "im2col"  # a map of 16 pixels
    assert conv_ops.select_impl(x.astype(jnp.float16), jnp.zeros((3, 3, 3, 8, 8), jnp.float16), strides=(1, 1, 1),
                                groups=1, dilation=(1, 1, 1)) == "time2d_lax_grad"  # oneDNN: f32, bf16 only
    # "xla": auto's choice without oneDNN
    sel = lambda k, groups=1, strides=(1, 1, 1), impl="xla": conv_ops.select_impl(
        x, jnp.zeros(k), strides=strides, groups=groups, dilation=(1, 1, 1), impl=impl)
    assert sel((3, 3, 3, 1, 8), groups=8) == "shift_add"
    assert sel((3, 3, 3, 8, 8)) == sel((1, 3, 3, 8, 8)) == "time2d_lax_grad"  # stride 1, spatial kernel
    assert sel((3, 3, 3, 8, 8), strides=(2, 2, 2)) == sel((3, 1, 1, 8, 8)) == "time2d"
    assert conv_ops.select_impl(jnp.zeros((1, 4, 16, 16, 3)), jnp.zeros((3, 7, 7, 3, 8)), strides=(1, 1, 1),
                                groups=1, dilation=(1, 1, 1), impl="xla") == "im2col"
    assert sel((3, 3, 3, 1, 8), groups=8, impl="lax") == "lax"
    assert conv_ops.select_impl(x, jnp.zeros((3, 3, 3, 8, 8)), strides=(1, 1, 1), groups=1, dilation=(1, 1, 1),
                                impl="shift_add") == "onednn"  # not a depthwise conv: auto's pick
    assert sel((3, 3, 3, 8, 8), impl="time2d") == "time2d"


def _conv_primitives(module, x):
    """(primitive name, operand rank) of every conv, matmul and custom-derivative call in module(x)'s trace."""
    eqns = jax.make_jaxpr(lambda x: module(x))(x).jaxpr.eqns  # a new function: traced afresh
    return [(e.primitive.name, e.invars[0].aval.ndim) for e in eqns
            if e.primitive.name in ("conv_general_dilated", "dot_general") or "custom_vjp" in e.primitive.name]


def test_conv3d_layer_computes_with_its_impl_field_and_set_conv_impl_changes_it():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, 8, 8, 8)), jnp.float32)
    conv = layers.Conv3d(8, 8, 3, padding=1, impl="lax", rngs=nnx.Rngs(0))
    assert _conv_primitives(conv, x) == [("conv_general_dilated", 5)]  # one native 3D conv
    want = conv(x)
    model = layers.Sequential([conv, layers.Conv3d(8, 8, 3, padding=1, rngs=nnx.Rngs(1))])
    assert model[1].impl == "auto"
    assert layers.set_conv_impl(model, "time2d") is model
    assert [m.impl for m in model] == ["time2d", "time2d"]
    assert _conv_primitives(conv, x) == [("conv_general_dilated", 4)] * 3  # one 2D conv per temporal tap
    np.testing.assert_allclose(np.asarray(conv(x)), np.asarray(want), rtol=1e-4, atol=1e-4)
    layers.set_conv_impl(model, "auto")  # on CPU: onednn, a custom_vjp around oneDNN's custom call
    assert _conv_primitives(conv, x) == [("custom_vjp_call", 5)]


def test_unknown_conv_impl_is_refused_with_the_choices():
    x, k = jnp.zeros((1, 4, 8, 8, 4)), jnp.zeros((3, 3, 3, 4, 4))
    model = layers.Sequential([layers.Conv3d(4, 4, 3, padding=1, rngs=nnx.Rngs(0))])
    with pytest.raises(ValueError, match=r"set_conv_impl: unknown conv implementation 'fast'; expected one of auto, xla, lax"):
        layers.set_conv_impl(model, "fast")
    assert model[0].impl == "auto"
    with pytest.raises(ValueError, match=r"Conv3d\(impl=...\): unknown conv implementation"):
        layers.Conv3d(4, 4, 3, impl="fast", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown conv implementation 'fast'"):
        conv_ops.conv3d(x, k, strides=(1, 1, 1), padding=((1, 1),) * 3, impl="fast")
    with pytest.raises(TypeError, match="nnx.Module"):
        layers.set_conv_impl({"conv": model}, "lax")


def test_bad_operands_are_refused():
    x = jnp.zeros((1, 4, 8, 8, 4))
    with pytest.raises(ValueError, match="channels"):
        conv_ops.conv3d(x, jnp.zeros((3, 3, 3, 3, 4)), strides=(1, 1, 1), padding=((1, 1),) * 3)
    with pytest.raises(ValueError, match="NDHWC"):
        conv_ops.conv3d(x[0], jnp.zeros((3, 3, 3, 4, 4)), strides=(1, 1, 1), padding=((1, 1),) * 3)
    with pytest.raises(ValueError, match="frames"):
        conv_ops.conv3d(x[:, :1], jnp.zeros((3, 3, 3, 4, 4)), strides=(1, 1, 1), padding=((0, 0),) * 3,
                        impl="time2d")
