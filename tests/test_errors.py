"""Errors that a user can act on: short key summaries, the model a checkpoint belongs to, fast usage errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

import v3d_flax
from v3d_flax import port

ROOT = Path(__file__).resolve().parent.parent
# A usage error must not wait for JAX/Flax: importing them alone takes 2.5-5 s on this 2-core machine,
# the light parse 0.4-0.6 s.
PARSE_SECONDS = 2.0


def test_port_error_summarises_long_key_lists_and_keeps_them_all(manifests):
    """The issue's case: r3d_18's state_dict into x3d_xs printed one 26 KB line of 480 missing keys."""
    r3d = {k: np.zeros(s, np.float32) for k, s in manifests["torchvision/r3d_18"].items()}
    x3d = nnx.eval_shape(lambda: v3d_flax.create_model("x3d_xs", num_classes=5, rngs=nnx.Rngs(0)))
    with pytest.raises(port.PortError) as err:
        port.from_torch(x3d, r3d)
    msg = str(err.value)
    assert len(msg) < 1000, msg
    assert "missing keys (480): by module: blocks.0 6, blocks.1 54, " in msg  # counts per module
    assert "unexpected keys (122)" in msg and "layer1 24, layer2 30" in msg
    assert "first: blocks.0.conv.conv_t.weight, " in msg and "(476 more)" in msg  # the first names
    assert err.value.unexpected == sorted(r3d) and len(err.value.missing) == 480
    assert err.value.report.unexpected is err.value.unexpected
    short = port.PortReport(missing=["a.weight", "b.bias"])
    assert short.describe() == "missing keys (2): a.weight, b.bias"  # short lists are written out
    assert "layer4.1.conv2.1.running_var" in port.PortReport(unexpected=sorted(r3d)).describe(limit=None)


def _timed(args, cwd):
    start = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd)
    return proc, time.monotonic() - start


# Runs a command line as `python FILE.py ...` / `python -m MODULE ...` would, then lists the heavy
# modules that its (failed) parse imported.
IMPORTS = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    if sys.argv[0].endswith(".py"):
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print([m for m in ("jax", "flax", "torch", "tensorflow") if m in sys.modules])
"""


@pytest.mark.parametrize("command", [[str(ROOT / "train.py")],
                                     ["-m", "v3d_flax.predict", "--weights", "w.pth", "v.mp4"],
                                     ["-m", "v3d_flax.features", "--weights", "w.pth", "--out", "f.npz", "v.mp4"]])
def test_misspelt_model_suggests_the_name_at_once(command, tmp_path):
    proc, seconds = _timed([sys.executable, *command, "--model", "r3d18"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "did you mean r3d_18?" in proc.stderr and "Traceback" not in proc.stderr
    assert seconds < PARSE_SECONDS, f"{seconds:.1f} s: the parser imports JAX/Flax"
    target = command[1] if command[0] == "-m" else command[0]
    rest = command[2:] if command[0] == "-m" else command[1:]
    proc = subprocess.run([sys.executable, "-c", IMPORTS, target, *rest, "--model", "r3d18"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr


def test_train_init_from_a_missing_file_is_one_line_before_any_model(tmp_path):
    workdir = tmp_path / "run"
    proc, seconds = _timed([sys.executable, str(ROOT / "train.py"), "--model", "c3d", "--init-from",
                            "missing.pth", "--workdir", str(workdir)], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["train.py: error: --init-from missing.pth: no such file or directory, "
                                                "and not a name of c3d's pretrained weights "
                                                "(python -m v3d_flax.weights c3d)"]
    assert not workdir.exists() and os.listdir(tmp_path) == []  # nothing built, nothing written
    assert seconds < PARSE_SECONDS


def test_identify_checkpoint_finds_the_model_and_prefers_the_named_one(manifests):
    from v3d_flax.port.identify import identify_checkpoint

    mc3 = {k: tuple(s) for k, s in manifests["torchvision/mc3_18"].items()}
    match = identify_checkpoint(mc3, first="x3d_xs")
    assert (match.model, match.complete, match.common) == ("mc3_18", True, 122)
    assert identify_checkpoint({"no.such.key": (3,)}) is None
    # identical architectures (X3D-XS and -S differ only in their clips): the named one wins
    x3d = {k: tuple(s) for k, s in manifests["pytorchvideo/x3d_s"].items()}
    assert identify_checkpoint(x3d, source="pytorchvideo", first="x3d_s", names=["x3d_xs", "x3d_s"]).model == "x3d_s"
    assert match.describe() == "122 of mc3_18's 122 keys"
