"""The benchmark harness: its TPU memory-plan target (compiling for a TPU without one needs libtpu) and its FLOP count."""

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
def test_remat_search_finds_thelargest_fitting_batch_of_a_nonlinear_plan(per_clip, fixed, budget):
    # small batches cost more per clip (as TPU plans do), so the 8 -> 16 line is only a first guess
    def plan(b):
        return fixed + per_clip * b + (200 if b < 8 else 0) + (b * b) // 40
    probes = []
    best, slope = harness.largest_fitting_batch(lambda b: probes.append(b) or plan(b), budget)
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
    assert harness.largest_fitting_batch(plan, budget=10_000) == (50, 10.0)
    assert harness.largest_fitting_batch(lambda b: None, budget=10_000) == (0, None)


def test_unusable_tpu_target_fails_before_any_benchmark_and_writes_nothing(tmp_path):
    from benchmarks import bench_models
    out = tmp_path / "results"
    with pytest.raises(SystemExit, match="--remat-tpu no-such-chip: no TPU compiler"):
        bench_models.main(["--models", "r3d_18", "--remat-budget-gib", "4", "--remat-tpu", "no-such-chip",
                           "--out", str(out)])
    assert not out.exists()


def test_flops_are_the_models_analytic_count_and_mfu_uses_the_runs_peak():
    """2 x fvcore MACs forward (r3d_18 at 16x112x112: torchvision's published 40.70 GMACs), a train
    step 3 x that, whatever backend XLA compiles for; MFU against the matmul peak of the same run."""
    from v3d_flax.registry import model_spec
    from v3d_flax.summary import step_flops

    flops = step_flops("r3d_18", (16, 112, 112), 4, num_classes=400)
    assert round(flops["infer"] / 4 / 2e9, 2) == model_spec("r3d_18").published.gmacs == 40.70
    assert flops["train"] == 3 * flops["infer"]
    row = {"model": "r3d_18", "clip": "16x112x112", "batch": 4, "flax_train_s": 2.0, "flax_infer_s": 0.5,
           "train_utilisation": 0.1}
    harness.add_flops(row, {"jax": 1e12}, 400)
    assert row["train_mfu"] == flops["train"] / 2.0 / 1e12 and row["infer_mfu"] == flops["infer"] / 0.5 / 1e12
    assert row["train_gflop_per_clip"] == flops["train"] / 4 / 1e9 and "train_utilisation" not in row


def test_the_gpu_check_runs_without_tensorflow(tmp_path):
    """benchmarks/gpu_check.sh's accelerator tests collect, and its benchmark imports, where TensorFlow
    is absent (GPU images commonly ship JAX and torch only)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    script = (repo / "benchmarks" / "gpu_check.sh").read_text()
    files = re.search(r'^ACCELERATOR_TESTS="([^"]+)"', script, re.M).group(1).split()
    code = ("import importlib.abc, sys\n"
            "class NoTensorFlow(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets', 'tensorboard'):\n"
            "            raise ImportError(f'{name} is not installed here')\n"
            "sys.meta_path.insert(0, NoTensorFlow())\n"
            "import benchmarks.bench_models, benchmarks.harness, pytest\n"
            f"sys.exit(pytest.main(['-q', '-o', 'addopts=', '-p', 'no:cacheprovider', '-m', 'accelerator', '--co', *{files!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"(\d+)/\d+ tests collected", proc.stdout) and "error" not in proc.stdout.lower()


def test_input_benchmark_pins_its_cores_and_reports_clips_per_core(tmp_path):
    """bench_input --cores 1 runs the real pipeline on one core (its own process: the pinning is
    process-wide) and says so."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "benchmarks/bench_input.py", "--dataset", "v3d_synthetic_motion/tiny", "--data-dir",
           str(tmp_path), "--batch-size", "4", "--num-frames", "4", "--crop-size", "16", "--windows", "1",
           "--batches-per-window", "2", "--warmup-batches", "1", "--cores", "1", "--skip-eval"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "train pipeline on 1 core: batch 4, clip 4x16x16" in out.stdout and "per core" in out.stdout
    assert "eval pipeline" not in out.stdout
    bad = subprocess.run(cmd[:-3] + ["--cores", "0"], cwd=root, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--cores must be in [1," in bad.stderr
