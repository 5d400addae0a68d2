"""Model benchmark: Flax (jitted) against the PyTorch reference, side by side in one process.

    python benchmarks/bench_models.py                      # every registered model, small defaults
    python benchmarks/bench_models.py --models r3d_18,x3d_xs --clips 8x56x56,16x112x112 --batch 4
    python benchmarks/bench_models.py --remat-budget-gib 4  # + the --remat batch-size measurement
    python benchmarks/bench_models.py --models none --remat-budget-gib 16 --remat-tpu v5e:2x2 --suffix _tpu_v5e
    python benchmarks/bench_models.py --device gpu --dtype bf16

For each model and clip size: training-step throughput (SGD, cross-entropy; Flax: one jax.jit over
the nnx.split state with the state donated) and inference throughput, in clips/s, Flax against
PyTorch eager (channels_last_3d) and, with --torch-compile, torch.compile. Rounds alternate between
the frameworks and the table quotes medians and the ratio Flax / PyTorch (>1: Flax is faster).
FLOPs are the model's analytic count (2 x fvcore MACs of the forward pass, a training step 3 x
that), the same on every backend; MFU compares the achieved FLOP/s with a matmul peak measured in
the same run. `--render results.json` rewrites a run's table (and JSON) with the current columns
from its own measured times and peak, without measuring again. Memory: XLA's compiled
memory analysis (arguments + temporaries + outputs - aliased) for Flax; torch's peak allocated
memory on GPU (not tracked for CPU tensors, shown as n/a). Writes results<suffix>.md,
results<suffix>.json and chart<suffix>.png under --out (--suffix, e.g. _16x56x56, keeps runs of other
clip sizes apart); a remat-only run (--models none) writes remat<suffix>.md and .json and leaves the
model tables alone. --remat-tpu plans the remat search for one chip of a Cloud TPU topology instead
of this machine, compiled without a TPU (XLA's TPU compiler from libtpu: `pip install
'jax[tpu]==0.10.2'`), with the conv formulation "auto" picks off CPU (XLA's native conv).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--models", default="", help="comma-separated names (default: every registered model; 'none': only --remat-budget-gib)")
    p.add_argument("--clips", default="8x56x56", help="comma-separated TxHxW clip sizes")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (median reported)")
    p.add_argument("--steps", type=int, default=1, help="steps timed per round and framework")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    p.add_argument("--num-classes", type=int, default=400)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bf16"), default="float32",
                   help="compute dtype (bf16: mixed precision, float32 master weights, both frameworks)")
    p.add_argument("--torch-compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    p.add_argument("--no-train", action="store_true", help="inference only")
    p.add_argument("--remat-budget-gib", type=float, default=0.0,
                   help="if > 0: largest r3d_18 16x112x112 training batch within this budget, with and without "
                        "per-block remat, from XLA's memory analysis")
    p.add_argument("--remat-tpu", default="", metavar="TOPOLOGY",
                   help="plan the remat search for one chip of this TPU topology (e.g. v5e:2x2, v4:2x2x1), "
                        "compiled deviceless with libtpu; default: this machine")
    p.add_argument("--conv-impl", default="auto", metavar="NAME",
                   help="conv formulation of every Flax conv: auto (default), xla, lax, time2d, time2d_lax_grad, "
                        "im2col, shift_add or onednn (v3d_flax.conv); --remat-tpu plans with lax unless one is named")
    p.add_argument("--baseline-impl", default="", metavar="NAME",
                   help="also time Flax with this conv formulation (e.g. xla: without oneDNN) in the same rounds; "
                        "the table adds its ratio")
    p.add_argument("--render", default="", metavar="JSON",
                   help="rewrite the .md and .json of this earlier run from its own measurements, then exit")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--suffix", default="", help="appended to the output file names (default: none)")
    args = p.parse_args(argv)
    try:
        args.clips = [tuple(int(v) for v in c.lower().split("x")) for c in args.clips.split(",")]
        assert all(len(c) == 3 for c in args.clips)
    except (ValueError, AssertionError):
        p.error(f"--clips: expected comma-separated TxHxW sizes such as 8x56x56, got {args.clips!r}")
    if args.remat_tpu and args.remat_budget_gib <= 0:
        p.error("--remat-tpu plans the remat search: give it a --remat-budget-gib, e.g. 16 for a v5e chip")
    if args.batch < 1 or args.rounds < 1 or args.steps < 1:
        p.error("--batch, --rounds and --steps must be >= 1")
    return args


def render(path: str) -> str:
    """Rewrite the run `path` (results*.json) and its .md with today's columns (analytic FLOPs, MFU)
    from the times and matmul peak it measured; returns the table."""
    from types import SimpleNamespace

    from benchmarks import harness

    with open(path) as f:
        run = json.load(f)
    num_classes = run["args"].get("num_classes", 400)
    run["rows"] = [row if "error" in row else harness.add_flops(row, run["peak_flops"], num_classes)
                   for row in run["rows"]]
    report = harness.markdown(run["rows"], run["machine"], run["peak_flops"], SimpleNamespace(**run["args"]),
                              run["remat"])
    with open(path, "w") as f:
        json.dump(run, f, indent=1)
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write(report)
    return report


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        print(render(args.render))
        return
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import torch

    from benchmarks import harness
    from v3d_flax.archfacts import check_conv_impl
    from v3d_flax.registry import list_models

    try:
        check_conv_impl(args.conv_impl, "--conv-impl")
        if args.baseline_impl:
            check_conv_impl(args.baseline_impl, "--baseline-impl")
    except ValueError as e:
        sys.exit(str(e))

    if args.device == "gpu" and (jax.default_backend() != "gpu" or not torch.cuda.is_available()):
        sys.exit(f"--device gpu: JAX backend is {jax.default_backend()!r}, torch CUDA available: "
                 f"{torch.cuda.is_available()}; both need a GPU")
    torch.set_num_threads(args.threads)
    models = [] if args.models == "none" else args.models.split(",") if args.models else list_models()
    unknown = sorted(set(models) - set(list_models()))
    if unknown:
        sys.exit(f"unknown model(s) {unknown}; available: {', '.join(list_models())}")
    # a TPU target that cannot be compiled for fails now, not after the model benchmarks
    tpu_sharding = harness.tpu_chip_sharding(args.remat_tpu) if args.remat_tpu else None
    os.makedirs(args.out, exist_ok=True)
    machine = harness.describe_machine(args)
    print(machine, flush=True)
    peak = harness.matmul_peak(args)
    print(f"matmul peak ({args.dtype}): JAX {peak['jax'] / 1e9:.0f} GFLOP/s, torch {peak['torch'] / 1e9:.0f} GFLOP/s",
          flush=True)
    rows = []
    for name in models:
        for clip in args.clips:
            try:
                row = harness.bench_model(name, clip, args, peak)
            except Exception as e:  # one model failing (clip too small for it...) must not stop the run
                row = {"model": name, "clip": "x".join(map(str, clip)), "error": f"{type(e).__name__}: {e}"}
                traceback.print_exc(limit=2)
            rows.append(row)
            print(harness.format_row(row), flush=True)
    remat = harness.remat_batches(args, sharding=tpu_sharding) if args.remat_budget_gib > 0 else None
    report = harness.markdown(rows, machine, peak, args, remat)
    stem = ("results" if models else "remat") + args.suffix
    with open(os.path.join(args.out, f"{stem}.md"), "w") as f:
        f.write(report)
    with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
        json.dump({"machine": machine, "peak_flops": peak, "rows": rows, "remat": remat,
                   "args": {k: v for k, v in vars(args).items()}}, f, indent=1)
    written = [f"{stem}.md", f"{stem}.json"]
    if models:
        harness.chart(rows, os.path.join(args.out, f"chart{args.suffix}.png"), machine)
        written.append(f"chart{args.suffix}.png")
    print("\n" + report)
    print(f"wrote {', '.join(os.path.join(args.out, w) for w in written)}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
