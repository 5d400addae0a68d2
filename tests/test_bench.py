"""The benchmark harness's TPU memory-plan target (compiling for a TPU without one needs libtpu)."""

import importlib.util

import pytest

from benchmarks import harness


def test_remat_tpu_target_is_one_chip_of_the_topology_or_a_message_naming_libtpu():
    if importlib.util.find_spec("libtpu") is None:
        with pytest.raises(SystemExit, match=r"--remat-tpu v5e:2x2: no TPU compiler .*pip install 'jax\[tpu\]"):
            harness.tpu_chip_sharding("v5e:2x2")
    else:  # libtpu installed: XLA's TPU compiler runs here without a TPU
        sharding = harness.tpu_chip_sharding("v5e:2x2")
        assert [d.platform for d in sharding.device_set] == ["tpu"]


def test_bad_tpu_topology_is_refused_with_the_expected_form():
    with pytest.raises(SystemExit, match="a name such as v5e:2x2 or v4:2x2x1"):
        harness.tpu_chip_sharding("no-such-chip")


@pytest.mark.parametrize("per_clip,fixed,budget", [(100, 700, 4096), (7, 50, 60), (3, 10, 5000), (250, 100, 349)])
def test_remat_search_finds_the_largest_fitting_batch_of_a_nonlinear_plan(per_clip, fixed, budget):
    # small batches cost more per clip (as TPU plans do), so the 8 -> 16 line is only a first guess
    def plan(b):
        return fixed + per_clip * b + (200 if b < 8 else 0) + (b * b) // 40
    probes = []
    best, slope = harness._largest_fitting_batch(lambda b: probes.append(b) or plan(b), budget)
    expected = max([b for b in range(1, 10_000) if plan(b) <= budget], default=0)
    assert best == expected and slope >= per_clip
    assert len(set(probes)) <= 30  # each probe compiles: a bracket and a bisection, not a walk over batches


def test_remat_tpu_needs_a_budget(capsys):
    from benchmarks import bench_models
    with pytest.raises(SystemExit):
        bench_models.parse_args(["--models", "none", "--remat-tpu", "v5e:2x2"])
    assert "give it a --remat-budget-gib" in capsys.readouterr().err


def test_remat_search_treats_a_plan_the_compiler_refuses_as_not_fitting():
    # XLA's TPU compiler raises RESOURCE_EXHAUSTED above the chip's memory: the harness records None
    plan = lambda b: None if b > 50 else 100 + 10 * b
    assert harness._largest_fitting_batch(plan, budget=10_000) == (50, 10.0)
    assert harness._largest_fitting_batch(lambda b: None, budget=10_000) == (0, None)


def test_unusable_tpu_target_fails_before_any_benchmark_and_writes_nothing(tmp_path):
    from benchmarks import bench_models
    out = tmp_path / "results"
    with pytest.raises(SystemExit, match="--remat-tpu no-such-chip: no TPU compiler"):
        bench_models.main(["--models", "r3d_18", "--remat-budget-gib", "4", "--remat-tpu", "no-such-chip",
                           "--out", str(out)])
    assert not out.exists()
