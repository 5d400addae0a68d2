"""`python -m v3d_flax.data prepare NAME` (tfds download + preparation), `from-folder SRC NAME` (your own
videos as a tfds dataset), `flow SOURCE NAME` (a dataset's TV-L1 flow, precomputed) and `info NAME`;
each takes --data-dir DIR."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m v3d_flax.data", description=__doc__)
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument("--data-dir", default=None, help="tfds data directory (default: $TFDS_DATA_DIR or "
                                                           "~/tensorflow_datasets); train.py's --data-dir")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{prepare,from-folder,flow,info}")
    for command, help_ in (("prepare", "download and prepare a tfds dataset (needs internet, except for the "
                                       "embedded v3d_synthetic_motion)"),
                           ("info", "describe a prepared dataset")):
        sub = commands.add_parser(command, parents=[data_dir], help=help_)
        sub.add_argument("name", help="tfds dataset name, e.g. ucf101, ucf101/ucf101_2 or v3d_synthetic_motion")
    sub = commands.add_parser("from-folder", parents=[data_dir],
                              help="write SRC/train/<class>/<video> and SRC/validation/<class>/<video> "
                                   "(or val/, test/) as the tfds dataset NAME")
    sub.add_argument("source", help="the folder of videos")
    sub.add_argument("name", help="the new dataset's name (lower case, digits, underscores)")
    sub.add_argument("--short-side", type=int, default=128,
                     help="resize frames so that the short side has this many pixels (default 128, for 112 "
                          "crops; 256 or 320 for 224 crops; 0 keeps the decoded size)")
    sub.add_argument("--frames", choices=["jpeg", "uint8"], default="jpeg",
                     help="store JPEG frames (default; decoded per clip) or pre-decoded uint8 frames (no "
                          "decoding when training, 10-30x larger)")
    sub = commands.add_parser("flow", parents=[data_dir],
                              help="precompute the TV-L1 flow of every video of SOURCE (OpenCV's defaults) into "
                                   "the tfds dataset NAME, which train.py --modality flow reads")
    sub.add_argument("source", help="a prepared video dataset, e.g. v3d_synthetic_motion or one from from-folder")
    sub.add_argument("name", help="the new dataset's name (lower case, digits, underscores)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    from v3d_flax.extras import missing

    needs = missing("train", "python -m v3d_flax.data")  # TensorFlow and tfds: one line, not a traceback
    if needs:
        print(f"error: {needs}", file=sys.stderr)
        return 1
    from v3d_flax.data import sources

    try:
        if args.command == "from-folder":
            from v3d_flax.data.folder import prepare_folder

            def progress(i, n, path):
                print(f"[{i + 1}/{n}] {path}", file=sys.stderr, flush=True)

            info = prepare_folder(args.source, args.name, args.data_dir, short_side=args.short_side or None,
                                  frames=args.frames, progress=progress)
        elif args.command == "flow":
            from v3d_flax.data.flow_dataset import prepare_flow

            def progress(i, n):
                if i % max(n // 20, 1) == 0:
                    print(f"[{i + 1}/{n}]", file=sys.stderr, flush=True)

            info = prepare_flow(args.source, args.name, args.data_dir, progress=progress)
        else:
            info = (sources.prepare if args.command == "prepare" else sources.dataset_info)(args.name, args.data_dir)
    except (ValueError, RuntimeError, sources.DatasetNotPreparedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{info.name}: {info.num_classes} classes, {info.num_train} training videos ({info.train_split}), "
          f"{info.num_eval} evaluation videos ({info.eval_split}) in {args.data_dir or sources.default_data_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
