"""Packaging: the dependency split (core / [train] / [torch] / [test]), the core install working without
the optional packages, one clear line when one is missing, version, LICENSE and py.typed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OPTIONAL = ("tensorflow", "tensorflow_datasets", "orbax", "torch", "matplotlib", "tensorboard")

# Installed before anything else in a child interpreter: importing any of `blocked` fails as if the
# package were not installed (ModuleNotFoundError, also for importlib.util.find_spec).
BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    class _Blocker(importlib.abc.MetaPathFinder):
        def __init__(self, blocked):
            self.blocked = set(blocked)
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.blocked:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None
    sys.meta_path.insert(0, _Blocker(BLOCKED))
""")


def _requirement_name(requirement: str) -> str:
    name = requirement
    for stop in "<>=!~[; ":
        name = name.split(stop)[0]
    return name.strip().lower().replace("_", "-")


def run_blocked(code: str, blocked=OPTIONAL, *, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (cwd: the repository) where the `blocked` packages cannot be imported."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    script = BLOCKER.replace("BLOCKED", repr(tuple(blocked))) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def test_core_dependencies_exclude_tensorflow_and_torch():
    core = {_requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert {"jax", "jaxlib", "flax", "numpy", "safetensors", "av"} <= core
    assert not core & {"torch", "tensorflow", "tensorflow-cpu", "tensorflow-datasets", "tensorboard", "matplotlib"}
    # oneDNN's convolutions: the CPU-only GNU OpenMP build, on the one platform its wheels exist for
    onednn = [r for r in PYPROJECT["project"]["dependencies"] if "onednn" in r]
    assert {_requirement_name(r) for r in onednn} == {"onednn-cpu-gomp", "onednn-devel-cpu-gomp"}
    assert all("sys_platform == 'linux'" in r and "platform_machine == 'x86_64'" in r for r in onednn)
    extras = PYPROJECT["project"]["optional-dependencies"]
    train = {_requirement_name(r) for r in extras["train"]}
    assert {"tensorflow-cpu", "tensorflow-datasets", "tensorboard", "matplotlib"} <= train
    assert "torch" not in train  # training needs no torch (only --init-from a .pth does)
    assert {_requirement_name(r) for r in extras["torch"]} == {"torch"}
    test = extras["test"]
    assert "v3d[train,torch]" in test and {"pytest", "pytest-xdist"} <= {_requirement_name(r) for r in test}


def test_version_license_and_py_typed():
    import v3d_flax

    assert v3d_flax.__version__ == PYPROJECT["project"]["version"]
    from importlib import metadata

    try:
        installed = metadata.version("v3d")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        installed = None
    assert installed in (None, v3d_flax.__version__)
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in license_text and "APPENDIX: How to apply the Apache License" in license_text
    for package in ("v3d_flax", "v3d_torch_ref"):
        assert (ROOT / package / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["*"]


def test_no_top_level_import_of_optional_packages():
    """Every module a core install uses imports with the optional packages missing."""
    result = run_blocked("""
        import importlib
        for name in ["v3d_flax", "v3d_flax.registry", "v3d_flax.layers", "v3d_flax.conv", "v3d_flax.blocks",
                     "v3d_flax.models.c3d", "v3d_flax.models.resnet3d", "v3d_flax.models.i3d",
                     "v3d_flax.models.resnet50", "v3d_flax.models.slowfast", "v3d_flax.models.x3d",
                     "v3d_flax.port", "v3d_flax.port.core", "v3d_flax.port.checkpoint", "v3d_flax.port.sources",
                     "v3d_flax.port.inflate", "v3d_flax.port.tf_checkpoint", "v3d_flax.port.load", "v3d_flax.predict",
                     "v3d_flax.features", "v3d_flax.convert", "v3d_flax.checkpoints", "v3d_flax.video", "v3d_flax.summary",
                     "v3d_flax.data", "v3d_flax.data.metrics", "v3d_flax.extras", "v3d_flax.preprocessing",
                     "v3d_flax.records.c3d"]:
            importlib.import_module(name)
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory) -> str:
    """A 12-frame 40x48 mpeg4 clip written with PyAV."""
    import av

    path = tmp_path_factory.mktemp("video") / "tiny.avi"
    t = np.arange(12)[:, None, None]
    frames = np.zeros((12, 40, 48, 3), np.uint8)
    frames[..., 0] = (t * 20) % 256
    frames[..., 1] = np.linspace(0, 255, 48, dtype=np.uint8)[None, None, :]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=15)
        stream.width, stream.height, stream.pix_fmt = 48, 40, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


def test_core_install_ports_converts_and_predicts_without_optional_packages(tiny_video, tmp_path):
    """Without TensorFlow, tfds, orbax, torch, matplotlib, TensorBoard: create a model, port weights from a
    .safetensors in torch naming, convert it to a Flax .safetensors, and run predict and features on it."""
    import torch
    from safetensors.torch import save_file

    from v3d_torch_ref import create_model as create_torch_model

    torch.manual_seed(0)
    reference = create_torch_model("mc3_18", num_classes=5)
    torch_weights = tmp_path / "mc3_18_torch.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(torch_weights))
    flax_weights, feats = tmp_path / "mc3_18_flax.safetensors", tmp_path / "feats.npz"
    tiny = ["--frames", "4", "--rate", "1", "--resize", "32", "--crop", "32", "--clips", "1", "--crops", "1"]
    result = run_blocked(f"""
        import contextlib, io, json, sys
        import numpy as np
        from flax import nnx
        import v3d_flax
        from v3d_flax import convert, features, port, predict

        model = v3d_flax.create_model("mc3_18", num_classes=5, rngs=nnx.Rngs(0))
        report = port.from_torch(model, port.load_torch_checkpoint({str(torch_weights)!r}), source="v3d")
        assert not report, report
        assert convert.main(["--model", "mc3_18", "--from", {str(torch_weights)!r}, "--to", {str(flax_weights)!r}]) == 0
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = predict.main(["--model", "mc3_18", "--weights", {str(flax_weights)!r}, "--json", "--no-progress",
                               *{tiny!r}, {tiny_video!r}])
        assert rc == 0, rc
        result = json.loads(out.getvalue())
        assert rc == features.main(["--model", "mc3_18", "--weights", {str(flax_weights)!r}, "--out",
                                    {str(feats)!r}, "--no-progress", *{tiny!r}, {tiny_video!r}])
        blocked = sorted(m for m in sys.modules if m.split(".")[0] in {OPTIONAL!r})
        print(json.dumps({{"top_k": result["results"][0]["top_k"], "loaded": blocked}}))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert len(out["top_k"]) == 5 and abs(sum(e["probability"] for e in out["top_k"]) - 1) < 1e-4
    with np.load(feats) as f:
        assert f["features"].shape == (1, 512) and np.isfinite(f["features"]).all()


@pytest.mark.parametrize("case", ["predict_pth", "convert_to_pth", "train", "data_cli", "data_api", "torch_ref"])
def test_missing_extra_gives_one_clear_line(case, tmp_path, tiny_video):
    """A command that needs a missing extra fails with one line naming it (no traceback); the Python
    API raises MissingExtraError (a ModuleNotFoundError) with the same line."""
    pth = tmp_path / "weights.pth"
    pth.write_bytes(b"not read: torch is missing")
    code, blocked, extra = {
        "predict_pth": (f"from v3d_flax import predict\n"
                        f"sys.exit(predict.main(['--model', 'mc3_18', '--weights', {str(pth)!r}, {tiny_video!r}]))",
                        ("torch",), "torch"),
        "convert_to_pth": (f"from v3d_flax import convert\n"
                           f"sys.exit(convert.main(['--model', 'mc3_18', '--from', {str(pth)!r}, '--to', "
                           f"{str(tmp_path / 'out.pth')!r}]))", ("torch",), "torch"),
        "train": ("import runpy\nsys.argv = ['train.py', '--model', 'c3d', '--accelerator', 'cpu', '--workdir', "
                  f"{str(tmp_path / 'run')!r}]\nrunpy.run_path('train.py', run_name='__main__')",
                  ("tensorflow",), "train"),
        "data_cli": ("from v3d_flax.data.__main__ import main\nsys.exit(main(['info', 'v3d_synthetic_motion']))",
                     ("tensorflow_datasets",), "train"),
        "data_api": ("from v3d_flax import data\ntry:\n    data.dataset_info\n"
                     "except ModuleNotFoundError as e:\n    print(e, file=sys.stderr)\n    sys.exit(1)",
                     ("tensorflow",), "train"),
        "torch_ref": ("try:\n    import v3d_torch_ref\nexcept ModuleNotFoundError as e:\n"
                      "    print(e, file=sys.stderr)\n    sys.exit(1)", ("torch",), "torch"),
    }[case]
    result = run_blocked("import sys\n" + code, blocked, timeout=300)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"needs the [{extra}] extra: pip install 'v3d[{extra}]'" in lines[0]
    if case == "train":
        assert not (tmp_path / "run").exists()  # refused before anything was written
