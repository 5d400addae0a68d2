"""Every conv3d formulation equals lax.conv_general_dilated, forward and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from v3d_flax import conv as conv_ops

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


# Every formulation that is not XLA's own conv, on every case it covers; "auto" as CPU picks it.
IMPL_CASES = [(impl, case) for impl in ("auto", "time2d", "time2d_lax_grad", "im2col", "shift_add")
              for case in CASES if _applies(impl, case)]


@pytest.mark.parametrize("impl,case", IMPL_CASES,
                         ids=[f"{i}-x{c[0]}k{c[1]}s{c[2]}g{c[4]}d{c[5]}" for i, c in IMPL_CASES])
def test_formulation_equals_lax_forward_and_gradients(impl, case):
    _, _, strides, padding, groups, dilation = case
    x, k = _operands(case)
    kw = dict(strides=strides, padding=padding, groups=groups, dilation=dilation)
    ref = lambda x, k: conv_ops.conv3d_lax(x, k, **kw)
    with jax.default_matmul_precision("float32"), conv_ops.conv_impl(impl):
        f = lambda x, k: conv_ops.conv3d(x, k, **kw)
        assert impl == "auto" or conv_ops.select_impl(x, k, strides=strides, groups=groups,
                                                      dilation=dilation) == impl

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
    sel = lambda k, groups=1, strides=(1, 1, 1): conv_ops.select_impl(x, jnp.zeros(k), strides=strides,
                                                                      groups=groups, dilation=(1, 1, 1))
    assert jax.default_backend() == "cpu"
    assert sel((3, 3, 3, 1, 8), groups=8) == "shift_add"
    assert sel((3, 3, 3, 8, 8)) == sel((1, 3, 3, 8, 8)) == "time2d_lax_grad"  # stride 1, spatial kernel
    assert sel((3, 3, 3, 8, 8), strides=(2, 2, 2)) == sel((3, 1, 1, 8, 8)) == "time2d"
    assert conv_ops.select_impl(jnp.zeros((1, 4, 16, 16, 3)), jnp.zeros((3, 7, 7, 3, 8)), strides=(1, 1, 1),
                                groups=1, dilation=(1, 1, 1)) == "im2col"
    with conv_ops.conv_impl("lax"):
        assert sel((3, 3, 3, 1, 8), groups=8) == "lax"
    with conv_ops.conv_impl("shift_add"):  # does not apply to a dense conv: falls back to auto
        assert sel((3, 3, 3, 8, 8)) == "time2d_lax_grad"
    with conv_ops.conv_impl("time2d"):
        assert sel((3, 3, 3, 8, 8)) == "time2d"


def test_environment_override(monkeypatch):
    x, k = jnp.zeros((1, 4, 8, 8, 4)), jnp.zeros((3, 3, 3, 4, 4))
    monkeypatch.setenv("V3D_CONV_IMPL", "lax")
    assert conv_ops.select_impl(x, k, strides=(1, 1, 1), groups=1, dilation=(1, 1, 1)) == "lax"
    with conv_ops.conv_impl("time2d"):  # the context manager wins over the variable
        assert conv_ops.select_impl(x, k, strides=(1, 1, 1), groups=1, dilation=(1, 1, 1)) == "time2d"
    monkeypatch.setenv("V3D_CONV_IMPL", "fast")
    with pytest.raises(ValueError, match="V3D_CONV_IMPL"):
        conv_ops.conv3d(x, k, strides=(1, 1, 1), padding=((1, 1),) * 3)
    with pytest.raises(ValueError, match="unknown conv implementation"):
        with conv_ops.conv_impl("fast"):
            pass


def test_bad_operands_are_refused():
    x = jnp.zeros((1, 4, 8, 8, 4))
    with pytest.raises(ValueError, match="channels"):
        conv_ops.conv3d(x, jnp.zeros((3, 3, 3, 3, 4)), strides=(1, 1, 1), padding=((1, 1),) * 3)
    with pytest.raises(ValueError, match="NDHWC"):
        conv_ops.conv3d(x[0], jnp.zeros((3, 3, 3, 4, 4)), strides=(1, 1, 1), padding=((1, 1),) * 3)
    with conv_ops.conv_impl("time2d"), pytest.raises(ValueError, match="frames"):
        conv_ops.conv3d(x[:, :1], jnp.zeros((3, 3, 3, 4, 4)), strides=(1, 1, 1), padding=((0, 0),) * 3)
