"""The training run's configuration: one frozen dataclass built from train.py's flags.

Fields left as `None` are filled by `resolve` from the accelerator: a CPU run defaults to a small
clip and a short schedule that finish within minutes on two cores; GPU/TPU runs default to the
model's canonical clip; a model's own CPU settings (C3D's) come from its record
(`v3d_flax.registry.model_spec(name).cpu_defaults`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass

DEFAULT_DATASET = "v3d_synthetic_motion"

# Defaults for the fields that are None in TrainConfig: common ones, then per accelerator kind, then
# the model record's `cpu_defaults` on CPU.
COMMON_DEFAULTS = dict(optimizer="sgd", label_smoothing=0.1)
CPU_DEFAULTS = dict(steps=150, batch_size=16, num_frames=16, crop_size=16, lr=0.02, warmup_steps=15,
                    log_every=10, eval_every=0)
ACCEL_DEFAULTS = dict(steps=20_000, batch_size=64, lr=0.1, warmup_steps=1_000, log_every=50, eval_every=2_000)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training or evaluation run (see train.py --help for each field)."""

    model: str
    accelerator: str = "cpu"
    dataset: str = DEFAULT_DATASET
    data_dir: str | None = None
    workdir: str | None = None
    steps: int | None = None
    batch_size: int | None = None
    num_frames: int | None = None
    crop_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    label_smoothing: float | None = None
    dropout: float | None = None  # None: the model's own rate
    warmup_steps: int | None = None
    grad_clip: float = 1.0
    seed: int = 0
    precision: str = "fp32"
    remat: bool = False
    grad_accum: int = 1
    log_every: int | None = None
    eval_every: int | None = None
    checkpoint_every: int = 0
    checkpoint_minutes: float = 10.0
    keep_checkpoints: int = 2
    init_from: str | None = None
    init_source: str = "v3d"
    eval_only: bool = False
    eval_views: tuple[int, int] = (1, 1)
    eval_batch_size: int | None = None
    parallel: str = "jit"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    progress: bool = True

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
RESUME_FIXED = ("dataset", "num_frames", "crop_size", "batch_size", "grad_accum", "optimizer", "seed")


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
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return config
