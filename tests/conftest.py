"""Shared fixtures: the state_dict manifests of torchvision, PyTorchVideo and pytorch-i3d."""

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def manifests() -> dict[str, dict[str, list[int]]]:
    """{"torchvision/r3d_18": {key: shape, ...}, ...} recorded from the public libraries."""
    return json.loads((DATA / "state_dict_manifests.json").read_text())
