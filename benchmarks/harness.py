"""Measurement pieces of benchmarks/bench_models.py: steps for both frameworks, alternating timing,
XLA cost and memory analysis, the matmul peak, the --remat batch search, table and chart."""

from __future__ import annotations

import math
import os
import platform
import time

import numpy as np


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def describe_machine(args) -> str:
    """One line naming the machine, libraries and settings the figures were taken with."""
    import jax
    import torch
    dev = jax.devices()[0].device_kind if args.device == "gpu" else f"{cpu_name()}, {os.cpu_count()} cores"
    return (f"{dev}; jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
            f"({args.threads} threads); {args.dtype}; batch {args.batch}; {args.rounds} alternating rounds x "
            f"{args.steps} step(s), medians; conv impl {args.conv_impl}"
            + (f" (baseline {args.baseline_impl})" if getattr(args, "baseline_impl", "") else ""))


def _sync(args):
    import torch
    if args.device == "gpu":
        torch.cuda.synchronize()


def matmul_peak(args, n: int = 2048) -> dict:
    """FLOP/s of an n x n matmul in JAX and torch, alternating rounds, median (same dtype as the run)."""
    import jax
    import jax.numpy as jnp
    import torch
    jdt = jnp.bfloat16 if args.dtype == "bf16" else jnp.float32
    tdt = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    a = jnp.ones((n, n), jdt)
    mm = jax.jit(lambda a: a @ a)
    mm(a).block_until_ready()
    ta = torch.ones((n, n), dtype=tdt, device="cuda" if args.device == "gpu" else "cpu")
    ta @ ta
    reps = 20 if args.device == "gpu" else 3
    times = {"jax": [], "torch": []}
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            r = mm(a)
        r.block_until_ready()
        times["jax"].append((time.perf_counter() - t0) / reps)
        _sync(args)
        t0 = time.perf_counter()
        for _ in range(reps):
            ta @ ta
        _sync(args)
        times["torch"].append((time.perf_counter() - t0) / reps)
    return {k: 2 * n ** 3 / float(np.median(v)) for k, v in times.items()}


def add_flops(row: dict, peak: dict, num_classes: int) -> dict:
    """`row` with each mode's analytic GFLOP per clip (`v3d_flax.summary.step_flops`) and its MFU
    (model FLOPs / the Flax step time / the JAX matmul peak measured in the same run)."""
    from v3d_flax.summary import step_flops

    clip = tuple(int(v) for v in row["clip"].split("x"))
    flops = step_flops(row["model"], clip, row["batch"], num_classes=num_classes)
    for m in ("train", "infer"):
        if f"flax_{m}_s" in row:
            row[f"{m}_gflop_per_clip"] = flops[m] / row["batch"] / 1e9
            row[f"{m}_mfu"] = flops[m] / row[f"flax_{m}_s"] / peak["jax"]
            row.pop(f"{m}_utilisation", None)  # the old XLA-counted figure
    return row


def _cost(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def _memory(compiled) -> int | None:
    """Peak bytes XLA plans for one call: arguments + outputs + temporaries - donated aliases."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def flax_steps(name, clip, batch, args, *, remat=False, abstract=False, sharding=None, conv_impl=None):
    """Compiled Flax train and inference steps with their operands: {"train": (fn, operands), ...}.
    With abstract=True, only the compiled train step (for memory analysis), operands as shapes
    (placed by `sharding`, e.g. on a TPU chip to compile for; default: this machine); nothing is
    initialised. The convs use `conv_impl` (default: --conv-impl)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from v3d_flax.layers import set_conv_impl
    from v3d_flax.train.state import build_model

    t, h, w = clip
    def build():
        return build_model(name, num_classes=args.num_classes, num_frames=t, crop_size=h, seed=0, remat=remat)

    model = set_conv_impl(nnx.eval_shape(build) if abstract else build(), conv_impl or args.conv_impl)
    cdt = jnp.bfloat16 if args.dtype == "bf16" else jnp.float32
    tx = optax.sgd(0.01, momentum=0.9)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.as_pure(params), nnx.as_pure(rest)
    opt_state = jax.eval_shape(tx.init, params) if abstract else tx.init(params)

    def cast(tree):
        return jax.tree.map(lambda v: v.astype(cdt) if jnp.issubdtype(v.dtype, jnp.floating) else v, tree)

    def loss_fn(params, rest, x, y):
        m = nnx.merge(graphdef, cast(params) if args.dtype == "bf16" else params, rest)
        logits = m(x.astype(cdt)).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, nnx.as_pure(nnx.state(m, nnx.Not(nnx.Param)))

    def train_step(params, rest, opt_state, x, y):
        (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        new_rest = jax.tree.map(lambda new, old: new.astype(old.dtype), new_rest, rest)
        return optax.apply_updates(params, updates), new_rest, opt_state, loss

    x_shape, y_shape = (batch, t, h, w, 3), (batch,)
    jit_train = jax.jit(train_step, donate_argnums=(0, 1, 2))
    if abstract:
        spec = lambda tree: jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding), tree)
        return jit_train.lower(spec(params), spec(rest), spec(opt_state),
                               jax.ShapeDtypeStruct(x_shape, jnp.float32, sharding=sharding),
                               jax.ShapeDtypeStruct(y_shape, jnp.int32, sharding=sharding)).compile()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape, dtype=np.float32))
    y = jnp.asarray(rng.integers(0, args.num_classes, y_shape), jnp.int32)
    model.eval()
    egraph, estate = nnx.split(model)
    estate = nnx.as_pure(estate)
    estate = jax.tree.map(jnp.copy, estate)  # the train step donates the buffers it shares with `model`
    infer = jax.jit(lambda s, x: nnx.merge(egraph, cast(s) if args.dtype == "bf16" else s)(x.astype(cdt)))
    out = {}
    t0 = time.perf_counter()
    compiled = jit_train.lower(params, rest, opt_state, x, y).compile()
    train_state = [params, rest, opt_state]

    def run_train():
        new = compiled(*train_state, x, y)
        train_state[:] = new[:3]
        return new[3]
    jax.block_until_ready(run_train())
    out["train"] = dict(fn=lambda: jax.block_until_ready(run_train()), flops=_cost(compiled),
                        memory=_memory(compiled), compile_s=time.perf_counter() - t0)
    t0 = time.perf_counter()
    icompiled = infer.lower(estate, x).compile()
    jax.block_until_ready(icompiled(estate, x))
    out["infer"] = dict(fn=lambda: jax.block_until_ready(icompiled(estate, x)), flops=_cost(icompiled),
                        memory=_memory(icompiled), compile_s=time.perf_counter() - t0)
    return out


def torch_steps(name, clip, batch, args, *, compile_model=False):
    """PyTorch reference train and inference callables (channels_last_3d; optionally torch.compile)."""

    import torch
    import torch.nn.functional as F

    from v3d_flax.registry import model_spec
    from v3d_torch_ref.registry import create_model

    t, h, w = clip
    dev = "cuda" if args.device == "gpu" else "cpu"
    kw = model_spec(name).size_kwargs(t, h)
    torch.manual_seed(0)
    model = create_model(name, num_classes=args.num_classes, **kw).to(dev, memory_format=torch.channels_last_3d)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, t, h, w, device=dev).contiguous(memory_format=torch.channels_last_3d)
    y = torch.randint(0, args.num_classes, (batch,), device=dev)
    fwd = torch.compile(model) if compile_model else model
    if model_spec(name).pathways == 2:  # the reference takes [slow, fast]; packing is part of its step here
        from v3d_torch_ref.models.slowfast import pack_pathways
        net = fwd
        fwd = lambda clip: net([p.contiguous(memory_format=torch.channels_last_3d) for p in pack_pathways(clip)])
    amp = torch.autocast(dev, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def train():
        model.train()
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = F.cross_entropy(fwd(x).float(), y)
        loss.backward()
        opt.step()
        _sync(args)

    def infer():
        model.eval()
        with torch.no_grad(), amp:
            fwd(x)
        _sync(args)
    out = {}
    for key, fn in (("train", train), ("infer", infer)):
        if key == "train" and args.no_train:
            continue
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        fn()
        fn()
        out[key] = dict(fn=fn, compile_s=time.perf_counter() - t0,
                        memory=torch.cuda.max_memory_allocated() if dev == "cuda" else None)
    return out


def bench_model(name, clip, args, peak) -> dict:
    """Alternating timing of every framework variant for one model and clip; one table row."""
    variants = {"flax": flax_steps(name, clip, args.batch, args)}
    if getattr(args, "baseline_impl", ""):
        variants["flax_baseline"] = flax_steps(name, clip, args.batch, args, conv_impl=args.baseline_impl)
    variants["torch"] = torch_steps(name, clip, args.batch, args)
    if args.torch_compile:
        try:
            variants["torch.compile"] = torch_steps(name, clip, args.batch, args, compile_model=True)
        except Exception as e:  # inductor is not available everywhere
            print(f"  torch.compile failed for {name}: {type(e).__name__}: {str(e)[:200]}")
    modes = ["infer"] if args.no_train else ["train", "infer"]
    times = {(v, m): [] for v in variants for m in modes if m in variants[v]}
    for _ in range(args.rounds):
        for (v, m) in times:
            fn = variants[v][m]["fn"]
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[(v, m)].append((time.perf_counter() - t0) / args.steps)
    row = {"model": name, "clip": "x".join(map(str, clip)), "batch": args.batch}
    for (v, m), ts in times.items():
        med = float(np.median(ts))
        row[f"{v}_{m}_s"] = med
        row[f"{v}_{m}_clips_s"] = args.batch / med
        row[f"{v}_{m}_memory"] = variants[v][m].get("memory")
        row[f"{v}_{m}_compile_s"] = variants[v][m]["compile_s"]
    for m in modes:
        row[f"{m}_ratio"] = row["torch_" + m + "_s"] / row["flax_" + m + "_s"]
        if "flax_baseline_" + m + "_s" in row:
            row[f"{m}_ratio_baseline"] = row["flax_baseline_" + m + "_s"] / row["flax_" + m + "_s"]
        if "torch.compile_" + m + "_s" in row:
            row[f"{m}_ratio_compile"] = row["torch.compile_" + m + "_s"] / row["flax_" + m + "_s"]
        row[f"xla_{m}_gflop_per_clip"] = variants["flax"][m]["flops"] / args.batch / 1e9  # for reference only
    return add_flops(row, peak, args.num_classes)


def remat_batches(args, name="r3d_18", clip=(16, 112, 112), sharding=None) -> dict:
    """Largest training batch whose compiled step fits --remat-budget-gib, with and without remat
    (XLA memory analysis of compiled steps: a guess from batches 8 and 16, then bracketed and bisected).
    With --remat-tpu the steps are compiled for one chip of that TPU topology, without a TPU
    (`sharding`: `tpu_chip_sharding(args.remat_tpu)`, made here if not given)."""
    budget = int(args.remat_budget_gib * 2 ** 30)
    target = getattr(args, "remat_tpu", "")
    if target and sharding is None:
        sharding = tpu_chip_sharding(target)
    # "auto" decides by the backend tracing runs on (CPU here); a TPU gets XLA's native conv
    conv_impl = "lax" if target and args.conv_impl == "auto" else args.conv_impl
    result = {"model": name, "clip": "x".join(map(str, clip)), "budget_bytes": budget,
              "platform": f"tpu {target} (one chip, compiled deviceless)" if target else "this machine"}
    for remat in (False, True):
        cache = {}

        def mem(b):
            if b not in cache:
                try:
                    compiled = flax_steps(name, clip, b, args, remat=remat, abstract=True, sharding=sharding,
                                          conv_impl=conv_impl)
                    cache[b] = _memory(compiled)
                except Exception as e:  # XLA's TPU compiler refuses a plan larger than the chip's memory
                    if "RESOURCE_EXHAUSTED" not in str(e):
                        raise
                    cache[b] = None
            return cache[b]
        best, slope = largest_fitting_batch(mem, budget)
        key = "remat" if remat else "plain"
        result[key] = {"batch": int(best), "bytes_batch1": mem(1), "bytes_per_clip": slope,
                       "bytes_at_batch": mem(best) if best else None, "compiled_batches": sorted(cache)}
        print(f"remat={remat}: {_mib(mem(1))} MiB at batch 1, {_mib(slope)} MiB per clip (batch 8 -> 16) "
              f"-> batch {best} within {args.remat_budget_gib} GiB", flush=True)
    result["ratio"] = result["remat"]["batch"] / max(result["plain"]["batch"], 1)
    return result


def largest_fitting_batch(mem, budget: int) -> tuple[int, float | None]:
    """The largest batch b with mem(b) <= budget (mem(b) is None: the compiler refused the plan as too
    big), and the per-clip growth from batch 8 to 16. Plans are not linear at small batches (TPU
    layouts change with the batch), so the guess is extrapolated from batches 8 and 16, then
    bracketed by galloping from it and bisected; each probe compiles."""
    fits = lambda b: mem(b) is not None and mem(b) <= budget
    m8, m16 = mem(8), mem(16)
    slope = max((m16 - m8) / 8, 1.0) if m8 is not None and m16 is not None else None
    if not fits(1):
        return 0, slope
    guess = max(1, int(8 + (budget - m8) // slope)) if slope else 1
    step = 1
    if fits(guess):
        lo = guess
        while fits(lo + step):
            lo, step = lo + step, step * 2
        hi = lo + step
    else:
        hi = guess
        while hi - step > 1 and not fits(hi - step):
            hi, step = hi - step, step * 2
        lo = max(1, hi - step)
    while hi - lo > 1:  # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, slope


def tpu_chip_sharding(topology: str):
    """A sharding on one chip of the Cloud TPU `topology` (e.g. "v5e:2x2"), for compiling without a
    TPU: XLA's TPU compiler comes from libtpu (`pip install 'jax[tpu]'`)."""
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    try:
        devices = topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
    except Exception as e:
        raise SystemExit(f"--remat-tpu {topology}: no TPU compiler for this topology ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); it needs libtpu "
                         "(pip install 'jax[tpu]==0.10.2') and a name such as v5e:2x2 or v4:2x2x1") from e
    return NamedSharding(Mesh(devices[:1], ("chip",)), PartitionSpec())


def _f(v, fmt="{:.2f}"):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _mib(v):
    return "n/a" if v is None else f"{v / 2 ** 20:.0f}"


def format_row(row) -> str:
    """A one-line progress summary."""
    if "error" in row:
        return f"{row['model']} {row['clip']}: skipped ({row['error'][:160]})"
    parts = [f"{row['model']} {row['clip']}:"]
    for m in ("train", "infer"):
        if f"{m}_ratio" in row:
            parts.append(f"{m} flax {row[f'flax_{m}_clips_s']:.2f} vs torch {row[f'torch_{m}_clips_s']:.2f} clips/s "
                         f"= {row[f'{m}_ratio']:.2f}x"
                         + (f" ({row[f'{m}_ratio_baseline']:.2f}x vs baseline)" if f"{m}_ratio_baseline" in row else "")
                         + ";")
    return " ".join(parts)


def markdown(rows, machine, peak, args, remat) -> str:
    """The results table (and the remat line) as Markdown."""
    lines = [f"Measured on: {machine}.",
             f"Matmul peak (2048x2048, same run): JAX {peak['jax'] / 1e9:.0f} GFLOP/s, "
             f"torch {peak['torch'] / 1e9:.0f} GFLOP/s. Ratio = PyTorch time / Flax time (>1: Flax faster). "
             "GFLOP = the model's analytic count per clip (2 x fvcore MACs forward; a train step 3 x that); "
             "MFU = those FLOPs / Flax step time / JAX matmul peak; memory = XLA's compiled plan (Flax), "
             "torch peak allocated (GPU only).", "",
             "| model | clip | train clips/s Flax | PyTorch | ratio | infer clips/s Flax | PyTorch | ratio | "
             "train GFLOP/clip | train MFU | infer MFU | Flax train MiB | PyTorch train MiB | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['clip']} | skipped: {r['error'][:120].replace('|', '/')} |"
                         + " |" * 11)
            continue
        tr = lambda k: r.get(k)
        ratio_t = _f(tr("train_ratio"), "{:.2f}x")
        if tr("train_ratio_compile") is not None:
            ratio_t += f" ({tr('train_ratio_compile'):.2f}x vs compile)"
        if tr("train_ratio_baseline") is not None:
            ratio_t += f" ({tr('train_ratio_baseline'):.2f}x vs {args.baseline_impl})"
        ratio_i = _f(tr("infer_ratio"), "{:.2f}x")
        if tr("infer_ratio_baseline") is not None:
            ratio_i += f" ({tr('infer_ratio_baseline'):.2f}x vs {args.baseline_impl})"
        if tr("infer_ratio_compile") is not None:
            ratio_i += f" ({tr('infer_ratio_compile'):.2f}x vs compile)"
        lines.append(" | ".join([
            f"| {r['model']}", r["clip"], _f(tr("flax_train_clips_s")), _f(tr("torch_train_clips_s")), ratio_t,
            _f(tr("flax_infer_clips_s")), _f(tr("torch_infer_clips_s")), ratio_i,
            _f(tr("train_gflop_per_clip"), "{:.1f}"), _f(tr("train_mfu"), "{:.0%}"), _f(tr("infer_mfu"), "{:.0%}"),
            _mib(tr("flax_train_memory")), _mib(tr("torch_train_memory")),
            _f(tr("flax_train_compile_s"), "{:.0f}")]) + " |")
    if remat:
        lines += ["", f"Remat ({remat['model']}, {remat['clip']}, {remat.get('platform', 'this machine')}, budget {remat['budget_bytes'] / 2**30:.1f} GiB, "
                      f"XLA memory analysis): largest batch {remat['plain']['batch']} without remat, "
                      f"{remat['remat']['batch']} with per-block remat ({remat['ratio']:.1f}x); "
                      f"{_mib(remat['plain']['bytes_per_clip'])} vs {_mib(remat['remat']['bytes_per_clip'])} "
                      "MiB per clip (batch 8 -> 16)."]
    return "\n".join(lines) + "\n"


def chart(rows, path, machine):
    """Bar chart of Flax / PyTorch speed ratios (train and inference) per model and clip."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return
    labels = [f"{r['model']}\n{r['clip']}" for r in ok]
    xs = np.arange(len(ok))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(ok) + 2), 4.5))
    for i, (m, color) in enumerate((("train", "tab:blue"), ("infer", "tab:orange"))):
        vals = [r.get(f"{m}_ratio", np.nan) for r in ok]
        ax.bar(xs + (i - 0.5) * 0.4, vals, 0.4, label=f"{m} step", color=color)
    ax.axhline(1.0, color="k", lw=1, ls="--")
    ax.set_xticks(xs, labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("Flax speed / PyTorch speed")
    ax.set_title(machine[:110], fontsize=7)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
