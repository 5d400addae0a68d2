"""The model summary reproduces the published parameter and MAC counts."""

import pytest

from v3d_flax import summary
from v3d_flax.registry import list_models, model_spec


@pytest.mark.parametrize("name", [n for n in list_models() if model_spec(n).published])
def test_params_and_macs_match_published(name):
    published = model_spec(name).published
    params, gmacs = published.params, published.gmacs
    got = summary.summarize(name, num_classes=published.num_classes, xla=False)
    if isinstance(params, int):
        assert got.params == params
    else:  # published in millions, to two decimals
        assert round(got.params / 1e6, 2) == params
    if gmacs is not None:
        assert round(got.macs / 1e9, 2) == pytest.approx(gmacs, abs=0.011)


def test_xla_flops_are_about_twice_the_macs_minus_padding():
    # r3d_18 at 16x112x112: 40.70 GMACs; XLA counts 78.1 GFLOPs (padded taps skipped, 1.92x).
    got = summary.summarize("r3d_18", xla=True)
    assert 1.7 * got.macs < got.xla_flops < 2.0 * got.macs


def test_cli_prints_the_table_and_the_conv_comparison(capsys):
    assert summary.main(["--models", "mc3_18", "--no-xla"]) == 0
    out = capsys.readouterr().out
    assert "| mc3_18 | 16x112x112 | 11,695,440 | 43.34 |" in out
    assert "| 64 | 36,864 | 110,592 | 110,592 (144) | 3x |" in out


def test_macs_are_read_off_the_trace_without_patching_the_layers():
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from v3d_flax import layers

    calls = (layers.Conv3d.__call__, layers.Linear.__call__)
    conv = layers.Conv3d(6, 4, (3, 1, 3), padding=1, groups=2, impl="lax", rngs=nnx.Rngs(0))
    fc = layers.Linear(4, 5, rngs=nnx.Rngs(0))
    x = jax.ShapeDtypeStruct((2, 5, 7, 7, 6), jnp.float32)
    # conv: 2x5x9x7 outputs x 4 channels, each 3 input channels x 9 taps; linear: 2x5 outputs x 4 inputs
    want = 2 * 5 * 9 * 7 * 4 * 3 * 9 + 2 * 5 * 4
    forward = lambda x: fc(jnp.mean(conv(x), axis=(1, 2, 3)))
    assert summary.count_macs(jax.make_jaxpr(forward)(x)) == want
    assert summary.count_macs(jax.make_jaxpr(jax.jit(jax.checkpoint(forward)))(x)) == want  # nested jaxprs
    summary.summarize("x3d_xs", xla=False)
    assert (layers.Conv3d.__call__, layers.Linear.__call__) == calls
