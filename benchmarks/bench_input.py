"""Throughput of the input pipeline alone (no model): clips per second from `v3d_flax.data`.

Defaults are the CPU training run's (`python train.py --model c3d --accelerator cpu`): the embedded
dataset, global batch 16, 16 frames, 16x16 crops. Training batches are timed over several windows
after a warm-up, and the median is reported with the spread; evaluation (1x1 views) is timed over
one pass. Compare with the training step's clips/s: the pipeline should deliver at least 3x that.

    python benchmarks/bench_input.py [--dataset NAME] [--data-dir DIR] [--batch-size 16] [--windows 7]

`--cores N` pins the process to its first N cores before TensorFlow starts (tf.data sizes its
thread pool by the cores it may use), so clips/s per core can be read off one machine. A folder of
real videos becomes a dataset with `python -m v3d_flax.data from-folder` (docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    """Parse flags, time the training and evaluation pipelines, print the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="v3d_synthetic_motion")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--model", default="c3d", help="picks the normalisation only")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--crop-size", type=int, default=16)
    p.add_argument("--windows", type=int, default=7, help="timed windows (the median is reported)")
    p.add_argument("--batches-per-window", type=int, default=20)
    p.add_argument("--warmup-batches", type=int, default=10)
    p.add_argument("--cores", type=int, default=None, help="run on the first N cores only (default: all)")
    p.add_argument("--skip-eval", action="store_true", help="time the training pipeline only")
    args = p.parse_args()
    if args.cores is not None:
        allowed = sorted(os.sched_getaffinity(0))
        if not 1 <= args.cores <= len(allowed):
            p.error(f"--cores must be in [1, {len(allowed)}], got {args.cores}")
        os.sched_setaffinity(0, allowed[:args.cores])

    from v3d_flax import data
    from v3d_flax.registry import model_spec

    clip = dict(num_frames=args.num_frames, crop_size=args.crop_size,
                normalization=model_spec(args.model).normalization)
    t0 = time.perf_counter()
    info = data.dataset_info(args.dataset, data_dir=args.data_dir)
    print(f"dataset {args.dataset}: {info.num_train} train / {info.num_eval} eval videos, {info.num_classes} classes "
          f"(ready in {time.perf_counter() - t0:.1f} s)")

    batches = data.train_batches(args.dataset, data_dir=args.data_dir, global_batch_size=args.batch_size,
                                 seed=0, **clip)
    t0 = time.perf_counter()
    next(batches)
    first = time.perf_counter() - t0
    for _ in range(args.warmup_batches):
        next(batches)
    rates = []
    for _ in range(args.windows):
        t0 = time.perf_counter()
        for _ in range(args.batches_per_window):
            next(batches)
        rates.append(args.batch_size * args.batches_per_window / (time.perf_counter() - t0))
    cores = len(os.sched_getaffinity(0))
    print(f"train pipeline on {cores} core{'s' * (cores > 1)}: batch {args.batch_size}, clip {args.num_frames}x{args.crop_size}x{args.crop_size}: "
          f"median {statistics.median(rates):.0f} clips/s (min {min(rates):.0f}, max {max(rates):.0f}, "
          f"{args.windows} windows of {args.batches_per_window} batches), {statistics.median(rates) / cores:.0f} per "
          f"core; first batch after {first:.2f} s")
    if args.skip_eval:
        return

    t0, n = time.perf_counter(), 0
    for batch in data.eval_batches(args.dataset, data_dir=args.data_dir, batch_size=args.batch_size, **clip):
        n += int(batch["mask"].sum())
    seconds = time.perf_counter() - t0
    print(f"eval pipeline (1x1 views): {n} clips in {seconds:.2f} s, {n / seconds:.0f} clips/s")


if __name__ == "__main__":
    main()
