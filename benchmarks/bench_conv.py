"""Per-layer 3D conv speed: each `v3d_flax.conv` formulation against PyTorch, side by side.

    python benchmarks/bench_conv.py [--threads 2] [--rounds 5] [--impls lax,time2d,...]

For each layer shape, forward and forward+backward times of every formulation and of PyTorch
(eager, channels_last_3d) are taken in alternating rounds in one process; the table gives medians,
GFLOP/s (2 per MAC, padded taps included) and the ratio to PyTorch (>1 = faster than PyTorch).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

# (name, (B, T, H, W, C_in), (kT, kH, kW), C_out, strides, groups)
LAYERS = [
    ("r3d conv 64->64 8x56x56", (4, 8, 56, 56, 64), (3, 3, 3), 64, (1, 1, 1), 1),
    ("r3d conv 128->128 4x28x28", (4, 4, 28, 28, 128), (3, 3, 3), 128, (1, 1, 1), 1),
    ("r3d conv s2 64->128", (4, 8, 56, 56, 64), (3, 3, 3), 128, (2, 2, 2), 1),
    ("r2+1d spatial 1x3x3 64->144", (4, 8, 56, 56, 64), (1, 3, 3), 144, (1, 1, 1), 1),
    ("r2+1d temporal 3x1x1 144->64", (4, 8, 56, 56, 144), (3, 1, 1), 64, (1, 1, 1), 1),
    ("c3d conv1a 3->64 16x56x56", (2, 16, 56, 56, 3), (3, 3, 3), 64, (1, 1, 1), 1),
    ("c3d conv2a 64->128 16x28x28", (2, 16, 28, 28, 64), (3, 3, 3), 128, (1, 1, 1), 1),
    ("stem 3->64 3x7x7 s1,2,2", (4, 8, 112, 112, 3), (3, 7, 7), 64, (1, 2, 2), 1),
    ("r50 1x1x1 256->64 8x28x28", (4, 8, 28, 28, 256), (1, 1, 1), 64, (1, 1, 1), 1),
    ("r50 1x1x1 s2 512->1024 4x28x28", (4, 4, 28, 28, 512), (1, 1, 1), 1024, (1, 2, 2), 1),
    ("r3d tiny 512->512 1x4x4", (4, 1, 4, 4, 512), (3, 3, 3), 512, (1, 1, 1), 1),
    ("x3d depthwise 108 13x28x28", (4, 13, 28, 28, 108), (3, 3, 3), 108, (1, 1, 1), 108),
    ("x3d depthwise s2 54 13x56x56", (4, 13, 56, 56, 54), (3, 3, 3), 54, (1, 2, 2), 54),
]


def layer_flops(shape, ksize, cout, strides, groups):
    """Forward FLOPs (2 per MAC, padded taps counted) of a 'same'-padded layer."""
    b, t, h, w, cin = shape
    out = [-(-n // s) for n, s in zip((t, h, w), strides)]
    return 2 * b * int(np.prod(out)) * cout * int(np.prod(ksize)) * (cin // groups)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--impls", default="auto,lax,time2d,time2d_lax_grad,im2col,shift_add,onednn")
    p.add_argument("--layers", default="", help="comma-separated substrings selecting layers")
    p.add_argument("--thread-check", action="store_true",
                   help="only measure whether oneDNN's threads slow the XLA work that follows them")
    args = p.parse_args(argv)
    if args.thread_check:
        return thread_check(args.rounds)
    import jax
    import jax.numpy as jnp
    import torch
    from v3d_flax import conv as conv_ops
    torch.set_num_threads(args.threads)
    impls = args.impls.split(",")
    rng = np.random.default_rng(0)
    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}, {args.threads} threads, "
          f"{args.rounds} alternating rounds, medians")
    print("| layer | impl | fwd ms | fwd GFLOP/s | fwd vs torch | fwd+bwd ms | fwd+bwd vs torch |")
    print("|---|---|---|---|---|---|---|")
    for name, shape, ksize, cout, strides, groups in LAYERS:
        if args.layers and not any(s in name for s in args.layers.split(",")):
            continue
        pads = tuple((k // 2, k // 2) for k in ksize)
        x_np = rng.standard_normal(shape, dtype=np.float32)
        k_np = rng.standard_normal((*ksize, shape[-1] // groups, cout), dtype=np.float32) * 0.05
        x, k = jnp.asarray(x_np), jnp.asarray(k_np)
        fns = {}
        for impl in impls:
            chosen = conv_ops.select_impl(x, k, strides=strides, groups=groups, dilation=(1, 1, 1), impl=impl,
                                          padding=pads)
            if chosen != impl and impl != "auto":
                continue
            f = lambda x, k, impl=impl: conv_ops.conv3d(x, k, strides=strides, padding=pads, groups=groups, impl=impl)
            fwd = jax.jit(f)
            bwd = jax.jit(jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) ** 2), argnums=(0, 1)))
            fwd(x, k).block_until_ready()
            jax.block_until_ready(bwd(x, k))
            label = f"auto ({chosen})" if impl == "auto" else impl
            fns[label] = (lambda fwd=fwd: fwd(x, k).block_until_ready(),
                         lambda bwd=bwd: jax.block_until_ready(bwd(x, k)))
        tx = torch.from_numpy(np.ascontiguousarray(x_np.transpose(0, 4, 1, 2, 3))).to(
            memory_format=torch.channels_last_3d).requires_grad_(True)
        conv = torch.nn.Conv3d(shape[-1], cout, ksize, strides, tuple(k // 2 for k in ksize), groups=groups,
                               bias=False).to(memory_format=torch.channels_last_3d)

        def t_fwd():
            with torch.no_grad():
                conv(tx)

        def t_bwd():
            conv.zero_grad(set_to_none=True)
            tx.grad = None
            (conv(tx) ** 2).sum().backward()
        t_fwd(), t_bwd()
        fns["torch"] = (t_fwd, t_bwd)
        times = {n: ([], []) for n in fns}
        for _ in range(args.rounds):
            for n, pair in fns.items():
                for i, fn in enumerate(pair):
                    t0 = time.perf_counter()
                    fn()
                    times[n][i].append(time.perf_counter() - t0)
        flops = layer_flops(shape, ksize, cout, strides, groups)
        tf, tb = (float(np.median(v)) for v in times["torch"])
        for n, (vf, vb) in times.items():
            mf, mb = float(np.median(vf)), float(np.median(vb))
            print(f"| {name} | {n} | {mf * 1e3:.1f} | {flops / mf / 1e9:.0f} | {tf / mf:.2f}x | {mb * 1e3:.1f} | "
                  f"{tb / mb:.2f}x |", flush=True)


def thread_check(rounds: int) -> None:
    """An XLA matmul timed alone, a oneDNN conv alone, and the two in one jitted program (the matmul
    waits for the conv); extra = both - conv - matmul, the cost of the thread runtimes meeting."""
    import jax
    import jax.numpy as jnp
    from v3d_flax import conv as conv_ops, onednn
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((1024, 1024), dtype=np.float32))
    x = jnp.asarray(rng.standard_normal((4, 8, 56, 56, 64), dtype=np.float32))
    k = jnp.asarray(rng.standard_normal((3, 3, 3, 64, 64), dtype=np.float32) * 0.05)
    conv = lambda x: conv_ops.conv3d(x, k, strides=(1, 1, 1), padding=((1, 1),) * 3, impl="onednn")
    matmuls = lambda a: a @ a @ a @ a
    fns = {"matmul": jax.jit(matmuls), "conv": jax.jit(conv),
           "conv then matmul": jax.jit(lambda x, a: matmuls(a * jnp.sum(conv(x)[0, 0, 0, 0, :1])))}
    args = {"matmul": (a,), "conv": (x,), "conv then matmul": (x, a)}
    times = {n: [] for n in fns}
    for _ in range(rounds + 1):  # the first round compiles
        for n, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args[n]))
            times[n].append(time.perf_counter() - t0)
    med = {n: float(np.median(t[1:])) * 1e3 for n, t in times.items()}
    print(f"oneDNN {onednn.version()}: " + ", ".join(f"{n} {v:.1f} ms" for n, v in med.items())
          + f"; extra {med['conv then matmul'] - med['conv'] - med['matmul']:+.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
