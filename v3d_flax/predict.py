"""Classify video files with a pretrained model: multi-view inference, top-k labels.

    python -m v3d_flax.predict --model NAME --weights PATH [--top-k 5] [--json] VIDEO_OR_DIR...
    python -m v3d_flax.predict --model i3d --two-stream --weights RGB --flow-weights FLOW VIDEO_OR_DIR...

Each video is decoded with PyAV and sampled as the model's record says (`v3d_flax.registry.model_spec(name)`:
its recipe, frames x rate, resize, crop, and its normalisation); the softmax probabilities of all views (clips x crops)
are averaged. Directories are searched recursively for video files. Over several videos, progress
goes to stderr (a bar on a terminal, else a line per tenth). Exit status: 0 when every file was
classified, 1 when some failed (their errors are printed, the others are still processed), 2 for
usage errors (a misspelt model, an input that does not exist: checked before the model loads).
Flow weights (`--weights kinetics400_flow`, or a checkpoint with 2 input channels) see TV-L1 flow
computed from the clip's frames (`v3d_flax.flow`); `--two-stream` runs an RGB and a flow network on
the same views and fuses them (`v3d_flax.two_stream.fuse`) before the views are averaged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

from v3d_flax.cli import Progress, check_source_argument, model_name
from v3d_flax.preprocessing import Recipe
from v3d_flax.registry import list_models, model_spec
from v3d_flax.video import VideoError, find_videos, load_views

# JAX and Flax are imported where they are used: `python -m v3d_flax.predict` parses its arguments
# (and reports usage errors) first.
if TYPE_CHECKING:
    from flax import nnx

BUILTIN_CLASSES = {"kinetics400": 400, "kinetics600": 600, "sports1m": 487, "ucf101": 101}


def load_class_names(spec: str | None, num_classes: int) -> list[str]:
    """Class names for a `num_classes` head: a built-in list ("kinetics400", "ucf101"), a text file with
    one name per line, or (spec None) the built-in list of that size, else "class_<i>"."""
    if spec is None:
        spec = next((name for name, n in BUILTIN_CLASSES.items() if n == num_classes), None)
        if spec is None:
            return [f"class_{i}" for i in range(num_classes)]
    if spec in BUILTIN_CLASSES:
        text = resources.files("v3d_flax.classnames").joinpath(f"{spec}.txt").read_text(encoding="utf-8")
        source = f"built-in list {spec!r}"
    else:
        with open(spec, encoding="utf-8") as f:
            text = f.read()
        source = spec
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != num_classes:
        raise ValueError(f"{source} has {len(names)} class names but the model has {num_classes} classes")
    return names


def recorded_class_names(weights: str | os.PathLike) -> list[str] | None:
    """The class names a train.py run recorded in its run.json, when `weights` is that run's workdir
    (or its checkpoints/, best/ or one step directory); None otherwise."""
    from v3d_flax.checkpoints import training_run_record

    names = training_run_record(weights).get("class_names")
    return [str(n) for n in names] if isinstance(names, list) else None


class Predictor:
    """A model in eval mode with jitted logits / features over batches of views (fixed batch shape)."""

    def __init__(self, model: nnx.Module, *, batch_size: int = 8, feature_layer: str | None = None,
                 weights=None):
        import jax
        from flax import nnx

        model.eval()
        self.model = model
        self.arch = getattr(model, "arch", None)
        self.spec = model_spec(self.arch) if self.arch else None  # the record: recipe, normalisation
        # the pretrained weights' record (`v3d_flax.weights.Weights`) when loaded by name: its recipe,
        # normalisation and class names are the ones the checkpoint expects
        self.weights = weights
        source = weights if weights is not None else self.spec
        self.recipe = source.recipe if source is not None else None
        self.normalization = source.normalization if source is not None else None
        self.batch_size = batch_size
        # what the network sees: RGB frames, or TV-L1 flow computed here from one frame more
        self.modality = weights.modality if weights is not None else (
            "flow" if getattr(model, "in_channels", 3) == 2 else "rgb")
        graphdef, state = nnx.split(model)
        layer_kw = {"layer": feature_layer} if feature_layer else {}
        flow = self.modality == "flow"

        def network_input(x):
            from v3d_flax.two_stream import flow_input

            return flow_input(x) if flow else x

        @jax.jit
        def logits(state, x):
            return nnx.merge(graphdef, state)(network_input(x))

        @jax.jit
        def features(state, x):
            model = nnx.merge(graphdef, state)
            if not hasattr(model, "forward_features"):
                raise NotImplementedError(f"{type(model).__name__} has no forward_features(x); "
                                          f"features cannot be extracted from it")
            return model.forward_features(network_input(x), **layer_kw)

        self._state, self._logits, self._features = state, logits, features

    def _batched(self, fn, views) -> np.ndarray:
        import jax.numpy as jnp

        parts = views if isinstance(views, (list, tuple)) else [views]
        n = parts[0].shape[0]
        batch = min(self.batch_size, n)
        outs = []
        for start in range(0, n, batch):
            chunk = [p[start:start + batch] for p in parts]
            real = chunk[0].shape[0]
            if real < batch:  # pad so every call reuses one compiled shape
                chunk = [np.concatenate([c, np.zeros((batch - real, *c.shape[1:]), c.dtype)]) for c in chunk]
            x = [jnp.asarray(c) for c in chunk] if len(chunk) > 1 else jnp.asarray(chunk[0])
            outs.append(np.asarray(fn(self._state, x))[:real])
        return np.concatenate(outs)

    def logits(self, views) -> np.ndarray:
        """(V, num_classes) float32 logits of V views (an array, or [slow, fast] for SlowFast)."""
        return self._batched(self._logits, views)

    def features(self, views) -> np.ndarray:
        """(V, F) float32 pre-classifier features of V views."""
        return self._batched(self._features, views)


def average_probabilities(logits: np.ndarray) -> np.ndarray:
    """The mean over views of the softmax probabilities, (num_classes,) float32."""
    import jax
    import jax.numpy as jnp

    return np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1).mean(axis=0))


def predictor_views(predictor: Predictor, path: str, recipe: Recipe | None = None, *, clips: int | None = None,
                    crops: int | None = None):
    """The views of one video file for the predictor's model: sampled with `recipe` (default: its record's)
    over `clips` x `crops` views (default: the recipe's), normalised as its record says."""
    if predictor.spec is None:
        raise ValueError("the predictor's model has no registry name (model.arch), so its recipe and "
                         "normalisation are unknown; call v3d_flax.video.load_views with them")
    recipe = recipe or predictor.recipe
    if predictor.modality != "rgb":  # flow from one frame more, on frames as decoded
        from v3d_flax.two_stream import RAW

        return load_views(path, recipe.with_overrides(frames=recipe.frames + 1), RAW, clips=clips, crops=crops)
    return load_views(path, recipe, predictor.normalization, clips=clips, crops=crops)


def predict_video(predictor: Predictor, path: str, recipe: Recipe | None = None, *,
                  clips: int | None = None, crops: int | None = None) -> np.ndarray:
    """View-averaged class probabilities of one video file, (num_classes,) float32.

    The video is sampled with `recipe` (default: the model's, `model_spec(name).recipe`), over `clips`
    x `crops` views (default: the recipe's), and normalised as the model's record says. A file that
    cannot be used raises `v3d_flax.video.VideoError` naming it.
    """
    return average_probabilities(predictor.logits(predictor_views(predictor, path, recipe, clips=clips, crops=crops)))


def file_error(path: str, error: Exception) -> str:
    """The message for a video that failed: VideoErrors already name the file, anything else gets it."""
    if isinstance(error, VideoError):
        return str(error)
    return f"{path}: {type(error).__name__}: {error}"


def top_k(probs: np.ndarray, names: list[str], k: int) -> list[dict]:
    """The k most probable classes as [{"index", "label", "probability"}], best first (ties: lower index)."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"index": int(i), "label": names[i], "probability": float(probs[i])} for i in order]


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by predict and features: model, weights and their source, recipe overrides."""
    from v3d_flax.cli import add_source_argument

    p.add_argument("--model", required=True, type=model_name, metavar="NAME",
                   help="registry name: " + ", ".join(list_models()))
    p.add_argument("--weights", required=True, metavar="NAME_OR_PATH",
                   help="pretrained weights by name (e.g. kinetics400; python -m v3d_flax.weights lists them: "
                        "downloaded, verified, cached) or a checkpoint: PyTorch (.pth/.pt/.pickle/.safetensors) or "
                        "Flax (orbax dir, .safetensors, training workdir), or a checkpoint of --source")
    add_source_argument(p)
    p.add_argument("--num-classes", type=int, default=None, help="head size (default: read from the weights)")
    p.add_argument("--clips", type=int, default=None, help="temporal views per video (default: the recipe's)")
    p.add_argument("--crops", type=int, choices=(1, 3), default=None, help="spatial views (default: the recipe's)")
    p.add_argument("--frames", type=int, default=None, help="override the recipe's frames per clip")
    p.add_argument("--rate", type=int, default=None, help="override the recipe's sampling rate")
    p.add_argument("--resize", type=int, default=None, help="override the recipe's resize: short side in pixels")
    p.add_argument("--crop", type=int, default=None, help="override the recipe's crop size")
    p.add_argument("--batch-size", type=int, default=8, help="views per forward pass (default: 8)")
    p.add_argument("--two-stream", action="store_true",
                   help="add a flow stream: --weights is the RGB network, --flow-weights the flow one, which sees "
                        "TV-L1 flow computed from the video (v3d_flax.flow)")
    p.add_argument("--flow-weights", default=None, metavar="NAME_OR_PATH",
                   help="the flow stream's weights, e.g. kinetics400_flow, or a checkpoint with 2 input channels "
                        "(same --source as --weights)")
    p.add_argument("--fusion", choices=("logits", "softmax"), default="logits",
                   help="two-stream fusion: sum the logits (DeepMind's I3D) or average the softmax (default: logits)")


def check_two_stream_arguments(parser: argparse.ArgumentParser, args) -> None:
    """A usage error unless --two-stream and --flow-weights come together."""
    if args.two_stream != (args.flow_weights is not None):
        parser.error("--two-stream and --flow-weights go together: --two-stream --weights RGB --flow-weights FLOW")


def predictor_from_args(args, recipe: Recipe, feature_layer: str | None = None):
    """The Predictor of --model/--weights, or with --two-stream the TwoStreamPredictor of it and --flow-weights
    (also when --weights is a `train.py --modality two-stream` workdir, which holds both)."""
    from v3d_flax.checkpoints import training_run_record
    from v3d_flax.weights import named_weights

    run = training_run_record(args.weights) if args.source == "v3d" else {}
    if run.get("config", {}).get("modality") == "two-stream" and not args.two_stream:
        # a `train.py --modality two-stream` workdir holds both networks: predict with both, fused as trained
        args = argparse.Namespace(**{**vars(args), "two_stream": True, "flow_weights": args.weights,
                                     "fusion": run["config"].get("fusion", "logits")})
    predictor = load_predictor(args.model, args.weights, source=args.source, num_classes=args.num_classes,
                               recipe=recipe, batch_size=args.batch_size, feature_layer=feature_layer)
    if not args.two_stream:
        return predictor
    flow = load_predictor(args.model, args.flow_weights, source=args.source, num_classes=args.num_classes,
                          recipe=recipe, batch_size=args.batch_size, feature_layer=feature_layer,
                          **({} if named_weights(args.model, args.flow_weights) else {"in_channels": 2}))
    from v3d_flax.two_stream import TwoStreamPredictor

    return TwoStreamPredictor(predictor, flow, args.fusion)


def recipe_from_args(args) -> Recipe:
    """The recipe of `--weights` when it names pretrained weights, else the model's, with the command
    line's overrides."""
    from v3d_flax.weights import named_weights

    record = named_weights(args.model, args.weights)
    base = record.recipe if record is not None else model_spec(args.model).recipe
    return base.with_overrides(frames=args.frames, rate=args.rate, resize=args.resize, crop=args.crop)


def load_predictor(model_name: str, weights: str | os.PathLike, *, source: str = "v3d", num_classes: int | None = None,
                   recipe: Recipe | None = None, batch_size: int = 8, feature_layer: str | None = None,
                   **model_kwargs) -> Predictor:
    """Build `model_name`, load `weights` into it and wrap it in a Predictor (eval mode, jitted).

    `weights`: a checkpoint of `source` (`v3d_flax.port.list_sources()`: PyTorch files in v3d's or a
    publisher's naming, needing the [torch] extra unless .safetensors; DeepMind's TensorFlow I3D; 2D
    ImageNet networks, inflated), or with source "v3d" a Flax checkpoint (a .safetensors or orbax
    directory written by `v3d_flax.checkpoints.save_checkpoint`, a `train.py` workdir). `num_classes` is read from the checkpoint unless given;
    `recipe` fixes C3D's clip size (default: the checkpoint's, else the model's). `batch_size` views go
    through each forward pass; `feature_layer` picks C3D's feature layer ("fc6" or "fc7") for
    `Predictor.features`. The loaded model is `predictor.model`. `weights` may also name the model's
    pretrained weights ("kinetics400", `v3d_flax.list_weights(model_name)`) or be a
    `v3d_flax.weights.Weights` record: downloaded, verified and cached (`v3d_flax.hub`), and their
    recipe, normalisation and class names are the predictor's. Errors:
    `v3d_flax.checkpoints.CheckpointError`, `v3d_flax.port.PortError`, `v3d_flax.hub.DownloadError`.
    `model_kwargs` go to the factory of a checkpoint file's model (in_channels=2 for flow).
    """
    from v3d_flax.weights import named_weights

    record = named_weights(model_name, weights)
    if record is not None:
        from v3d_flax.hub import load_pretrained

        model = load_pretrained(model_name, record, num_classes=num_classes)
        return Predictor(model, batch_size=batch_size, feature_layer=feature_layer, weights=record)
    from v3d_flax.checkpoints import load_model

    model = load_model(model_name, weights, source=source, num_classes=num_classes, recipe=recipe, **model_kwargs)
    return Predictor(model, batch_size=batch_size, feature_layer=feature_layer)


def collect_videos(parser: argparse.ArgumentParser, inputs) -> list[str]:
    """The video files of `inputs` (directories searched recursively, see `find_videos`); a usage error
    (exit 2) names every input that does not exist, so that nothing waits for a model to load first."""
    missing = [path for path in inputs if not os.path.exists(path)]
    if missing:
        parser.error(f"no such file or directory: {', '.join(missing)}")
    return find_videos(inputs)


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m v3d_flax.predict`."""
    p = argparse.ArgumentParser(prog="python -m v3d_flax.predict", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--classes", default=None, metavar="LIST",
                   help="class names: kinetics400, ucf101 or a text file with one name per line "
                        "(default: by head size, else class_<i>)")
    p.add_argument("--top-k", type=int, default=5, help="labels to print per video (default: 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    p.add_argument("videos", nargs="+", metavar="VIDEO_OR_DIR",
                   help="video files (mp4, avi, webm, ...) or directories of videos")
    return p


def main(argv=None) -> int:
    """Run the classifier CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1 or (args.clips is not None and args.clips < 1):
        parser.error("--top-k, --batch-size and --clips must be >= 1")
    check_source_argument(parser, args)
    check_two_stream_arguments(parser, args)
    files = collect_videos(parser, args.videos)
    if not files:
        print("error: no video files found in " + ", ".join(args.videos), file=sys.stderr)
        return 1
    from v3d_flax.checkpoints import CheckpointError
    from v3d_flax.extras import MissingExtraError
    from v3d_flax.hub import DownloadError
    from v3d_flax.port import PortError

    try:
        recipe = recipe_from_args(args)
        predictor = predictor_from_args(args, recipe)
        model = predictor.model
        num_classes = head_size(model)
        classes = args.classes
        if classes is None and predictor.weights is not None and predictor.weights.num_classes == num_classes:
            classes = predictor.weights.classes  # the weights' own class names (None where not shipped)
        recorded = recorded_class_names(args.weights) if classes is None and predictor.weights is None else None
        names = recorded if recorded and len(recorded) == num_classes else load_class_names(classes, num_classes)
    except (CheckpointError, PortError, ValueError, OSError, MissingExtraError, DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    results, errors = [], []
    with Progress(len(files), "predict", enabled=not args.no_progress) as progress:
        for path in files:
            try:
                probs = predict_video(predictor, path, recipe, clips=args.clips, crops=args.crops)
            except Exception as e:  # one bad file must not stop the others
                message = file_error(path, e)
                errors.append({"file": path, "error": message})
                progress.write(f"error: {message}")
                progress.update(failed=True)
                continue
            results.append({"file": path, "top_k": top_k(probs, names, min(args.top_k, len(names)))})
            if not args.json:
                progress.write("\n".join([path] + [f"  {rank}. {entry['probability']:.4f}  {entry['label']}"
                                                   for rank, entry in enumerate(results[-1]["top_k"], 1)]),
                               file=sys.stdout)
            progress.update()
    if args.json:
        views = (args.clips or recipe.clips) * (args.crops or recipe.crops)
        streams = ({"flow_weights": os.fspath(args.flow_weights or args.weights), "fusion": predictor.fusion}
                   if predictor.modality == "two-stream" else {})
        json.dump({"model": args.model, "weights": os.fspath(args.weights), **streams, "views": views,
                   "results": results, "errors": errors}, sys.stdout, indent=1)
        print()
    return 1 if errors else 0


def head_size(model: nnx.Module) -> int:
    """Number of classes of a loaded model (read from its classifier's shape, no forward pass)."""
    from v3d_flax.checkpoints import flax_state, infer_num_classes

    shapes = {k: v.shape for k, v in flax_state(model).items()}
    return infer_num_classes(model.arch, shapes, kind="flax")


if __name__ == "__main__":
    sys.exit(main())
