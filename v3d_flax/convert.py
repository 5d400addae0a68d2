"""Checkpoint conversion, and loading any supported checkpoint into a Flax model.

    python -m v3d_flax.convert --model NAME --from PATH --to PATH [--source SOURCE] [--force]

Inputs: a PyTorch checkpoint (.pth/.pt/.pkl/.pickle, or .safetensors with torch key names) in any
naming `v3d_flax.port` knows (--source), or a Flax checkpoint: a .safetensors of the flattened NNX
state ("/"-joined paths, written by this tool), an orbax directory written by this tool, or a
training workdir / checkpoint step directory of `v3d_flax.train` (model weights are taken, optimizer
state ignored). Outputs by the --to name: .pth/.pt/.pickle/.pkl -> a PyTorch state_dict in
v3d_torch_ref naming (loads with strict=True); .safetensors -> flattened Flax state; anything
else -> an orbax directory. Writes are atomic and never overwrite without --force.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

import jax
import numpy as np
from flax import nnx

from v3d_flax.port import PortError, PortReport, from_torch, load_torch_checkpoint, to_torch
from v3d_flax.port.keymaps import KEYMAPS
from v3d_flax.registry import abstract_model, create_model, list_models, model_spec

FORMAT = "v3d-flax"
TORCH_SUFFIXES = (".pth", ".pt", ".pkl", ".pickle")
_WEIGHTS = nnx.Not(nnx.RngState)  # parameters and BatchNorm statistics, not RNG streams


class CheckpointError(RuntimeError):
    """A checkpoint path that cannot be read, or a destination that must not be written."""


def _model_kwargs(name: str, recipe) -> dict:
    """Clip-size arguments for the models whose record says they follow the clip (C3D's fc6)."""
    return {} if recipe is None else model_spec(name).size_kwargs(recipe.frames, recipe.crop)


def build_model(name: str, num_classes: int, recipe=None, *, seed: int = 0) -> nnx.Module:
    """A freshly initialised `name` with `num_classes` outputs, sized for `recipe`'s clips where needed."""
    return create_model(name, num_classes=num_classes, rngs=nnx.Rngs(seed), **_model_kwargs(name, recipe))


def blank_model(name: str, num_classes: int, recipe=None) -> nnx.Module:
    """`build_model` without the random initialisation (arrays of zeros), for weights about to be loaded:
    initialising a large model's weights costs seconds on a CPU."""
    graphdef, abstract = nnx.split(_abstract_model(name, num_classes, recipe))

    def zeros(x):
        if jax.numpy.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.numpy.broadcast_to(jax.random.key(0), x.shape)
        return np.zeros(x.shape, x.dtype)  # numpy: no per-shape XLA compilation

    model = nnx.merge(graphdef, jax.tree.map(zeros, abstract))
    model.arch = name
    return model


def flax_state(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's parameters and batch statistics as {"/"-joined NNX path: numpy array}."""
    state = nnx.state(model, _WEIGHTS)
    return {"/".join(map(str, path)): np.asarray(v.get_value() if hasattr(v, "get_value") else v)
            for path, v in nnx.to_flat_state(state)}


def _abstract_model(name: str, num_classes: int, recipe=None) -> nnx.Module:
    """`build_model`'s structure, arrays as jax.ShapeDtypeStruct, no weight drawn (`abstract_model`)."""
    return abstract_model(name, num_classes=num_classes, rngs=nnx.Rngs(0), **_model_kwargs(name, recipe))


def infer_num_classes(name: str, shapes: dict[str, tuple], *, kind: str) -> int:
    """The head size of a checkpoint, read from the classifier its record names (its weight's output axis).
    `kind` is "torch" (v3d key names) or "flax" (NNX paths)."""
    classifier = model_spec(name).classifier
    key, axis = ((classifier + ".weight", 0) if kind == "torch" else (classifier.replace(".", "/") + "/kernel", -1))
    if key not in shapes or len(shapes[key]) < 2:
        raise CheckpointError(f"cannot tell the number of classes: the checkpoint has no {name} classifier weight "
                              f"{key!r}; pass --num-classes")
    return int(shapes[key][axis])


# ---------------------------------------------------------------------------------------------- reading

def _flatten(tree, prefix=()) -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + (str(k),)))
        else:
            out["/".join(prefix + (str(k),))] = np.asarray(v)
    return out


def _orbax_step_dir(path: str) -> str:
    """Resolve a training workdir (its newest checkpoint), its checkpoints/ or best/ directory, or a step
    directory to the directory that holds the orbax items."""
    if os.path.isdir(os.path.join(path, "state")):
        return path
    for root in (os.path.join(path, "checkpoints"), path):
        steps = sorted((int(d) for d in os.listdir(root) if d.isdigit()), reverse=True) if os.path.isdir(root) else []
        if steps:
            return os.path.join(root, str(steps[0]))
    return path


def read_flax_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """({"/"-joined path: array}, metadata) of a Flax checkpoint (safetensors, orbax dir, training workdir)."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as f:
            meta = dict(f.metadata() or {})
            flat = {k: f.get_tensor(k) for k in f.keys()}
        for key in ("num_classes", "num_frames", "crop_size"):
            if key in meta:
                meta[key] = int(meta[key])
        return flat, meta
    import orbax.checkpoint as ocp

    root = _orbax_step_dir(path)
    try:
        if os.path.isdir(os.path.join(root, "state")):
            ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
            items = {"state": ocp.args.StandardRestore()}
            if os.path.isdir(os.path.join(root, "meta")):
                items["meta"] = ocp.args.JsonRestore()
            restored = ckptr.restore(os.path.abspath(root), ocp.args.Composite(**items))
            state, meta = restored["state"], dict(restored["meta"] or {}) if "meta" in items else {}
        else:
            state, meta = ocp.StandardCheckpointer().restore(os.path.abspath(root)), {}
    except Exception as e:  # orbax raises many types for a missing or damaged directory
        raise CheckpointError(f"{path}: not a readable orbax checkpoint ({type(e).__name__}: {e})") from e
    if "params" in state and "rest" in state:  # v3d_flax.train layout: weights split by kind, plus opt_state
        state = {"params": state["params"], "rest": state["rest"]}
        flat = {}
        for part in ("params", "rest"):
            flat.update(_flatten(state[part]))
    else:
        flat = _flatten(state)
    if "model" in meta and "arch" not in meta:
        meta["arch"] = meta["model"]
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    for key in ("num_frames", "crop_size"):  # the clip a C3D checkpoint was built for (training config)
        if key not in meta and config.get(key):
            meta[key] = config[key]
    return flat, meta


def is_flax_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a Flax checkpoint (directory, or .safetensors with NNX paths), not a torch file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return True
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="numpy") as f:
                meta, keys = f.metadata() or {}, list(f.keys())
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
        return meta.get("format") == FORMAT or any("/" in k for k in keys)
    return False


def assign_flax_state(model: nnx.Module, flat: dict[str, np.ndarray]) -> None:
    """Copy {"/"-path: array} into `model`; PortError (model untouched) on any missing, extra or
    mis-shaped entry. RNG streams in the checkpoint (training state) are ignored."""
    state = nnx.state(model, _WEIGHTS)
    missing, mismatched, updates = [], [], []
    expected = set()
    for path, var in nnx.to_flat_state(state):
        key = "/".join(map(str, path))
        expected.add(key)
        if key not in flat:
            missing.append(key)
            continue
        shape = tuple(var.get_value().shape)
        if tuple(flat[key].shape) != shape:
            mismatched.append(f"{key} (checkpoint {tuple(flat[key].shape)}, model {shape})")
            continue
        updates.append((var, flat[key]))
    unexpected = sorted(k for k in flat if k not in expected and "rngs" not in k.split("/"))
    if missing or mismatched or unexpected:
        report = PortReport(missing=missing, unexpected=unexpected, mismatched=mismatched)
        raise PortError(f"Flax checkpoint does not match {getattr(model, 'arch', type(model).__name__)}: "
                        + report.describe(), report)
    for var, value in updates:
        var[...] = jax.numpy.asarray(value, dtype=var[...].dtype)


def training_run_record(path: str | os.PathLike) -> dict:
    """The run.json of the train.py workdir that `path` is (or whose checkpoints/, best/ or step directory
    it is): model, dataset, classes and config; {} when there is none or it cannot be read."""
    import json

    here = os.path.abspath(path)
    if not os.path.isdir(here):
        return {}
    for d in (here, os.path.dirname(here), os.path.dirname(os.path.dirname(here))):
        if os.path.isfile(os.path.join(d, "run.json")):
            try:
                with open(os.path.join(d, "run.json"), encoding="utf-8") as f:
                    record = json.load(f)
            except (OSError, ValueError):
                return {}
            return record if isinstance(record, dict) else {}
    return {}


def _recorded_arch(path: str, meta: dict) -> str | None:
    """The model a Flax checkpoint says it holds: its metadata, else its training workdir's run.json."""
    if meta.get("arch"):
        return meta["arch"]
    model = training_run_record(path).get("model")
    return model if isinstance(model, str) else None


def _wrong_model(name: str, path: str, shapes: dict, kind: str, source: str | None) -> CheckpointError | None:
    """A CheckpointError naming the registered model whose keys the checkpoint (`shapes`) fits better than
    `name`'s, or None when no other model fits better (the original error then stands)."""
    from v3d_flax.port.identify import identify_checkpoint, match_model

    shapes = {k: tuple(v) for k, v in shapes.items()}
    try:
        best = identify_checkpoint(shapes, kind=kind, source=source, first=name)
        if best is None or best.model == name:
            return None
        own = match_model(shapes, name, kind=kind, source=source)
    except Exception:  # identification is a courtesy: never let it hide the error it explains
        return None
    if best.score < 0.5 or not (best.complete or best.score > own.score):
        return None
    flags = f"--model {best.model}" + (f" --source {best.source}" if source and best.source != source else "")
    return CheckpointError(f"{path}: this checkpoint looks like {best.model}, not {name} (it has "
                           f"{best.describe()} and {own.describe()}); pass {flags}")


def load_model(name: str, path: str | os.PathLike, *, source: str = "v3d", num_classes: int | None = None,
               recipe=None) -> nnx.Module:
    """Build `name` and load the weights at `path` (torch or Flax checkpoint); returned in eval mode."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path!r}")
    if is_flax_checkpoint(path):
        flat, meta = read_flax_checkpoint(path)
        recorded = _recorded_arch(path, meta)
        if recorded and recorded != name:
            raise CheckpointError(f"{path} holds a {recorded} checkpoint (recorded in it), not {name}; "
                                  f"pass --model {recorded}")
        if recipe is None and meta.get("num_frames") and meta.get("crop_size"):
            from v3d_flax.preprocessing import Recipe

            size = int(meta["crop_size"])
            recipe = Recipe(frames=int(meta["num_frames"]), rate=1, resize=size, crop=size)
        shapes = {k: v.shape for k, v in flat.items()}
        try:
            num_classes = num_classes or meta.get("num_classes") or infer_num_classes(name, shapes, kind="flax")
            model = blank_model(name, int(num_classes), recipe)
            assign_flax_state(model, flat)
        except (CheckpointError, PortError) as e:
            better = _wrong_model(name, path, shapes, "flax", None)
            if better is None:
                raise
            raise better from e
    else:
        try:
            state = load_torch_checkpoint(path)
        except (ValueError, OSError) as e:
            raise CheckpointError(str(e)) from e
        try:
            if num_classes is None:
                from v3d_flax.port import rename_keys

                renamed = rename_keys(state, source, name)
                num_classes = infer_num_classes(name, {k: v.shape for k, v in renamed.items()}, kind="torch")
            model = blank_model(name, int(num_classes), recipe)
            from_torch(model, state, source=source, strict=True)
        except (CheckpointError, PortError) as e:  # another model's checkpoint: say so, before --num-classes
            better = _wrong_model(name, path, {k: v.shape for k, v in state.items()}, "torch", source)
            if better is None:
                raise
            raise better from e
    _, state = nnx.split(model)
    # host arrays filled in place -> device arrays; device_put, as jnp.asarray compiles a program per shape
    nnx.update(model, jax.tree.map(jax.device_put, state))
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------- writing

def _num_classes(model: nnx.Module) -> int | None:
    shapes = {k: v.shape for k, v in flax_state(model).items()}
    try:
        return infer_num_classes(model.arch, shapes, kind="flax")
    except Exception:
        return None


def _recipe_of(model):
    from v3d_flax.preprocessing import Recipe

    if hasattr(model, "num_frames") and hasattr(model, "crop_size"):
        return Recipe(frames=model.num_frames, rate=1, resize=model.crop_size, crop=model.crop_size)
    return None


def _in_reference_order(model: nnx.Module, state: dict) -> dict:
    """`state` with its keys in the order v3d_torch_ref's state_dict() lists them (built on the meta
    device, no memory); unchanged when there is no reference twin or the keys differ."""
    import torch

    from v3d_torch_ref import registry as torch_registry

    arch = getattr(model, "arch", None)
    try:
        kwargs = {k: getattr(model, k) for k in ("num_frames", "crop_size") if hasattr(model, k)}
        with torch.device("meta"):
            keys = list(torch_registry.create_model(arch, num_classes=_num_classes(model), **kwargs).state_dict())
    except Exception:  # no reference for this name: keep the Flax traversal order
        return state
    return {k: state[k] for k in keys} if sorted(keys) == sorted(state) else state


def _check_destination(dest: str, force: bool) -> None:
    if os.path.lexists(dest) and not force:
        raise CheckpointError(f"{dest} already exists; pass --force to overwrite it")
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise CheckpointError(f"the directory {parent} does not exist")


def _atomic_place(tmp: str, dest: str) -> None:
    """Move the finished `tmp` onto `dest` (replacing it); a replaced directory is deleted only afterwards."""
    if os.path.isdir(dest) and not os.path.islink(dest):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.old-", dir=os.path.dirname(os.path.abspath(dest)))
        os.rmdir(old)
        os.rename(dest, old)
        os.rename(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def save_checkpoint(model: nnx.Module, dest: str | os.PathLike, *, force: bool = False) -> str:
    """Write `model` to `dest` in the format its name asks for (see module docstring); atomic. Returns the kind."""
    dest = os.fspath(dest).rstrip(os.sep) or os.fspath(dest)
    _check_destination(dest, force)
    parent = os.path.dirname(os.path.abspath(dest))
    arch = getattr(model, "arch", None)
    meta = {"format": FORMAT, "arch": arch or "", "num_classes": _num_classes(model) if arch else None,
            "num_frames": getattr(model, "num_frames", None), "crop_size": getattr(model, "crop_size", None)}
    if dest.endswith(TORCH_SUFFIXES) or dest.endswith(".safetensors"):
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.", suffix=".tmp", dir=parent)
        os.close(fd)
        try:
            if dest.endswith(".safetensors"):
                from safetensors.numpy import save_file

                save_file({k: np.require(v, requirements="C") for k, v in flax_state(model).items()}, tmp,
                          metadata={k: str(v) for k, v in meta.items() if v is not None})
                kind = "flax-safetensors"
            else:
                from v3d_flax.extras import require

                torch = require("torch", "writing a PyTorch checkpoint (.pth)")
                torch.save(_in_reference_order(model, to_torch(model)), tmp)
                kind = "torch"
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for the temporary only
            _atomic_place(tmp, dest)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return kind
    import orbax.checkpoint as ocp

    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.", suffix=".tmp", dir=parent)
    try:
        shutil.rmtree(tmp)  # orbax creates the directory itself
        state = nnx.to_pure_dict(nnx.state(model, _WEIGHTS))
        ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        ckptr.save(tmp, ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        _atomic_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return "orbax"


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m v3d_flax.convert`."""
    from v3d_flax.cli import model_name

    p = argparse.ArgumentParser(prog="python -m v3d_flax.convert", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=model_name, metavar="NAME",
                   help="registry name: " + ", ".join(list_models()))
    p.add_argument("--from", dest="src", required=True, metavar="PATH", help="checkpoint to read (torch or Flax)")
    p.add_argument("--to", dest="dst", required=True, metavar="PATH",
                   help=".pth/.pt -> PyTorch state_dict; .safetensors -> Flax state; else an orbax directory")
    p.add_argument("--source", default="v3d", choices=sorted(KEYMAPS),
                   help="key naming of a PyTorch input checkpoint (default: v3d)")
    p.add_argument("--num-classes", type=int, default=None, help="head size (default: read from the checkpoint)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --to")
    return p


def main(argv=None) -> int:
    """Run the converter; 0 on success, 1 on a failed conversion, 2 on usage errors."""
    args = build_parser().parse_args(argv)
    from v3d_flax.extras import MissingExtraError

    try:
        _check_destination(args.dst, args.force)
        model = load_model(args.model, args.src, source=args.source, num_classes=args.num_classes)
        kind = save_checkpoint(model, args.dst, force=args.force)
    except (CheckpointError, PortError, ValueError, OSError, MissingExtraError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst} ({kind}, {args.model})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
