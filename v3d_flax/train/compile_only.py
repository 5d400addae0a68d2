"""`train.py --compile-only --tpu-topology v5e:2x4`: the training step of a Cloud TPU run, compiled here.

XLA's TPU compiler ships in libtpu (`pip install "jax[tpu]"`) and compiles for a topology without
any TPU attached. This builds exactly what `train.py` builds for a run on that topology (the model,
optimizer and jitted step of `v3d_flax.train`, the batch sharded over a mesh of every chip of every
host, the state replicated), lowers the step with abstract arrays (no weights are drawn, no data is
read), compiles it, and reports what the compiled program says: whether it compiles, its HBM plan
per chip against the chip's capacity, its collectives with their sizes, its FLOPs and bytes, and a
roofline projection of the step time. These are compiler figures, not measurements on a TPU.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from dataclasses import asdict, dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@dataclass(frozen=True)
class Chip:
    """Published per-chip figures (Google Cloud TPU documentation, "System architecture")."""

    name: str
    hbm_bytes: float
    hbm_bytes_per_s: float
    bf16_flops_per_s: float


CHIPS = {
    "v4": Chip("TPU v4", 32 * 2 ** 30, 1200e9, 275e12),
    "v5e": Chip("TPU v5e", 16e9, 819e9, 197e12),
    "v5p": Chip("TPU v5p", 95e9, 2765e9, 459e12),
    "v6e": Chip("TPU v6e", 32e9, 1638e9, 918e12),
}
# MXU passes per product: float32 operands take one bf16 pass at the default precision, six at "highest".
MXU_PASSES = {"bf16": 1, "fp32": 1, "fp32-highest": 6}
COLLECTIVES = ("all-reduce", "reduce-scatter", "all-gather", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")
_COLLECTIVE = re.compile(r"^\s*(?:ROOT )?%\S+ = (.*?) (" + "|".join(COLLECTIVES) + r")(-start)?\(", re.M)


class TopologyError(ValueError):
    """A --tpu-topology that cannot be compiled for; the message says what was expected or missing."""


def parse_topology(topology: str) -> Chip:
    """The chip of "v5e:2x4" (generation, then the chip grid); TopologyError naming the known ones."""
    match = re.fullmatch(r"(v\d+[a-z]*):(\d+(?:x\d+){1,2})", topology or "")
    if match is None or match.group(1) not in CHIPS:
        raise TopologyError(f"--tpu-topology {topology!r}: expected GENERATION:GRID with GENERATION one of "
                            f"{', '.join(CHIPS)}, e.g. v5e:2x4, v4:2x2x4, v5p:2x2x2, v6e:2x4")
    return CHIPS[match.group(1)]


def host_only() -> None:
    """Trace on this machine's CPU and keep libtpu from probing it for a TPU of its own when JAX starts
    (seconds of metadata queries and warnings): compiling for a topology needs no TPU. Call before
    JAX's first use of a device."""
    jax.config.update("jax_platforms", os.environ.get("JAX_PLATFORMS") or "cpu")
    for key, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                       ("TPU_ACCELERATOR_TYPE", "v5litepod-8")):
        os.environ.setdefault(key, value)


def topology_devices(topology: str) -> list:
    """Every chip of `topology`, as devices to compile for (XLA's TPU compiler from libtpu)."""
    parse_topology(topology)
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)
    except Exception as e:  # no libtpu: a RuntimeError; a grid libtpu does not know, or its lock: XlaRuntimeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if importlib.util.find_spec("libtpu") is not None:  # installed: the topology, or another process's lock
            raise TopologyError(f"--tpu-topology {topology}: libtpu cannot compile for it ({first})") from e
        raise TopologyError(f"--tpu-topology {topology}: no TPU compiler for it ({first}); compiling for a TPU "
                            f"without one needs libtpu: pip install 'jax[tpu]=={jax.__version__}'") from e


@dataclass
class StepReport:
    """What the compiled step says (`compile_train_step`); sizes per chip, times per step."""

    model: str
    topology: str
    chips: int
    hosts: int
    clip: tuple[int, int, int]
    global_batch: int
    precision: str
    remat: bool
    compiled: bool
    error: str = ""
    hbm_bytes: float = float("nan")
    hbm_capacity: float = float("nan")
    xla_flops: float = float("nan")
    bytes_accessed: float = float("nan")
    model_flops: float = float("nan")
    collectives: dict[str, dict[str, float]] = field(default_factory=dict)
    projected_step_s: float = float("nan")
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)

    @property
    def per_chip_batch(self) -> int:
        return self.global_batch // self.chips

    @property
    def fits(self) -> bool:
        return self.compiled and self.hbm_bytes <= self.hbm_capacity

    @property
    def clips_per_s(self) -> float:
        return self.global_batch / self.projected_step_s

    @property
    def mfu(self) -> float:
        """Model FLOPs (the analytic count) per chip over the projected time, against the bf16 peak."""
        return self.model_flops / self.projected_step_s / parse_topology(self.topology).bf16_flops_per_s

    def to_json(self) -> dict:
        out = asdict(self)
        out.update(per_chip_batch=self.per_chip_batch, fits=self.fits, clips_per_s=self.clips_per_s, mfu=self.mfu)
        return out


def collectives_of(hlo: str) -> dict[str, dict[str, float]]:
    """{op: {"count", "bytes", "elements"}} of the collectives in optimised HLO text (async ops counted at
    their -start)."""
    out: dict[str, dict[str, float]] = {}
    for shape, op, is_start in _COLLECTIVE.findall(hlo):
        arrays = [(_DTYPE_BYTES[d], math.prod(int(n) for n in dims.split(",") if n)) for d, dims in _ARRAY.findall(shape)]
        if is_start and op != "all-reduce" and len(arrays) % 2 == 0:
            arrays = arrays[len(arrays) // 2:]  # an async start's shape holds (operands, results)
        entry = out.setdefault(op, {"count": 0, "bytes": 0.0, "elements": 0})
        entry["count"] += 1
        entry["bytes"] += sum(size * n for size, n in arrays)
        entry["elements"] += sum(n for _, n in arrays)
    return out


def _checks(compiled, video, report: StepReport, params: int, bn_channels: int) -> dict:
    """The data-parallel invariants, each (holds, detail)."""
    found = report.collectives
    others = {op: v["count"] for op, v in found.items() if op not in ("all-reduce", "reduce-scatter")}
    reduced = sum(found.get(op, {}).get("elements", 0) for op in ("all-reduce", "reduce-scatter"))
    # gradients, plus per BatchNorm channel its two batch moments forward and two sums backward, plus metrics
    bound = params + 4 * bn_channels + 64
    shardings = jax.tree.leaves(compiled.input_shardings[0][0])
    replicated = all(s.is_fully_replicated for s in shardings)
    taken, delivered = _major_to_minor(compiled.input_formats[0][1]["video"]), _delivered_layout(video)
    return {
        "only all-reduces / reduce-scatters": (not others, f"other collectives: {others}" if others else "none other"),
        "reduced = gradients + BatchNorm moments": (
            params <= reduced <= bound,
            f"{reduced:,} elements reduced; {params:,} parameters, {bn_channels:,} BatchNorm channels"),
        "state replicated": (replicated, f"{len(shardings)} state arrays"),
        "batch taken in the layout it arrives in": (
            taken == delivered,
            f"the step's video layout (major to minor) {taken}, a transfer's {delivered}"),
    }


def _major_to_minor(fmt) -> tuple:
    return tuple(getattr(getattr(fmt, "layout", None), "major_to_minor", ()) or ())


def _delivered_layout(video: jax.ShapeDtypeStruct) -> tuple:
    """The on-chip layout a batch of this shape arrives in (what `jax.device_put` makes of the pipeline's
    row-major arrays): that of a program that only passes it through."""
    passed = jax.jit(lambda x: x + 0, in_shardings=video.sharding).lower(video).compile()
    return _major_to_minor(passed.input_formats[0][0])


def compile_train_step(config, topology: str) -> StepReport:
    """Compile `config`'s training step (a resolved `TrainConfig`) for every chip of `topology`."""
    from v3d_flax.registry import model_spec
    from v3d_flax.train.init_from import architecture_of
    from v3d_flax.train.mesh import batch_sharding, check_batch_divides, replicated
    from v3d_flax.train.parallel import ShardedJit
    from v3d_flax.train.state import build_model, build_optimizer, init_state, split_model
    from v3d_flax.train.steps import make_train_step

    chip = parse_topology(topology)
    devices = topology_devices(topology)
    parallel = ShardedJit(devices)  # the real run's layout: one mesh over every chip of every host
    micro = config.batch_size // config.grad_accum
    check_batch_divides(micro, parallel.mesh, "--batch-size / --grad-accum")
    spec = model_spec(config.model)
    clip = (config.num_frames, config.crop_size, config.crop_size)
    # "auto" would pick by the backend tracing runs on (this CPU); a TPU run's "auto" is XLA's own conv
    # (and oneDNN's custom calls exist on CPU only)
    conv_impl = "lax" if config.conv_impl in ("auto", "xla", "onednn") else config.conv_impl
    model = nnx.eval_shape(lambda: build_model(
        config.model, num_classes=spec.num_classes, num_frames=clip[0], crop_size=clip[1], seed=config.seed,
        remat=config.remat, dropout=config.dropout, conv_impl=conv_impl,
        **architecture_of(config.model, config.init_from)))
    defs, model_state = split_model(model)
    tx, schedule = build_optimizer(config, config.steps)
    state = jax.eval_shape(lambda s: init_state(s, tx), model_state)
    step = make_train_step(defs, tx, schedule, num_classes=spec.num_classes, label_smoothing=config.label_smoothing,
                           precision=config.precision, grad_accum=config.grad_accum)
    rep, data = replicated(parallel.mesh), batch_sharding(parallel.mesh)
    state_specs = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=rep), state)
    batch = {"video": jax.ShapeDtypeStruct((micro, *clip, 3), jnp.float32, sharding=data),  # as the pipeline delivers
             "label": jax.ShapeDtypeStruct((micro,), jnp.int32, sharding=data)}
    report = StepReport(config.model, topology, len(devices), len({d.process_index for d in devices}), clip, micro,
                        config.precision, config.remat, compiled=False, hbm_capacity=chip.hbm_bytes)
    try:
        compiled = parallel.compile(step).lower(state_specs, batch).compile()
    except Exception as e:  # XLA's own message: RESOURCE_EXHAUSTED, an unsupported op...
        report.error = " ".join(str(e).split())[:600]
        return report
    report.compiled = True
    memory = compiled.memory_analysis()
    report.hbm_bytes = float(getattr(memory, "peak_memory_in_bytes", 0) or (
        memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes))
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    report.xla_flops, report.bytes_accessed = float(cost.get("flops", np.nan)), float(cost.get("bytes accessed", np.nan))
    from v3d_flax.summary import step_flops

    report.model_flops = step_flops(config.model, clip, report.per_chip_batch, num_classes=spec.num_classes)["train"]
    peak = chip.bf16_flops_per_s / MXU_PASSES[config.precision]
    report.projected_step_s = max(report.xla_flops / peak, report.bytes_accessed / chip.hbm_bytes_per_s)
    report.collectives = collectives_of(compiled.as_text())
    params = sum(math.prod(v.shape) for v in jax.tree.leaves(state["params"]))
    bn_channels = sum(math.prod(v.shape) for path, v in nnx.to_flat_state(model_state["rest"])
                      if str(path[-1]) == "mean")
    report.checks = _checks(compiled, batch["video"], report, params, bn_channels)
    return report


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def format_report(r: StepReport) -> str:
    """The report as the lines `train.py --compile-only` prints."""
    head = (f"{r.model} on {r.topology} ({r.chips} chips, {r.hosts} host(s) by libtpu's topology), clip "
            f"{'x'.join(map(str, r.clip))}, global batch {r.global_batch} ({r.per_chip_batch} per chip), "
            f"{r.precision}{', remat' if r.remat else ''}")
    if not r.compiled:
        return f"{head}\ncompiled: NO\n  XLA: {r.error}"
    lines = [head, "compiled: yes (deviceless; compiler figures, not measurements)",
             f"HBM per chip: {_gib(r.hbm_bytes)} of {_gib(r.hbm_capacity)} "
             f"({'fits' if r.fits else 'DOES NOT FIT'}, {r.hbm_bytes / r.hbm_capacity:.0%})",
             f"per chip and step: {r.xla_flops / 1e9:,.1f} GFLOP (XLA), {r.model_flops / 1e9:,.1f} GFLOP (model, "
             f"analytic), {r.bytes_accessed / 1e9:,.2f} GB accessed",
             f"roofline: {r.projected_step_s * 1e3:.1f} ms per step, {r.clips_per_s:,.0f} clips/s, MFU {r.mfu:.0%}",
             "collectives per step:" + ("" if r.collectives else " none")]
    for op, v in sorted(r.collectives.items()):
        lines.append(f"  {op}: {v['count']} ops, {v['bytes'] / 2 ** 20:.1f} MiB")
    lines.append("checks:")
    for name, (ok, detail) in r.checks.items():
        lines.append(f"  [{'ok' if ok else 'FAILED'}] {name}: {detail}")
    return "\n".join(lines)
