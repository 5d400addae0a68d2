#!/usr/bin/env python
"""Train or evaluate a v3d video model (JAX/Flax) on one or many devices and processes.

    python train.py --model c3d --accelerator cpu

trains C3D on the embedded synthetic motion dataset in a few minutes on a CPU; the same command
resumes from the latest checkpoint in --workdir when run again. See README.md, "Training".
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value
    return parse


def _non_negative(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a non-negative {kind.__name__}, got {text!r}")
        if value < 0:
            raise argparse.ArgumentTypeError(f"expected a non-negative {kind.__name__}, got {text!r}")
        return value
    return parse


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _views(text):
    from v3d_flax.train.config import parse_views

    try:
        return parse_views(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def _model_cpu_defaults_text() -> str:
    """The per-model CPU defaults that differ from the common ones, for --help's epilog."""
    from v3d_flax.registry import list_models, model_spec

    parts = [f"{model}: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in model_spec(model).cpu_defaults.items())
             for model in list_models() if model_spec(model).cpu_defaults]
    return f"On cpu these models have their own defaults: {'; '.join(parts)}." if parts else ""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every flag is documented in --help."""
    from v3d_flax.cli import model_name
    from v3d_flax.port.keymaps import KEYMAPS
    from v3d_flax.registry import list_models
    from v3d_flax.train.config import ACCEL_DEFAULTS, CPU_DEFAULTS, DEFAULT_DATASET

    cpu, acc = CPU_DEFAULTS, ACCEL_DEFAULTS
    p = argparse.ArgumentParser(
        prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Defaults marked 'cpu: A, gpu/tpu: B' depend on --accelerator; gpu/tpu runs use the "
               "model's canonical clip (16x112x112 for C3D and the ResNets). "
               + _model_cpu_defaults_text() +
               " Ctrl-C finishes the current step, saves a checkpoint and exits 130 (a second Ctrl-C aborts at "
               "once); rerun the same command to resume. Exit status: 0 on success (also after a SIGTERM, which "
               "saves a checkpoint first), 1 on a run-time error (no such accelerator, a workdir owned by another "
               "model, a NaN loss), 2 on invalid flags, 130 after Ctrl-C.")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, type=model_name, metavar="NAME",
                   help=f"model to train, one of: {', '.join(list_models())}")
    g.add_argument("--dataset", default=DEFAULT_DATASET,
                   help=f"'{DEFAULT_DATASET}' (embedded, generated locally, class decided only by motion), "
                        "'ucf101' through TensorFlow Datasets, or any TFDS dataset with a video feature and a "
                        "class label (default: %(default)s)")
    g.add_argument("--data-dir", default=None,
                   help="TFDS data_dir (a local path or gs://bucket/path); default: TFDS's own (~/tensorflow_datasets)")
    g.add_argument("--num-frames", type=_positive(int), default=None,
                   help=f"frames per clip (cpu: {cpu['num_frames']}, gpu/tpu: the model's canonical clip)")
    g.add_argument("--crop-size", type=_positive(int), default=None,
                   help=f"square crop in pixels (cpu: {cpu['crop_size']}, gpu/tpu: the model's canonical clip)")
    g.add_argument("--init-from", default=None, metavar="PATH",
                   help="initialise from a PyTorch checkpoint file (.pt/.pth/.safetensors, through v3d_flax.port; "
                        "a classifier of another size stays freshly initialised) or from an orbax checkpoint "
                        "of this trainer (a workdir, its checkpoints/ or best/ directory, or one step directory)")
    g.add_argument("--init-source", default="v3d", choices=sorted(KEYMAPS),
                   help="key layout of the --init-from PyTorch checkpoint (default: %(default)s)")

    g = p.add_argument_group("devices and processes")
    g.add_argument("--accelerator", choices=("cpu", "gpu", "tpu"), default="cpu",
                   help="device kind; a kind JAX cannot find is an error, never a silent CPU fallback "
                        "(default: %(default)s)")
    g.add_argument("--parallel", choices=("jit", "pmap"), default="jit",
                   help="'jit': the batch sharded over a mesh of every device (default); 'pmap': the same step "
                        "through jax.pmap with cross-replica BatchNorm (single process)")
    g.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                   help="start jax.distributed with this coordinator (with --num-processes and --process-id); "
                        "not needed on Cloud TPU, SLURM or Open MPI, which are detected")
    g.add_argument("--num-processes", type=_positive(int), default=None, help="processes in the job")
    g.add_argument("--process-id", type=_non_negative(int), default=None, help="this process's index, from 0")

    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=_positive(int), default=None,
                   help=f"optimizer steps (cpu: {cpu['steps']}, gpu/tpu: {acc['steps']})")
    g.add_argument("--batch-size", type=_positive(int), default=None,
                   help=f"global batch per optimizer step over all devices and processes; must divide over the "
                        f"devices (cpu: {cpu['batch_size']}, gpu/tpu: {acc['batch_size']})")
    g.add_argument("--lr", type=_positive(float), default=None,
                   help=f"peak learning rate (cpu: {cpu['lr']}, gpu/tpu: {acc['lr']})")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default=None,
                   help="'sgd': momentum 0.9, Nesterov; 'adamw': decoupled weight decay (default: sgd; "
                        "adamw for c3d on cpu)")
    g.add_argument("--weight-decay", type=_non_negative(float), default=1e-4,
                   help="weight decay on conv and linear kernels, never on BatchNorm parameters or biases "
                        "(default: %(default)s)")
    g.add_argument("--label-smoothing", type=_fraction, default=None,
                   help="label smoothing (default: 0.1; 0 for c3d on cpu)")
    g.add_argument("--dropout", type=_fraction, default=None,
                   help="dropout rate of the model's dropout layers (default: the model's own, e.g. 0.5 for "
                        "c3d and i3d; 0 for c3d on cpu)")
    g.add_argument("--warmup-steps", type=_non_negative(int), default=None,
                   help=f"linear warmup steps before the cosine decay (cpu: {cpu['warmup_steps']}, "
                        f"gpu/tpu: {acc['warmup_steps']})")
    g.add_argument("--grad-clip", type=_non_negative(float), default=1.0,
                   help="clip gradients to this global norm; 0 disables (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the initialisation, dropout and the input order (default: %(default)s)")
    g.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="'bf16' computes in bfloat16 with float32 parameters and BatchNorm statistics "
                        "(default: %(default)s)")
    g.add_argument("--remat", action="store_true", help="rematerialise activations per block in the backward pass")
    g.add_argument("--grad-accum", type=_positive(int), default=1,
                   help="accumulate gradients over N micro-batches of batch-size/N (optax.MultiSteps) "
                        "(default: %(default)s)")

    g = p.add_argument_group("outputs, evaluation and checkpoints")
    g.add_argument("--workdir", default=None,
                   help="where checkpoints, metrics.jsonl, tensorboard/ and curves.png go; rerunning with the same "
                        "workdir resumes (default: runs/<model>-<dataset>, so rerunning the same command resumes)")
    g.add_argument("--log-every", type=_positive(int), default=None,
                   help=f"log training metrics every N steps (cpu: {cpu['log_every']}, gpu/tpu: {acc['log_every']})")
    g.add_argument("--eval-every", type=_non_negative(int), default=None,
                   help=f"evaluate every N steps, and always at the end; 0: only at the end "
                        f"(cpu: {cpu['eval_every']}, gpu/tpu: {acc['eval_every']})")
    g.add_argument("--checkpoint-every", type=_non_negative(int), default=0,
                   help="also save a checkpoint every N steps; 0: no step interval (default: %(default)s)")
    g.add_argument("--checkpoint-minutes", type=_non_negative(float), default=10.0, metavar="M",
                   help="save a checkpoint when M minutes of wall time have passed since the last save, so a crash "
                        "loses at most about M minutes; 0 disables (default: %(default)s)")
    g.add_argument("--keep-checkpoints", type=_positive(int), default=2,
                   help="latest checkpoints to keep, besides the best by validation top-1 (default: %(default)s)")
    g.add_argument("--eval-only", action="store_true",
                   help="evaluate the latest checkpoint in --workdir (or --init-from weights) and exit")
    g.add_argument("--eval-views", type=_views, default=(1, 1), metavar="CLIPSxCROPS",
                   help="views per validation video, e.g. 10x3 (10 clips x 3 crops); video-level accuracy averages "
                        "their softmax (default: 1x1)")
    g.add_argument("--eval-batch-size", type=_positive(int), default=None,
                   help="global evaluation batch (default: the training micro-batch)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bars even on a terminal")
    return p


def main(argv=None) -> int:
    """Parse flags, run, map expected failures to one line on stderr and exit status 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.init_from is not None and not os.path.exists(args.init_from):  # one line, before any model is built
        print(f"{parser.prog}: error: --init-from {args.init_from}: no such file or directory", file=sys.stderr)
        return 2
    if args.init_from is None and args.eval_only and args.workdir is None:
        parser.error("--eval-only needs --workdir (a run to evaluate) or --init-from")
    from v3d_flax.extras import missing

    needs = missing("train", "training")  # TensorFlow, tfds, TensorBoard, matplotlib: one line, not a traceback
    if needs:
        print(f"{parser.prog}: error: {needs}", file=sys.stderr)
        return 1

    from v3d_flax.train import TrainConfig, TrainingDiverged, resolve, run
    from v3d_flax.train.checkpointing import WorkdirError
    from v3d_flax.train.mesh import AcceleratorError

    config = TrainConfig(
        model=args.model, accelerator=args.accelerator, dataset=args.dataset, data_dir=args.data_dir,
        workdir=args.workdir, steps=args.steps, batch_size=args.batch_size, num_frames=args.num_frames,
        crop_size=args.crop_size, lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, dropout=args.dropout, warmup_steps=args.warmup_steps,
        grad_clip=args.grad_clip,
        seed=args.seed, precision=args.precision, remat=args.remat, grad_accum=args.grad_accum,
        log_every=args.log_every, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
        checkpoint_minutes=args.checkpoint_minutes,
        keep_checkpoints=args.keep_checkpoints, init_from=args.init_from, init_source=args.init_source,
        eval_only=args.eval_only, eval_views=args.eval_views, eval_batch_size=args.eval_batch_size,
        parallel=args.parallel, coordinator_address=args.coordinator_address, num_processes=args.num_processes,
        process_id=args.process_id, progress=not args.no_progress)
    try:
        resolve(config.replace(workdir=config.workdir or "-"))  # flag combinations, before any device work
    except ValueError as e:
        parser.error(str(e))
    try:
        result = run(config)
    except KeyboardInterrupt:  # Ctrl-C before training started (the loop itself saves and returns)
        print("interrupted before training started; nothing was saved", file=sys.stderr)
        return 130
    except (AcceleratorError, WorkdirError, TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # settings that only the devices/dataset can refute (batch vs devices, ...)
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 130 if result and result.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
