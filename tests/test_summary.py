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
