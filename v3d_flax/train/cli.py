"""Train or evaluate a v3d video model (JAX/Flax) on one or many devices and processes.

    python train.py --model c3d --accelerator cpu

trains C3D on the embedded synthetic motion dataset in a few minutes on a CPU; the same command
resumes from the latest checkpoint in --workdir when run again. See README.md, "Training".
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from v3d_flax.train.config import ACCEL_DEFAULTS, COMMON_DEFAULTS, CPU_DEFAULTS, GROUPS, TrainConfig, resolve

EPILOG = ("Defaults marked 'cpu: A, gpu/tpu: B' depend on --accelerator; gpu/tpu runs use the model's canonical "
          "clip (16x112x112 for C3D and the ResNets). {cpu_models} Ctrl-C finishes the current step, saves a "
          "checkpoint and exits 130 (a second Ctrl-C aborts at once); rerun the same command to resume. Exit "
          "status: 0 on success (also after a SIGTERM, which saves a checkpoint first), 1 on a run-time error (no "
          "such accelerator, a workdir owned by another model, a NaN loss), 2 on invalid flags, 130 after Ctrl-C.")


def _value_text(value) -> str:
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)  # --eval-views: 1x1


def _cpu_overrides(name: str) -> str:
    """'; adamw for c3d on cpu': the models whose record sets field `name` on CPU."""
    from v3d_flax.registry import all_specs

    by_value: dict[str, list[str]] = {}
    for spec in all_specs():
        if name in spec.cpu_defaults:
            value = spec.cpu_defaults[name]
            by_value.setdefault(format(value, "g") if isinstance(value, float) else str(value), []).append(spec.name)
    return "".join(f"; {value} for {' and '.join(models)} on cpu" for value, models in by_value.items())


def help_text(f: dataclasses.Field) -> str:
    """Field `f`'s help template filled in: {default}, {cpu}, {gpu}, {common} (the defaults of
    `v3d_flax.train.config`), {on_cpu} (the model records' CPU overrides) and {models}."""
    from v3d_flax.registry import list_models

    values = dict(default=_value_text(f.default), cpu=CPU_DEFAULTS.get(f.name), gpu=ACCEL_DEFAULTS.get(f.name),
                  common=_value_text(COMMON_DEFAULTS.get(f.name)), on_cpu=_cpu_overrides(f.name),
                  models=", ".join(list_models()))
    return f.metadata["help"].format(**values)


def _model_cpu_defaults_text() -> str:
    """The per-model CPU defaults that differ from the common ones, for --help's epilog."""
    from v3d_flax.registry import all_specs

    parts = [f"{spec.name}: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in spec.cpu_defaults.items())
             for spec in all_specs() if spec.cpu_defaults]
    return f"On cpu these models have their own defaults: {'; '.join(parts)}." if parts else ""


def flag_fields() -> list[dataclasses.Field]:
    """The TrainConfig fields that are command-line flags (those declared with `config.option`)."""
    return [f for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    """The argument parser: one flag per `flag_fields()` entry, its help, type and default from the field."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=EPILOG.format(cpu_models=_model_cpu_defaults_text()))
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    for f in flag_fields():
        meta = f.metadata
        kwargs = dict(dest=f.name, help=help_text(f))
        if meta["action"] is not None:
            kwargs.update(action=meta["action"])
        else:
            kwargs.update(type=meta["type"], choices=meta["choices"], metavar=meta["metavar"])
        if f.default is dataclasses.MISSING:
            kwargs.update(required=True)
        else:
            kwargs.update(default=f.default)
        groups[meta["group"]].add_argument(meta["flag"] or "--" + f.name.replace("_", "-"), **kwargs)
    return p


def _checkpoint_exists(path: str, source: str) -> bool:
    """Whether --init-from `path` names something to read: a file or directory, or for a TensorFlow
    source a checkpoint prefix (".../model.ckpt", whose files are model.ckpt.index, ...)."""
    from v3d_flax.port.sources import get_source

    return os.path.exists(path) or (get_source(source).reader == "tensorflow" and os.path.exists(path + ".index"))


def _is_weights_name(model: str, name: str) -> bool:
    """Whether --init-from `name` names pretrained weights of `model` (`python -m v3d_flax.weights`)."""
    from v3d_flax.weights import named_weights

    return named_weights(model, name) is not None


def _compile_only(parser, args) -> int:
    """--compile-only: compile the step for --tpu-topology and print the report; 1 if it does not compile."""
    from v3d_flax.train.compile_only import TopologyError, compile_train_step, format_report, host_only

    host_only()
    try:
        config = resolve(TrainConfig(**{f.name: getattr(args, f.name) for f in flag_fields()}))
    except ValueError as e:
        parser.error(str(e))
    try:
        report = compile_train_step(config, config.tpu_topology)  # libtpu and the grid checked before the model
    except (TopologyError, ValueError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    print(format_report(report), flush=True)
    return 0 if report.compiled else 1


def main(argv=None, *, prog: str = "train.py") -> int:
    """Parse flags, run, map expected failures to one line on stderr and exit status 1 (2 for flags)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is first imported
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if (args.init_from is not None and not _checkpoint_exists(args.init_from, args.init_source)
            and not _is_weights_name(args.model, args.init_from)):  # before any model
        print(f"{parser.prog}: error: --init-from {args.init_from}: no such file or directory, and not a name of "
              f"{args.model}'s pretrained weights (python -m v3d_flax.weights {args.model})", file=sys.stderr)
        return 2
    if args.init_from is None and args.eval_only and args.workdir is None:
        parser.error("--eval-only needs --workdir (a run to evaluate) or --init-from")
    if args.compile_only:  # needs JAX and libtpu only: no TensorFlow, no dataset
        return _compile_only(parser, args)
    from v3d_flax.extras import missing

    needs = missing("train", "training")  # TensorFlow, tfds, TensorBoard, matplotlib: one line, not a traceback
    if needs:
        print(f"{parser.prog}: error: {needs}", file=sys.stderr)
        return 1
    try:
        config = resolve(TrainConfig(**{f.name: getattr(args, f.name) for f in flag_fields()}))
    except ValueError as e:  # flag combinations, before any device work
        parser.error(str(e))

    from v3d_flax.hub import DownloadError
    from v3d_flax.train.checkpointing import WorkdirError
    from v3d_flax.train.loop import TrainingDiverged, run_resolved
    from v3d_flax.train.mesh import AcceleratorError

    try:
        result = run_resolved(config)
    except KeyboardInterrupt:  # Ctrl-C before training started (the loop itself saves and returns)
        print("interrupted before training started; nothing was saved", file=sys.stderr)
        return 130
    # ValueError: settings that only the devices or the dataset can refute (batch vs devices, ...)
    except (AcceleratorError, WorkdirError, TrainingDiverged, ValueError, DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 130 if result and result.get("interrupted") else 0
