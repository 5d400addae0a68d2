"""Checkpoints and resumption: SIGKILL at any point, SIGTERM, a damaged latest checkpoint.

All runs are real train.py subprocesses of the same tiny R3D-18 run; the reference run is never
interrupted, and every interrupted-then-resumed run must log bit-identical losses and metrics.
"""

import os
import shutil
import signal
from pathlib import Path

import pytest

from trainrun import TINY, metrics, start, train, train_losses, wait_for

STEPS = 8
ARGS = [*TINY, "--steps", str(STEPS), "--checkpoint-every", "2"]


def _comparable(records):
    """Metrics without wall-clock fields."""
    return [{k: v for k, v in r.items() if k != "clips_per_sec"} for r in records]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    result = train([*ARGS, "--workdir", str(workdir)])
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_reference_run_resumes_as_a_no_op(reference, tmp_path):
    records = metrics(reference)
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, STEPS + 1))
    assert sorted(int(d) for d in os.listdir(reference / "checkpoints")) == [6, 8]  # keep the latest 2
    assert os.listdir(reference / "best") == [str(STEPS)]


# Killed once step 5 is logged: step 4's checkpoint is complete, step 6's may be under way.
def test_sigkill_then_restart_is_bit_identical(reference, tmp_path, kill_after=5):
    proc = start([*ARGS, "--workdir", str(tmp_path)])
    wait_for(lambda: len(train_losses(tmp_path)) >= kill_after, proc)
    proc.kill()  # SIGKILL: no handler runs, an async save may be half written
    proc.wait()
    assert len(train_losses(tmp_path)) < STEPS
    result = train([*ARGS, "--workdir", str(tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert _comparable(metrics(tmp_path)) == _comparable(metrics(reference))


def test_sigterm_saves_exits_zero_and_resumes_identically(reference, tmp_path):
    proc = start([*ARGS, "--workdir", str(tmp_path)])
    wait_for(lambda: len(train_losses(tmp_path)) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "preemption notice" in out
    steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints"))
    last = max(train_losses(tmp_path))
    assert steps[-1] == last < STEPS  # saved exactly where it stopped
    result = train([*ARGS, "--workdir", str(tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from the checkpoint at step {last}" in result.stdout
    assert _comparable(metrics(tmp_path)) == _comparable(metrics(reference))


def test_ctrl_c_saves_exits_130_and_resumes_identically(reference, tmp_path):
    args = [*TINY, "--steps", str(STEPS), "--workdir", str(tmp_path)]  # no --checkpoint-every
    proc = start(args)
    wait_for(lambda: len(train_losses(tmp_path)) >= 3, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Ctrl-C: finishing the current step" in err
    last = max(train_losses(tmp_path))
    assert f"saved the checkpoint at step {last}" in out and "rerun the same command to resume" in out
    assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints")) == [last]
    assert "step 1/8  loss" in out and "ETA" in out  # plain progress lines when stdout is not a terminal
    result = train(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from the checkpoint at step {last}" in result.stdout
    assert _comparable(metrics(tmp_path)) == _comparable(metrics(reference))


def test_second_ctrl_c_aborts_at_once(tmp_path):
    proc = start([*TINY, "--steps", "1000", "--workdir", str(tmp_path)])
    wait_for(lambda: len(train_losses(tmp_path)) >= 1, proc)
    proc.send_signal(signal.SIGINT)
    seen = []  # two signals sent at once may reach the process as one: wait for the first to be seen
    while not any("Ctrl-C: finishing the current step" in line for line in seen):
        seen.append(proc.stderr.readline())
        assert seen[-1], "train.py closed stderr before acknowledging Ctrl-C"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "second Ctrl-C: aborting now" in err and "Traceback" not in "".join(seen) + err


def test_corrupt_latest_checkpoint_falls_back_to_previous(reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    # Damage every data file of the latest checkpoint's state.
    damaged = 0
    for path in (workdir / "checkpoints" / str(STEPS) / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and "metadata" not in path.name:
            path.write_bytes(b"\0garbage")
            damaged += 1
    assert damaged
    # As after a crash in the final evaluation: otherwise the rerun would find the run complete.
    lines = (workdir / "metrics.jsonl").read_text().splitlines(keepends=True)
    (workdir / "metrics.jsonl").write_text("".join(line for line in lines if '"split": "eval"' not in line))
    result = train([*ARGS, "--workdir", str(workdir)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"checkpoint at step {STEPS}" in result.stderr and "falling back" in result.stderr
    assert "resuming from the checkpoint at step 6" in result.stdout
    assert (workdir / "corrupt" / str(STEPS)).is_dir()
    assert _comparable(metrics(workdir)) == _comparable(metrics(reference))


def test_workdir_of_another_model_is_refused_untouched(reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    before = {p: p.stat().st_mtime_ns for p in Path(workdir).rglob("*")}
    args = [a if a != "r3d_18" else "mc3_18" for a in ARGS]
    result = train([*args, "--workdir", str(workdir)])
    assert result.returncode == 1
    assert "holds checkpoints of model 'r3d_18', not 'mc3_18'" in result.stderr
    assert "Traceback" not in result.stderr
    assert {p: p.stat().st_mtime_ns for p in Path(workdir).rglob("*")} == before
