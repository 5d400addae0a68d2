"""Helpers for the training tests: launch train.py in a subprocess, read its metrics."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "train.py")

# A tiny but real run: R3D-18 on 4x16x16 clips of the embedded dataset's 'tiny' config (64 training
# and 16 test videos of 12x24x24: every run's evaluation reads 16 videos, not the default's 400).
TINY_DATASET = "v3d_synthetic_motion/tiny"
TINY = ["--model", "r3d_18", "--dataset", TINY_DATASET, "--num-frames", "4", "--crop-size", "16",
        "--batch-size", "8", "--eval-batch-size", "16", "--log-every", "1", "--lr", "0.05", "--warmup-steps", "2",
        "--no-progress"]


def env(devices: int = 1, compilation_cache: bool = True, **extra) -> dict:
    """The subprocess environment: `devices` CPU devices, quiet TensorFlow; with
    `compilation_cache=False` the session's shared JAX compilation cache (conftest.py) is not used
    (processes of one jax.distributed job must compile their collectives themselves)."""
    e = dict(os.environ)
    e.update(JAX_NUM_CPU_DEVICES=str(devices), TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    if not compilation_cache:
        e.pop("JAX_COMPILATION_CACHE_DIR", None)
    e.update({k: str(v) for k, v in extra.items()})
    return e


def start(args: list[str], devices: int = 1, compilation_cache: bool = True, **popen) -> subprocess.Popen:
    """Start `python train.py args` without waiting."""
    return subprocess.Popen([sys.executable, TRAIN, *args], env=env(devices, compilation_cache), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def train(args: list[str], devices: int = 1, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python train.py args` to completion."""
    return subprocess.run([sys.executable, TRAIN, *args], env=env(devices), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def metrics(workdir) -> list[dict]:
    """The records of <workdir>/metrics.jsonl."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_losses(workdir) -> dict[int, float]:
    """step -> logged training loss."""
    return {r["step"]: r["loss"] for r in metrics(workdir) if r["split"] == "train"}


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Poll until `predicate()` holds; fail if the process ends first."""
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"train.py ended early (rc {proc.returncode}):\n{err[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for train.py")
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
