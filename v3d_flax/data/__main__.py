"""`python -m v3d_flax.data prepare NAME --data-dir DIR` (tfds download + preparation) and `info NAME`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m v3d_flax.data", description=__doc__)
    parser.add_argument("command", choices=["prepare", "info"],
                        help="prepare: download and prepare with tfds (needs internet, except for the embedded "
                             "v3d_synthetic_motion); info: describe a prepared dataset")
    parser.add_argument("name", help="tfds dataset name, e.g. ucf101, ucf101/ucf101_2 or v3d_synthetic_motion")
    parser.add_argument("--data-dir", default=None, help="tfds data directory (default: $TFDS_DATA_DIR or "
                                                         "~/tensorflow_datasets); train.py's --data-dir")
    args = parser.parse_args(argv)
    from v3d_flax.extras import missing

    needs = missing("train", "python -m v3d_flax.data")  # TensorFlow and tfds: one line, not a traceback
    if needs:
        print(f"error: {needs}", file=sys.stderr)
        return 1
    from v3d_flax.data import sources

    try:
        info = (sources.prepare if args.command == "prepare" else sources.dataset_info)(args.name, args.data_dir)
    except (ValueError, RuntimeError, sources.DatasetNotPreparedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{info.name}: {info.num_classes} classes, {info.num_train} training videos ({info.train_split}), "
          f"{info.num_eval} evaluation videos ({info.eval_split}) in {args.data_dir or sources.default_data_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
