"""The training run's configuration: one frozen dataclass whose fields are train.py's flags.

Each field's metadata holds its flag's help text, argument type and group (`option`), so the
command line (`v3d_flax.train.cli`) is built from the dataclass and the defaults live here only.
Fields left as `None` are filled by `resolve` from the accelerator: a CPU run defaults to a small
clip and a short schedule that finish within minutes on two cores; GPU/TPU runs default to the
model's canonical clip; a model's own CPU settings (C3D's) come from its record
(`v3d_flax.registry.model_spec(name).cpu_defaults`). Nothing here imports JAX.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass, field

from v3d_flax.archfacts import CONV_IMPLS
from v3d_flax.cli import model_name
from v3d_flax.port.sources import list_sources

DEFAULT_DATASET = "v3d_synthetic_motion"

# Defaults for the fields that are None in TrainConfig: common ones, then per accelerator kind, then
# the model record's `cpu_defaults` on CPU.
COMMON_DEFAULTS = dict(optimizer="sgd", label_smoothing=0.1)
CPU_DEFAULTS = dict(steps=150, batch_size=16, num_frames=16, crop_size=16, lr=0.02, warmup_steps=15,
                    log_every=10, eval_every=0)
ACCEL_DEFAULTS = dict(steps=20_000, batch_size=64, lr=0.1, warmup_steps=1_000, log_every=50, eval_every=2_000)


# --help's groups, in order.
GROUPS = ("model and data", "devices and processes", "optimisation", "outputs, evaluation and checkpoints")


def _number(kind, accept, expected: str):
    """argparse type: a `kind` (int or float) for which `accept(value)` holds, else "expected <expected>"."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


def positive(kind):
    """argparse type: a `kind` (int or float) > 0."""
    return _number(kind, lambda v: v > 0, f"a positive {kind.__name__}")


def non_negative(kind):
    """argparse type: a `kind` (int or float) >= 0."""
    return _number(kind, lambda v: v >= 0, f"a non-negative {kind.__name__}")


fraction = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")  # argparse type: a number in [0, 1)


def views(text):
    """argparse type of --eval-views: 'CLIPSxCROPS' (see `parse_views`)."""
    try:
        return parse_views(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def option(default=None, *, group: str, help: str, type=None, choices=None, metavar=None, flag=None, action=None):
    """A TrainConfig field with its command-line flag in --help's `group`: `help` is a template
    (`v3d_flax.train.cli.help_text` fills it), `flag` defaults to --<field-name>, `action` is argparse's
    ("store_true", "store_false")."""
    if group not in GROUPS:
        raise ValueError(f"option group must be one of {GROUPS}, got {group!r}")
    meta = dict(group=group, help=help, type=type, choices=choices, metavar=metavar, flag=flag, action=action)
    return field(default=default, metadata=meta)  # dataclasses.MISSING: a required field


_MODEL, _DEVICES, _OPT, _OUT = GROUPS


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training or evaluation run (see train.py --help for each field)."""

    model: str = option(dataclasses.MISSING, group=_MODEL, type=model_name, metavar="NAME",
                        help="model to train, one of: {models}")
    dataset: str = option(DEFAULT_DATASET, group=_MODEL,
                          help="'{default}' (embedded, generated locally, class decided only by motion), 'ucf101' "
                               "through TensorFlow Datasets, or any TFDS dataset with a video feature and a class "
                               "label (default: {default})")
    data_dir: str | None = option(group=_MODEL, help="TFDS data_dir (a local path or gs://bucket/path); default: "
                                                     "TFDS's own (~/tensorflow_datasets)")
    num_frames: int | None = option(group=_MODEL, type=positive(int),
                                    help="frames per clip (cpu: {cpu}, gpu/tpu: the model's canonical clip)")
    crop_size: int | None = option(group=_MODEL, type=positive(int),
                                   help="square crop in pixels (cpu: {cpu}, gpu/tpu: the model's canonical clip)")
    init_from: str | None = option(group=_MODEL, metavar="PATH_OR_WEIGHTS",
                                   help="initialise from the model's pretrained weights by name (e.g. kinetics400: "
                                        "downloaded, verified, cached; python -m v3d_flax.weights lists them), "
                                        "a checkpoint file (.pt/.pth/.safetensors, or a TensorFlow "
                                        "checkpoint prefix, through v3d_flax.port) or from an orbax checkpoint of "
                                        "this trainer (a workdir, its checkpoints/ or best/ directory, or one step "
                                        "directory); the classifier the model's record names starts fresh when its "
                                        "size differs, any other mis-shaped tensor is an error")
    modality: str = option("rgb", group=_MODEL, choices=("rgb", "flow", "two-stream"),
                           help="'rgb': the model sees the frames; 'flow': TV-L1 optical flow (v3d_flax.flow) "
                                "computed from --num-frames + 1 frames on the device, I3D's scaling, a model with 2 "
                                "input channels; 'two-stream': an RGB and a flow network trained side by side, each "
                                "on its own loss, evaluated fused (--fusion) and stream by stream (default: {default})")
    fusion: str = option("logits", group=_MODEL, choices=("logits", "softmax"),
                         help="two-stream fusion: sum the logits (DeepMind's I3D) or average the softmax "
                              "(default: {default})")
    init_source: str = option("v3d", group=_MODEL, choices=tuple(list_sources()),
                              help="checkpoint source (key layout) of an --init-from file (default: {default})")

    accelerator: str = option("cpu", group=_DEVICES, choices=("cpu", "gpu", "tpu"),
                              help="device kind; a kind JAX cannot find is an error, never a silent CPU fallback "
                                   "(default: {default})")
    parallel: str = option("jit", group=_DEVICES, choices=("jit", "pmap"),
                           help="'jit': the batch sharded over a mesh of every device (default); 'pmap': the same "
                                "step through jax.pmap with cross-replica BatchNorm (single process)")
    coordinator_address: str | None = option(group=_DEVICES, metavar="HOST:PORT",
                                             help="start jax.distributed with this coordinator (with --num-processes "
                                                  "and --process-id); not needed on Cloud TPU, SLURM or Open MPI, "
                                                  "which are detected")
    num_processes: int | None = option(group=_DEVICES, type=positive(int), help="processes in the job")
    process_id: int | None = option(group=_DEVICES, type=non_negative(int), help="this process's index, from 0")
    compile_only: bool = option(False, group=_DEVICES, action="store_true",
                                help="compile the training step for --tpu-topology here, without a TPU, and report "
                                     "its HBM plan per chip, collectives, FLOPs and a roofline projection; "
                                     "trains nothing, reads no data, writes nothing")
    tpu_topology: str | None = option(group=_DEVICES, metavar="GEN:GRID",
                                      help="the Cloud TPU slice --compile-only compiles for, e.g. v5e:2x4, v4:2x2x4, "
                                           "v5p:2x2x2, v6e:2x4 (needs libtpu: pip install 'jax[tpu]')")

    steps: int | None = option(group=_OPT, type=positive(int), help="optimizer steps (cpu: {cpu}, gpu/tpu: {gpu})")
    batch_size: int | None = option(group=_OPT, type=positive(int),
                                    help="global batch per optimizer step over all devices and processes; must divide "
                                         "over the devices (cpu: {cpu}, gpu/tpu: {gpu})")
    lr: float | None = option(group=_OPT, type=positive(float), help="peak learning rate (cpu: {cpu}, gpu/tpu: {gpu})")
    optimizer: str | None = option(group=_OPT, choices=("sgd", "adamw"),
                                   help="'sgd': momentum 0.9, Nesterov; 'adamw': decoupled weight decay "
                                        "(default: {common}{on_cpu})")
    momentum: float = 0.9  # no flag
    weight_decay: float = option(1e-4, group=_OPT, type=non_negative(float),
                                 help="weight decay on conv and linear kernels, never on BatchNorm parameters or "
                                      "biases (default: {default})")
    label_smoothing: float | None = option(group=_OPT, type=fraction,
                                           help="label smoothing (default: {common}{on_cpu})")
    dropout: float | None = option(group=_OPT, type=fraction,
                                   help="dropout rate of the model's dropout layers (default: the model's own, e.g. "
                                        "0.5 for c3d and i3d{on_cpu})")
    warmup_steps: int | None = option(group=_OPT, type=non_negative(int),
                                      help="linear warmup steps before the cosine decay (cpu: {cpu}, gpu/tpu: {gpu})")
    grad_clip: float = option(1.0, group=_OPT, type=non_negative(float),
                              help="clip gradients to this global norm; 0 disables (default: {default})")
    seed: int = option(0, group=_OPT, type=int,
                       help="seed of the initialisation, dropout and the input order (default: {default})")
    precision: str = option("fp32", group=_OPT, choices=("fp32", "fp32-highest", "bf16"),
                            help="'bf16' computes in bfloat16 with float32 parameters and BatchNorm statistics; "
                                 "'fp32' lets the backend pick its float32 matmul precision (TF32 on recent "
                                 "NVIDIA GPUs, bf16 passes on TPU), 'fp32-highest' asks for full float32 "
                                 "(default: {default})")
    remat: bool = option(False, group=_OPT, action="store_true",
                         help="rematerialise activations per block in the backward pass")
    conv_impl: str = option("auto", group=_OPT, choices=CONV_IMPLS,
                            help="formulation of every 3D convolution (v3d_flax.conv): 'auto' picks per backend and "
                                 "shape, the others force one where it applies (default: {default})")
    grad_accum: int = option(1, group=_OPT, type=positive(int),
                             help="accumulate gradients over N micro-batches of batch-size/N (optax.MultiSteps) "
                                  "(default: {default})")

    workdir: str | None = option(group=_OUT,
                                 help="where checkpoints, metrics.jsonl, tensorboard/ and curves.png go; rerunning "
                                      "with the same workdir resumes (default: runs/<model>-<dataset>, so rerunning "
                                      "the same command resumes)")
    log_every: int | None = option(group=_OUT, type=positive(int),
                                   help="log training metrics every N steps (cpu: {cpu}, gpu/tpu: {gpu})")
    eval_every: int | None = option(group=_OUT, type=non_negative(int),
                                    help="evaluate every N steps, and always at the end; 0: only at the end "
                                         "(cpu: {cpu}, gpu/tpu: {gpu})")
    checkpoint_every: int = option(0, group=_OUT, type=non_negative(int),
                                   help="also save a checkpoint every N steps; 0: no step interval "
                                        "(default: {default})")
    checkpoint_minutes: float = option(10.0, group=_OUT, type=non_negative(float), metavar="M",
                                       help="save a checkpoint when M minutes of wall time have passed since the last "
                                            "save, so a crash loses at most about M minutes; 0 disables "
                                            "(default: {default})")
    keep_checkpoints: int = option(2, group=_OUT, type=positive(int),
                                   help="latest checkpoints to keep, besides the best by validation top-1 "
                                        "(default: {default})")
    eval_only: bool = option(False, group=_OUT, action="store_true",
                             help="evaluate the latest checkpoint in --workdir (or --init-from weights) and exit")
    eval_views: tuple[int, int] = option((1, 1), group=_OUT, type=views, metavar="CLIPSxCROPS",
                                         help="views per validation video, e.g. 10x3 (10 clips x 3 crops); video-level "
                                              "accuracy averages their softmax (default: {default})")
    eval_batch_size: int | None = option(group=_OUT, type=positive(int),
                                         help="global evaluation batch (default: the training micro-batch)")
    progress: bool = option(True, group=_OUT, flag="--no-progress", action="store_false",
                            help="no tqdm progress bars even on a terminal")

    def replace(self, **changes) -> "TrainConfig":
        """A copy with `changes` applied."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        """A JSON-serialisable dict of every field."""
        d = dataclasses.asdict(self)
        d["eval_views"] = list(self.eval_views)
        return d


EVAL_CROPS = (1, 3)  # the centre crop, or both ends and the centre of the long side (PySlowFast)


def parse_views(text: str) -> tuple[int, int]:
    """'CLIPSxCROPS' (e.g. '10x3') -> (10, 3); ValueError otherwise (crops must be 1 or 3)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"expected CLIPSxCROPS with positive integers, e.g. 1x1 or 10x3, got {text!r}")
    if int(m.group(2)) not in EVAL_CROPS:
        raise ValueError(f"expected CLIPSxCROPS with 1 crop (the centre) or 3 (both ends and the centre), "
                         f"got {text!r}")
    return int(m.group(1)), int(m.group(2))


def default_workdir(model: str, dataset: str) -> str:
    """runs/<model>-<dataset>: the same command always names the same workdir, so rerunning it resumes."""
    return os.path.join("runs", f"{model}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', dataset)}")


# Settings a resumed run must share with the run that wrote the checkpoints: they fix the state's
# structure, the clip and batch shapes, or the input order. The others (steps, lr, logging,
# evaluation, ...) may change between runs of one workdir.
RESUME_FIXED = ("dataset", "modality", "num_frames", "crop_size", "batch_size", "grad_accum", "optimizer", "seed")


def resume_conflicts(saved: dict, config: "TrainConfig") -> list[str]:
    """The RESUME_FIXED settings on which `config` differs from a saved run's config (as '--flag A, now B')."""
    out = []
    for key in RESUME_FIXED:
        if key in saved and saved[key] != getattr(config, key):
            out.append(f"--{key.replace('_', '-')} {saved[key]} (now {getattr(config, key)})")
    return out


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill the None fields from the accelerator's defaults and the model's canonical clip; validate."""
    from v3d_flax.registry import model_spec

    spec = model_spec(config.model)
    if config.compile_only != (config.tpu_topology is not None):
        raise ValueError("--compile-only and --tpu-topology go together: --compile-only --tpu-topology v5e:2x4")
    if config.compile_only:
        from v3d_flax.train.compile_only import parse_topology

        parse_topology(config.tpu_topology)  # a TopologyError (a ValueError) names the expected form
        config = config.replace(accelerator="tpu")  # a TPU run's defaults: the canonical clip, batch 64
    defaults = {**COMMON_DEFAULTS, **(CPU_DEFAULTS if config.accelerator == "cpu" else ACCEL_DEFAULTS)}
    if config.accelerator == "cpu":
        defaults.update(spec.cpu_defaults)
    else:
        t, h, _ = spec.clip
        defaults.update(num_frames=t, crop_size=h)
    changes = {k: v for k, v in defaults.items() if getattr(config, k) is None}
    if config.workdir is None:
        changes["workdir"] = default_workdir(config.model, config.dataset)
    config = config.replace(**changes)
    if config.eval_batch_size is None:
        config = config.replace(eval_batch_size=config.batch_size // config.grad_accum)
    checks = [
        (config.steps >= 1 or config.eval_only, f"--steps must be >= 1, got {config.steps}"),
        (config.batch_size >= 1, f"--batch-size must be >= 1, got {config.batch_size}"),
        (config.grad_accum >= 1, f"--grad-accum must be >= 1, got {config.grad_accum}"),
        (config.batch_size % config.grad_accum == 0,
         f"--batch-size {config.batch_size} must be divisible by --grad-accum {config.grad_accum}"),
        (config.lr > 0, f"--lr must be > 0, got {config.lr}"),
        (0 <= config.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {config.label_smoothing}"),
        (config.dropout is None or 0 <= config.dropout < 1, f"--dropout must be in [0, 1), got {config.dropout}"),
        (config.num_frames >= 1 and config.crop_size >= 1, "--num-frames and --crop-size must be >= 1"),
        (config.log_every >= 1, f"--log-every must be >= 1, got {config.log_every}"),
        (config.eval_every >= 0 and config.checkpoint_every >= 0, "--eval-every/--checkpoint-every must be >= 0"),
        (config.checkpoint_minutes >= 0, f"--checkpoint-minutes must be >= 0, got {config.checkpoint_minutes}"),
        (config.eval_views[1] in EVAL_CROPS and config.eval_views[0] >= 1,
         f"--eval-views must be CLIPSx1 or CLIPSx3, got {config.eval_views[0]}x{config.eval_views[1]}"),
        (not config.compile_only or config.modality == "rgb",
         "--compile-only projects RGB training only: its roofline cannot count TV-L1's data-dependent "
         "iterations"),
        (config.init_from is None or config.modality != "two-stream",
         "--init-from with --modality two-stream is not supported: train or load each stream on its own "
         "(--modality rgb / flow), then fuse them with python -m v3d_flax.predict --two-stream"),
        (config.conv_impl in CONV_IMPLS,
         f"--conv-impl must be one of {', '.join(CONV_IMPLS)}, got {config.conv_impl!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return config
