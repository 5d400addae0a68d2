"""`train.py --compile-only --tpu-topology`: the Cloud TPU training step compiled here, without a TPU.

The real compile needs libtpu (XLA's TPU compiler, about 200 MB). It is not in the [test] extra: once
installed, every JAX process on this machine spends seconds probing for a TPU. The `tpu_python`
fixture installs it into a virtual environment of its own that sees the project's packages
(pip's cache makes later runs quick), and the compile runs there.
"""

from __future__ import annotations

import re
import subprocess
import sys
import venv

import jax
import pytest
import trainrun

from v3d_flax.train.compile_only import TopologyError, collectives_of, parse_topology

QUIET = dict(TPU_SKIP_MDS_QUERY="1", TF_CPP_MIN_LOG_LEVEL="3")


def _train(args, python=sys.executable, timeout=120):
    return subprocess.run([python, trainrun.TRAIN, *args], env=trainrun.env(**QUIET), cwd=trainrun.REPO,
                          capture_output=True, text=True, timeout=timeout)


def _has_libtpu(python: str) -> bool:
    return subprocess.run([python, "-c", "import libtpu"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def tpu_python(tmp_path_factory) -> str:
    """A Python with libtpu beside this environment's packages (this one, if it already has libtpu)."""
    if _has_libtpu(sys.executable):
        return sys.executable
    root = tmp_path_factory.mktemp("libtpu-venv")
    venv.create(root, system_site_packages=True, with_pip=True)
    python = str(root / "bin" / "python")
    pip = subprocess.run([python, "-m", "pip", "install", "-q", f"jax[tpu]=={jax.__version__}"],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, f"installing libtpu failed (it needs the package index):\n{pip.stderr[-2000:]}"
    return python


def test_topology_names_are_checked_before_anything_is_built():
    assert parse_topology("v5e:2x4").name == "TPU v5e" and parse_topology("v4:2x2x4").hbm_bytes == 32 * 2 ** 30
    for bad in ("v5e", "v9:2x2", "v5e:2x", "tpu:2x2"):
        with pytest.raises(TopologyError, match="expected GENERATION:GRID"):
            parse_topology(bad)
    proc = _train(["--model", "r3d_18", "--compile-only", "--tpu-topology", "v9:2x2"])
    assert proc.returncode == 2 and "expected GENERATION:GRID" in proc.stderr and "Traceback" not in proc.stderr
    proc = _train(["--model", "r3d_18", "--compile-only"])
    assert proc.returncode == 2 and "--compile-only and --tpu-topology go together" in proc.stderr


@pytest.mark.skipif(_has_libtpu(sys.executable), reason="this environment has libtpu")
def test_without_libtpu_it_says_what_to_install_in_one_line():
    proc = _train(["--model", "r3d_18", "--compile-only", "--tpu-topology", "v5e:2x2"])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"pip install 'jax[tpu]=={jax.__version__}'" in proc.stderr


def test_collectives_are_read_from_optimised_hlo():
    hlo = """
  %all-reduce = f32[64]{0:T(128)} all-reduce(%x), channel_id=1, to_apply=%add
  %all-reduce-start.2 = (f32[3,3,64]{2,1,0}, bf16[10]{0}) all-reduce-start(%a, %b), channel_id=2
  %all-reduce-done.2 = (f32[3,3,64]{2,1,0}, bf16[10]{0}) all-reduce-done(%all-reduce-start.2)
  ROOT %all-gather-start = (f32[2,8]{1,0}, f32[8,8]{1,0}) all-gather-start(%y), dimensions={0}
"""
    found = collectives_of(hlo)
    assert found["all-reduce"] == {"count": 2, "bytes": 64 * 4 + 576 * 4 + 10 * 2, "elements": 64 + 576 + 10}
    assert found["all-gather"] == {"count": 1, "bytes": 64 * 4, "elements": 64}


def test_the_step_compiles_for_a_2x2_slice_and_reduces_only_gradients_and_moments(tpu_python):
    """The real step of a small model at a tiny clip, compiled for 4 v5e chips: it fits, its only
    collectives are all-reduces of the gradients and BatchNorm moments, the state is replicated."""
    proc = _train(["--model", "r3d_18", "--compile-only", "--tpu-topology", "v5e:2x2", "--num-frames", "4",
                   "--crop-size", "16", "--batch-size", "8", "--precision", "bf16"], python=tpu_python, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "r3d_18 on v5e:2x2 (4 chips" in out and "global batch 8 (2 per chip), bf16" in out
    assert "compiled: yes" in out and re.search(r"HBM per chip: [\d.]+ GiB of 14.90 GiB \(fits", out)
    assert re.search(r"roofline: [\d.]+ ms per step", out)
    collectives = re.findall(r"^  ([a-z-]+): \d+ ops", out, re.M)
    assert collectives == ["all-reduce"], out
    checks = re.findall(r"^  \[(ok|FAILED)\] ", out, re.M)
    assert checks == ["ok"] * 4, out
