"""Extract penultimate features of many videos into one .npz file.

    python -m v3d_flax.features --model NAME --weights PATH --out FILE.npz DIR_OR_FILES...

Features are the model's pooled pre-classifier activations (`forward_features`; C3D: fc7 after ReLU,
or fc6 with --layer fc6), averaged over the recipe's views; with --two-stream the RGB and the flow
network's side by side. Directories are searched recursively for
video files. The .npz holds `features` (N, F) float32, `files` (N,) the path of each row, `failed` and
`errors` for the files that could not be used, plus `model` and `layer`. Exit status: 0 when every
file worked, 1 when some failed (the others are still written), 2 for usage errors (inputs that do
not exist are one, reported before the model loads). Progress goes to stderr: a bar on a terminal,
else a line per tenth of the videos.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from v3d_flax.cli import Progress, check_source_argument
from v3d_flax.predict import (add_model_arguments, check_two_stream_arguments, collect_videos, file_error,
                              predictor_from_args, predictor_views, recipe_from_args)
from v3d_flax.registry import list_models, model_spec


def video_features(predictor, path: str, recipe=None, *, clips=None, crops=None) -> np.ndarray:
    """(F,) float32 features of one video: the mean over its views."""
    return predictor.features(predictor_views(predictor, path, recipe, clips=clips, crops=crops)).mean(axis=0)


def save_npz(path: str, arrays: dict, *, force: bool) -> None:
    """Write `arrays` to `path` atomically (`checkpoints.atomic_write`); refuse to overwrite unless force."""
    from v3d_flax.checkpoints import atomic_write

    if os.path.lexists(path) and not force:
        raise FileExistsError(f"{path} already exists; pass --force to overwrite it")

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m v3d_flax.features`."""
    p = argparse.ArgumentParser(prog="python -m v3d_flax.features", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--out", required=True, metavar="FILE.npz", help="output file")
    layered = [name for name in list_models() if model_spec(name).feature_layers]
    layers = sorted({layer for name in layered for layer in model_spec(name).feature_layers})
    p.add_argument("--layer", choices=layers, default=None,
                   help="feature layer of the models that have several: "
                        + "; ".join(f"{n}: {', '.join(model_spec(n).feature_layers)} (default {model_spec(n).feature_layers[0]})"
                                    for n in layered))
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("inputs", nargs="+", metavar="DIR_OR_FILE", help="video files or directories of videos")
    return p


def main(argv=None) -> int:
    """Run the feature extractor CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    feature_layers = model_spec(args.model).feature_layers
    if args.layer is not None and args.layer not in feature_layers:
        parser.error(f"--layer {args.layer}: {args.model} has " + (f"the feature layers {', '.join(feature_layers)}"
                     if feature_layers else "one pooled feature layer"))
    if not args.out.endswith(".npz"):
        parser.error("--out must name a .npz file")
    check_source_argument(parser, args)
    check_two_stream_arguments(parser, args)
    if os.path.lexists(args.out) and not args.force:
        print(f"error: {args.out} already exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    files = collect_videos(parser, args.inputs)
    if not files:
        print("error: no video files found in " + ", ".join(args.inputs), file=sys.stderr)
        return 1
    from v3d_flax.checkpoints import CheckpointError
    from v3d_flax.extras import MissingExtraError
    from v3d_flax.hub import DownloadError
    from v3d_flax.port import PortError

    layer = args.layer or (feature_layers[0] if feature_layers else "pooled")
    try:
        recipe = recipe_from_args(args)
        predictor = predictor_from_args(args, recipe, feature_layer=args.layer)
    except (CheckpointError, PortError, ValueError, OSError, MissingExtraError, DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rows, done, failed, errors = [], [], [], []
    with Progress(len(files), "features", enabled=not args.no_progress) as progress:
        for path in files:
            try:
                rows.append(video_features(predictor, path, recipe, clips=args.clips,
                                           crops=args.crops))
                done.append(path)
            except Exception as e:  # one bad file must not stop the others
                failed.append(path)
                errors.append(file_error(path, e))
                progress.write(f"error: {errors[-1]}")
                progress.update(failed=True)
                continue
            progress.update()
    features = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)
    try:
        save_npz(args.out, {"features": features, "files": np.array(done, dtype=str),
                            "failed": np.array(failed, dtype=str), "errors": np.array(errors, dtype=str),
                            "model": np.array(args.model), "layer": np.array(layer)}, force=args.force)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {len(done)} videos x {features.shape[1] if rows else 0} features"
          + (f", {len(failed)} failed" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
