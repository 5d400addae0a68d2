"""Checkpoint I/O: loading any supported checkpoint into a Flax model, and writing one.

Reads a checkpoint of any `v3d_flax.port` source (PyTorch files, DeepMind's TensorFlow I3D, 2D image
networks to inflate; `port.list_sources()`) or a Flax checkpoint: a .safetensors of the flattened NNX
state ("/"-joined paths), an orbax directory written by `save_checkpoint`, or a training workdir /
checkpoint step directory of `v3d_flax.train` (model weights are taken, optimizer state ignored).
Writes by the destination's name: .pth/.pt/.pickle/.pkl -> a PyTorch state_dict in v3d_torch_ref
naming and key order (loads with strict=True); .safetensors -> flattened Flax state; anything else
-> an orbax directory. Writes are atomic (`atomic_write`) and never overwrite without `force`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from v3d_flax.port import PortError, PortReport
from v3d_flax.registry import abstract_model, get_factory, model_spec

FORMAT = "v3d-flax"
TORCH_SUFFIXES = (".pth", ".pt", ".pkl", ".pickle")
_WEIGHTS = nnx.Not(nnx.RngState)  # parameters and BatchNorm statistics, not RNG streams


class CheckpointError(RuntimeError):
    """A checkpoint path that cannot be read, or a destination that must not be written."""


# ---------------------------------------------------------------------------------------------- models

def _size_kwargs(name: str, recipe) -> dict:
    """Clip-size arguments for the models whose record says they follow the clip (C3D's fc6)."""
    return {} if recipe is None else model_spec(name).size_kwargs(recipe.frames, recipe.crop)


def blank_model(name: str, num_classes: int, recipe=None, **kwargs) -> nnx.Module:
    """`name` with `num_classes` outputs (sized for `recipe`'s clips where needed; `kwargs` go to its
    factory, e.g. in_channels=2) without a random initialisation (arrays of zeros), for weights about
    to be loaded: initialising a large model's weights costs seconds on a CPU."""
    graphdef, abstract = nnx.split(abstract_model(name, num_classes=num_classes, **_size_kwargs(name, recipe),
                                                  **kwargs))

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


def infer_num_classes(name: str, shapes: dict[str, tuple], *, kind: str) -> int:
    """The head size of a checkpoint, read from the classifier its record names (its weight's output axis).
    `kind` is "torch" (v3d key names) or "flax" (NNX paths)."""
    classifier = model_spec(name).classifier
    key, axis = ((classifier + ".weight", 0) if kind == "torch" else (classifier.replace(".", "/") + "/kernel", -1))
    if key not in shapes or len(shapes[key]) < 2:
        raise CheckpointError(f"cannot tell the number of classes: the checkpoint has no {name} classifier weight "
                              f"{key!r}; pass --num-classes")
    return int(shapes[key][axis])


def _model_num_classes(model: nnx.Module) -> int | None:
    try:
        return infer_num_classes(model.arch, {k: v.shape for k, v in flax_state(model).items()}, kind="flax")
    except Exception:
        return None


def _clip_recipe(num_frames, crop_size):
    """The recipe of square (num_frames, crop_size) clips: the size a C3D checkpoint was built for."""
    from v3d_flax.preprocessing import Recipe

    size = int(crop_size)
    return Recipe(frames=int(num_frames), rate=1, resize=size, crop=size)


# ---------------------------------------------------------------------------------------------- files

def atomic_write(dest: str | os.PathLike, write: Callable[[str], None], *, directory: bool = False) -> None:
    """Create `dest` through `write(tmp)`: `tmp` is a file (or, with `directory`, a path for a directory
    that `write` creates) beside `dest`, moved onto it only once `write` returned, so that a failure
    leaves nothing half-written; a replaced directory is deleted only afterwards. The file gets the
    umask's permissions (not a temporary's 0600)."""
    dest = os.fspath(dest)
    parent, base = os.path.dirname(os.path.abspath(dest)), os.path.basename(dest)
    if directory:
        tmp = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
        os.rmdir(tmp)  # `write` creates it (orbax insists)
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
        os.close(fd)
    try:
        write(tmp)
        if not directory:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        if os.path.isdir(dest) and not os.path.islink(dest):
            old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
            os.rmdir(old)
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.remove(tmp)
        raise


def check_destination(dest: str | os.PathLike, force: bool) -> None:
    """CheckpointError if `dest` exists (and not `force`) or its directory does not."""
    dest = os.fspath(dest)
    if os.path.lexists(dest) and not force:
        raise CheckpointError(f"{dest} already exists; pass --force to overwrite it")
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise CheckpointError(f"the directory {parent} does not exist")


# ---------------------------------------------------------------------------------------------- training runs

def saved_steps(root: str | os.PathLike) -> list[int]:
    """The checkpoint steps under `root` (directories named by their step that hold a "state" item),
    newest first; [] when there are none."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        return []
    return sorted((int(d) for d in os.listdir(root) if d.isdigit() and os.path.isdir(os.path.join(root, d, "state"))),
                  reverse=True)


def step_directory(path: str | os.PathLike) -> str | None:
    """The orbax step directory that `path` names: itself when it holds the "state" item; else the
    newest step of a training workdir's best/ directory, else of its checkpoints/ directory, else of
    `path` itself (a checkpoints/ or best/ directory); None when there is none."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "state")):
        return path
    for root in (os.path.join(path, "best"), os.path.join(path, "checkpoints"), path):
        steps = saved_steps(root)
        if steps:
            return os.path.join(root, str(steps[0]))
    return None


def read_run_info(workdir: str | os.PathLike) -> dict | None:
    """run.json of the training run that owns `workdir` (model, dataset, classes, config), or None."""
    path = os.path.join(workdir, "run.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def training_run_record(path: str | os.PathLike) -> dict:
    """The run.json of the train.py workdir that `path` is (or whose checkpoints/, best/ or step directory
    it is): model, dataset, classes and config; {} when there is none or it cannot be read."""
    here = os.path.abspath(path)
    if not os.path.isdir(here):
        return {}
    for d in (here, os.path.dirname(here), os.path.dirname(os.path.dirname(here))):
        try:
            record = read_run_info(d)
        except (OSError, ValueError):
            return {}
        if record is not None:
            return record if isinstance(record, dict) else {}
    return {}


# ---------------------------------------------------------------------------------------------- Flax checkpoints

def _flatten(tree, prefix=()) -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + (str(k),)))
        else:
            out["/".join(prefix + (str(k),))] = np.asarray(v)
    return out


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

    root = step_directory(path) or path
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
        flat = {**_flatten(state["params"]), **_flatten(state["rest"])}
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


# ---------------------------------------------------------------------------------------------- loading

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


def _json_dict(value) -> dict:
    """A checkpoint's recorded architecture arguments: a dict, or its JSON text (orbax metadata)."""
    return json.loads(value) if isinstance(value, str) else dict(value or {})


def _load_flax(name: str, path: str, num_classes: int | None, recipe, **kwargs) -> nnx.Module:
    flat, meta = read_flax_checkpoint(path)
    run = training_run_record(path)
    if flat and all(k.startswith(("rgb/", "flow/")) for k in flat):  # a two-stream run: one of its networks
        stream = "flow/" if kwargs.get("in_channels") == 2 else "rgb/"
        flat = {k[len(stream):]: v for k, v in flat.items() if k.startswith(stream)}
    recorded = meta.get("arch") or run.get("model")
    kwargs = {**(run.get("model_kwargs") or {}), **_json_dict(meta.get("model_kwargs")), **kwargs}
    if isinstance(recorded, str) and recorded and recorded != name:
        raise CheckpointError(f"{path} holds a {recorded} checkpoint (recorded in it), not {name}; "
                              f"pass --model {recorded}")
    if recipe is None and meta.get("num_frames") and meta.get("crop_size"):
        recipe = _clip_recipe(meta["num_frames"], meta["crop_size"])
    shapes = {k: v.shape for k, v in flat.items()}
    try:
        num_classes = num_classes or meta.get("num_classes") or infer_num_classes(name, shapes, kind="flax")
        model = blank_model(name, int(num_classes), recipe, **kwargs)
        assign_flax_state(model, flat)
    except (CheckpointError, PortError) as e:
        better = _wrong_model(name, path, shapes, "flax", None)
        if better is None:
            raise
        raise better from e
    return model


def _load_source(name: str, path: str, source: str, num_classes: int | None, recipe, **kwargs) -> nnx.Module:
    from v3d_flax import port
    from v3d_flax.port.load import v3d_names

    try:
        state = port.read_source(source, path)
    except (ValueError, OSError) as e:
        raise CheckpointError(str(e)) from e
    by_keys = port.get_source(source).kind == "state_dict"  # another model's state_dict is named by its keys
    try:
        if num_classes is None:
            renamed = v3d_names(state, source, name)
            num_classes = infer_num_classes(name, {k: np.shape(v) for k, v in renamed.items()}, kind="torch")
        model = blank_model(name, int(num_classes), recipe, **kwargs)
        port.load_weights(model, state, source=source, strict=True)
    except (CheckpointError, PortError) as e:  # another model's checkpoint: say so, before --num-classes
        better = _wrong_model(name, path, {k: np.shape(v) for k, v in state.items()}, "torch", source) if by_keys \
            else None
        if better is None:
            raise
        raise better from e
    return model


def load_model(name: str, path: str | os.PathLike, *, source: str = "v3d", num_classes: int | None = None,
               recipe=None, **kwargs) -> nnx.Module:
    """Build `name` and load the checkpoint at `path` into it; returned in eval mode.

    `path` is a file of `source` (`port.list_sources()`; "deepmind-tf": a TensorFlow checkpoint prefix)
    or, with source "v3d", also a Flax checkpoint. `num_classes` is read from the checkpoint unless
    given; `recipe` fixes C3D's clip size (default: the checkpoint's, else the model's); `kwargs` go to
    the model's factory (e.g. in_channels=2 for a flow checkpoint). Errors:
    CheckpointError (unreadable, another model's), `port.PortError` (keys that do not fit).
    """
    from v3d_flax.port.sources import check_source

    path = os.fspath(path)
    try:
        found = check_source(source, name)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    exists = os.path.exists(path + ".index") if found.reader == "tensorflow" else os.path.exists(path)
    if not exists:
        raise CheckpointError(f"no checkpoint at {path!r}" + (" (a TensorFlow checkpoint prefix: no .index file)"
                                                              if found.reader == "tensorflow" else ""))
    if found.name == "v3d" and is_flax_checkpoint(path):
        model = _load_flax(name, path, num_classes, recipe, **kwargs)
    else:
        model = _load_source(name, path, found.name, num_classes, recipe, **kwargs)
    _, state = nnx.split(model)
    # host arrays filled in place -> device arrays; device_put, as jnp.asarray compiles a program per shape
    nnx.update(model, jax.tree.map(jax.device_put, state))
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------- writing

def _in_reference_order(model: nnx.Module, state: dict) -> dict:
    """`state` (`port.to_torch`'s) with its keys in the torch twin's order: that of a model as its factory
    builds it (`layers.build_structure`, no weights drawn). A loaded model's attributes are sorted by name."""
    from v3d_flax.layers import build_structure
    from v3d_flax.port import torch_shapes

    arch, num_classes = getattr(model, "arch", None), _model_num_classes(model)
    if arch is None or num_classes is None:
        return state
    sizes = {k: getattr(model, k) for k in model_spec(arch).clip_kwargs if hasattr(model, k)}
    fresh = build_structure(get_factory(arch), num_classes=num_classes, rngs=nnx.Rngs(0), **sizes)
    keys = list(torch_shapes(fresh))
    return {k: state[k] for k in keys} if sorted(keys) == sorted(state) else state


def save_checkpoint(model: nnx.Module, dest: str | os.PathLike, *, force: bool = False) -> str:
    """Write `model` to `dest` in the format its name asks for (see module docstring); atomic. Returns the
    kind written: "torch", "flax-safetensors" or "orbax"."""
    dest = os.fspath(dest).rstrip(os.sep) or os.fspath(dest)
    check_destination(dest, force)
    arch = getattr(model, "arch", None)
    meta = {"format": FORMAT, "arch": arch or "", "num_classes": _model_num_classes(model) if arch else None,
            "num_frames": getattr(model, "num_frames", None), "crop_size": getattr(model, "crop_size", None),
            "model_kwargs": json.dumps(dict(model.arch_kwargs)) if getattr(model, "arch_kwargs", ()) else None}
    if dest.endswith(".safetensors"):
        from safetensors.numpy import save_file

        atomic_write(dest, lambda tmp: save_file({k: np.require(v, requirements="C") for k, v in flax_state(model).items()},
                                                 tmp, metadata={k: str(v) for k, v in meta.items() if v is not None}))
        return "flax-safetensors"
    if dest.endswith(TORCH_SUFFIXES):
        from v3d_flax.extras import require
        from v3d_flax.port import to_torch

        torch = require("torch", "writing a PyTorch checkpoint (.pth)")
        atomic_write(dest, lambda tmp: torch.save(_in_reference_order(model, to_torch(model)), tmp))
        return "torch"
    import orbax.checkpoint as ocp

    def write_orbax(tmp):
        state = nnx.to_pure_dict(nnx.state(model, _WEIGHTS))
        ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        ckptr.save(tmp, ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    atomic_write(dest, write_orbax, directory=True)
    return "orbax"
