"""Run outputs: metrics.jsonl, TensorBoard events, progress bars and the final summary.

Only the first process writes files or prints; the others log nothing. Every line of
metrics.jsonl is one JSON object with step, split ("train" or "eval"), loss, top1, top5, lr,
clips_per_sec (and "views", "video_top1", "video_top5" for eval).
"""

from __future__ import annotations

import json
import math
import os
import sys

import jax


class MetricsLogger:
    """Appends metrics to <workdir>/metrics.jsonl and TensorBoard; owns the tqdm bars."""

    def __init__(self, workdir: str, *, progress: bool = True, tensorboard: bool = True):
        self.workdir = workdir
        self.primary = jax.process_index() == 0
        # Progress bars only on the first process and only on a terminal.
        self.progress = progress and self.primary and sys.stderr.isatty()
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._writer = None
        if self.primary:
            os.makedirs(workdir, exist_ok=True)
            if tensorboard:
                self._writer = _tensorboard_writer(os.path.join(workdir, "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after `step` (written by a run that died before its next checkpoint),
        so a resumed run's file reads as one uninterrupted run."""
        if not self.primary or not os.path.isfile(self.path):
            return
        kept = [r for r in read_metrics(self.path) if r["step"] <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            for r in kept:
                f.write(json.dumps({k: _plain(v) for k, v in r.items()}) + "\n")
        os.replace(tmp, self.path)

    def log(self, record: dict) -> None:
        """Write one record (a dict with at least step and split)."""
        if not self.primary:
            return
        record = {k: _plain(v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            self._writer.write(record)

    def bar(self, total: int, initial: int = 0, desc: str = "train"):
        """A tqdm bar (disabled off a terminal and on all but the first process)."""
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, disable=not self.progress, dynamic_ncols=True,
                    leave=False)

    def print(self, *args) -> None:
        """print() on the first process only."""
        if self.primary:
            print(*args, flush=True)

    def close(self) -> None:
        """Flush TensorBoard."""
        if self._writer is not None:
            self._writer.close()


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; "nan" keeps the file parseable
    return v


class _TBWriter:
    """Scalars to TensorBoard event files through tf.summary (TensorFlow is already a dependency)."""

    def __init__(self, logdir: str):
        import tensorflow as tf

        self._tf = tf
        self._writer = tf.summary.create_file_writer(logdir)

    def write(self, record: dict) -> None:
        tf = self._tf
        split = record.get("split", "train")
        with self._writer.as_default():
            for k, v in record.items():
                if k not in ("step", "split") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    tf.summary.scalar(f"{split}/{k}", v, step=int(record["step"]))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _tensorboard_writer(logdir: str):
    try:
        return _TBWriter(logdir)
    except ImportError:  # TensorBoard output is optional; metrics.jsonl is the record
        return None


_NON_FINITE = ("nan", "inf", "-inf")  # how `_plain` writes non-finite numbers


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics.jsonl file (a non-finite number read back as a float)."""
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [{k: float(v) if isinstance(v, str) and v in _NON_FINITE else v for k, v in r.items()} for r in records]


def stream_figures(record: dict) -> str:
    """", fused; rgb top1 A, flow top1 B" for a two-stream eval record, "" for a single network's."""
    parts = [f"{s} top1 {record[f'{s}_top1']:.3f}" for s in ("rgb", "flow") if f"{s}_top1" in record]
    return f", fused; {', '.join(parts)}" if parts else ""


def format_summary(records: list[dict], *, model: str, workdir: str, seconds: float, timed: bool = True) -> str:
    """A few lines: last train loss/accuracy, last eval top-1/top-5, throughput, where outputs are
    (`timed=False`: without this invocation's wall time, e.g. for a run found already complete)."""
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    steps = len(train) and train[-1]["step"]
    lines = [f"== {model}: {steps} steps in {seconds:.0f}s ==" if timed else f"== {model}: {steps} steps =="]
    if train:
        t = train[-1]
        lines.append(f"train  loss {t['loss']:.4f}  top1 {t['top1']:.3f}  top5 {t['top5']:.3f}  "
                     f"{t['clips_per_sec']:.1f} clips/s")
    if evals:
        e = evals[-1]
        lines.append(f"eval   loss {e['loss']:.4f}  top1 {e['top1']:.3f}  top5 {e['top5']:.3f}  "
                     f"video top1 {e['video_top1']:.3f} ({e['views']} views{stream_figures(e)})")
    lines.append(f"outputs in {workdir}: metrics.jsonl, curves.png, tensorboard/, checkpoints/, best/")
    return "\n".join(lines)
