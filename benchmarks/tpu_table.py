"""Cloud TPU projections for every model: `train.py --compile-only` over the zoo, as a table.

    python benchmarks/tpu_table.py                                  # every model, v5e:2x4 and v4:2x2x4, bf16
    python benchmarks/tpu_table.py --models r3d_18,x3d_m --topologies v5e:2x4 --per-chip-batch 8
    python benchmarks/tpu_table.py --models r3d_18 --largest-batch v5e:2x2   # + the largest batch a chip fits

Each row compiles the exact training step `train.py` would run on that topology (canonical clip,
global batch = per-chip batch x chips), deviceless, with XLA's TPU compiler from libtpu
(`pip install "jax[tpu]"`), and reports the compiled HBM plan per chip, the collectives, and the
roofline projection (XLA's FLOPs against the chip's published bf16 peak, its bytes against the
HBM bandwidth). Compiler projections, not measurements. --largest-batch bisects the largest
per-chip batch whose plan fits one chip's HBM (the harness's bracket-and-bisect search; each probe
compiles). Rows are appended to tpu.json as they finish, so a long run can be stopped and resumed
(rows already there are skipped); tpu.md is rewritten from it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help="comma-separated names (default: every registered model)")
    p.add_argument("--topologies", default="v5e:2x4,v4:2x2x4")
    p.add_argument("--per-chip-batch", type=int, default=8)
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32", "fp32-highest"))
    p.add_argument("--remat", action="store_true")
    p.add_argument("--largest-batch", default="", metavar="TOPOLOGY",
                   help="also find the largest per-chip batch that fits the chips of this topology (e.g. v5e:2x2, the smallest slice libtpu compiles for)")
    p.add_argument("--out", default="benchmarks/results")
    return p.parse_args(argv)


def row_key(row: dict) -> tuple:
    return row["model"], row["topology"], row["per_chip_batch"], row["precision"], row["remat"], row.get("search", False)


def step_report(model: str, topology: str, per_chip_batch: int, precision: str, remat: bool):
    """`compile_train_step` for `model` at its canonical clip on `topology`."""
    from v3d_flax.registry import model_spec
    from v3d_flax.train.compile_only import compile_train_step, topology_devices
    from v3d_flax.train.config import TrainConfig, resolve

    chips = len(topology_devices(topology))
    t, h, _ = model_spec(model).clip
    config = resolve(TrainConfig(model=model, workdir="-", compile_only=True, tpu_topology=topology,
                                 num_frames=t, crop_size=h, batch_size=per_chip_batch * chips,
                                 precision=precision, remat=remat))
    return compile_train_step(config, topology)


def largest_batch(model: str, topology: str, precision: str, remat: bool) -> dict:
    """The largest per-chip batch whose compiled plan fits the chip's HBM, and the per-clip growth."""
    from benchmarks.harness import largest_fitting_batch

    plans = {}

    def plan(batch: int):
        if batch not in plans:
            r = step_report(model, topology, batch, precision, remat)
            plans[batch] = r.hbm_bytes if r.compiled else None
            print(f"    batch {batch}: {plans[batch] and plans[batch] / 2 ** 30:.2f} GiB"
                  if r.compiled else f"    batch {batch}: refused ({r.error[:120]})", flush=True)
        return plans[batch]

    from v3d_flax.train.compile_only import parse_topology

    best, slope = largest_fitting_batch(plan, int(parse_topology(topology).hbm_bytes))
    return {"largest_per_chip_batch": best, "bytes_per_clip": slope, "probes": sorted(plans)}


def markdown(rows: list[dict]) -> str:
    """The table, one row per (model, topology)."""
    lines = ["Compiled deviceless with libtpu: compiler projections, not measurements. HBM = the compiled "
             "plan per chip; step = max(XLA FLOPs / bf16 peak, bytes / HBM bandwidth); MFU = the model's "
             "analytic FLOPs per chip / step / bf16 peak; collectives = bytes all-reduced per chip per step.", "",
             "| model | clip | topology | batch/chip | HBM/chip | fits | step ms | clips/s | MFU | collectives MiB "
             "| checks | largest batch/chip (1 chip) |",
             "|---|---|---|---:|---:|---|---:|---:|---:|---:|---|---:|"]
    largest = {(r["model"], r["topology"].split(":")[0]): r["largest_per_chip_batch"] for r in rows if r.get("search")}
    for r in rows:
        if r.get("search"):
            continue
        clip = "x".join(map(str, r["clip"]))
        big = largest.get((r["model"], r["topology"].split(":")[0]), "")
        if not r["compiled"]:
            lines.append(f"| {r['model']} | {clip} | {r['topology']} | {r['per_chip_batch']} | - | no: "
                         f"{r['error'][:80].replace('|', '/')} | | | | | | {big} |")
            continue
        moved = sum(v["bytes"] for v in r["collectives"].values()) / 2 ** 20
        ok = all(ok for ok, _ in r["checks"].values())
        lines.append(f"| {r['model']} | {clip} | {r['topology']} | {r['per_chip_batch']} | "
                     f"{r['hbm_bytes'] / 2 ** 30:.1f} GiB | {'yes' if r['fits'] else 'NO'} | "
                     f"{r['projected_step_s'] * 1e3:.0f} | {r['clips_per_s']:,.0f} | {r['mfu']:.0%} | {moved:.0f} | "
                     f"{'ok' if ok else 'FAILED: ' + ', '.join(k for k, (v, _) in r['checks'].items() if not v)} | {big} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    from v3d_flax.registry import list_models
    from v3d_flax.train.compile_only import TopologyError, host_only, topology_devices

    host_only()

    models = args.models.split(",") if args.models else list_models()
    topologies = args.topologies.split(",") if args.topologies else []
    try:
        for topology in topologies + ([args.largest_batch] if args.largest_batch else []):
            topology_devices(topology)
    except TopologyError as e:
        sys.exit(str(e))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "tpu.json")
    rows = json.load(open(path))["rows"] if os.path.exists(path) else []
    done = {row_key(r) for r in rows}

    def save():
        with open(path, "w") as f:
            json.dump({"rows": rows}, f, indent=1)
        with open(os.path.join(args.out, "tpu.md"), "w") as f:
            f.write(markdown(rows))

    for model in models:
        for topology in topologies:
            key = (model, topology, args.per_chip_batch, args.precision, args.remat, False)
            if key in done:
                continue
            t0 = time.perf_counter()
            report = step_report(model, topology, args.per_chip_batch, args.precision, args.remat)
            row = {**report.to_json(), "compile_s": time.perf_counter() - t0}
            rows.append(row)
            save()
            print(f"{model} {topology}: {'compiled' if report.compiled else 'NOT compiled'} in "
                  f"{row['compile_s']:.0f} s" + (f", {report.hbm_bytes / 2 ** 30:.2f} GiB/chip, "
                                                 f"{report.clips_per_s:,.0f} clips/s" if report.compiled else ""),
                  flush=True)
        if args.largest_batch:
            key = (model, args.largest_batch, 0, args.precision, args.remat, True)
            if key not in done:
                found = largest_batch(model, args.largest_batch, args.precision, args.remat)
                rows.append({"model": model, "topology": args.largest_batch, "per_chip_batch": 0,
                             "precision": args.precision, "remat": args.remat, "search": True, **found})
                save()
                print(f"{model} {args.largest_batch}: largest batch per chip {found['largest_per_chip_batch']}",
                      flush=True)
    save()
    print(markdown(rows))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
