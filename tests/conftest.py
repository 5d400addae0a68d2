"""Shared fixtures: the state_dict manifests of torchvision, PyTorchVideo and pytorch-i3d."""

import json
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Most of the suite's time is XLA compiling; the train.py subprocesses of one test file compile the
# same programs again and again. A compilation cache shared by this session and its subprocesses
# (fresh per session, so nothing leaks between runs) compiles each program once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="v3d-tests-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def manifests() -> dict[str, dict[str, list[int]]]:
    """{"torchvision/r3d_18": {key: shape, ...}, ...} recorded from the public libraries."""
    return json.loads((DATA / "state_dict_manifests.json").read_text())


# Files whose tests run train.py subprocesses take minutes, then the parity tests; both are
# collected first, so that pytest-xdist starts them at once instead of leaving one worker busy at
# the end.
LONG_FILES = ("test_parallel.py", "test_resume.py", "test_two_d_vs_three_d.py", "test_train.py", "test_parity_")


@pytest.hookimpl(tryfirst=True)  # before xdist's worker hook reads the xdist_group markers
def pytest_collection_modifyitems(items):
    """Long-running files first (stable otherwise). With `--dist loadgroup` (pyproject.toml) every
    test is scheduled on its own, except tests sharing a module-scoped fixture: those run in one
    worker (an xdist group per file), so the fixture is built once."""
    def rank(item):
        return next((i for i, name in enumerate(LONG_FILES) if item.path.name.startswith(name)), len(LONG_FILES))

    items.sort(key=rank)
    for item in items:
        fixturedefs = getattr(item, "_fixtureinfo", None)
        scopes = {d.scope for defs in (fixturedefs.name2fixturedefs.values() if fixturedefs else ()) for d in defs}
        if "module" in scopes:
            item.add_marker(pytest.mark.xdist_group(item.path.name))
