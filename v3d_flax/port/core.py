"""Copy weights between v3d Flax models and PyTorch state_dicts.

The Flax models mirror the PyTorch reference module for module, so a Flax module at NNX path
("layer1", 0, "conv1", 0) is the torch module "layer1.0.conv1.0". Porting walks the Flax model's
`Conv3d`, `Linear`, `BatchNorm` and `LayerNorm` modules and converts each tensor with one of four transforms:

  conv kernel   torch (O, I, kT, kH, kW)  <->  Flax (kT, kH, kW, I, O)      transpose (2, 3, 4, 1, 0)
  linear        torch (out, in)           <->  Flax (in, out)               transpose; columns
                permuted from (C, T, H, W) to (T, H, W, C) order when `torch_input_shape` is set
  batch norm    weight, bias, running_mean, running_var, num_batches_tracked
                <-> scale, bias, mean, var, num_batches_tracked               as is
  bias          as is
  layer norm    weight, bias <-> scale, bias                                 as is

Any other module's own `nnx.Param`s (a class token, position tables) are torch `nn.Parameter`s of the
same name and layout, copied as is. A module whose torch twin keeps persistent buffers that follow from
its configuration (Swin's relative position index) lists them in a `torch_buffers()` method ({name:
numpy array}): they are written on export and, on import, must be present and equal to the model's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from v3d_flax.layers import BatchNorm, Conv3d, Linear
from v3d_flax.transformer_layers import LayerNorm
from v3d_flax.port.sources import check_source

CONV_TO_FLAX = (2, 3, 4, 1, 0)  # (O, I, kT, kH, kW) -> (kT, kH, kW, I, O)
CONV_TO_TORCH = (4, 3, 0, 1, 2)  # inverse permutation
_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var",
             "num_batches_tracked": "num_batches_tracked"}
_OPTIONAL_KEYS = ("num_batches_tracked",)  # absent from older checkpoints; harmless to skip


class PortError(ValueError):
    """A state_dict does not fit a model. Its message summarises long key lists (counts per module and
    the first names); `.missing`, `.unexpected` and `.mismatched` (or `.report`) hold every key."""

    def __init__(self, message: str, report: "PortReport | None" = None):
        super().__init__(message)
        self.report = report if report is not None else PortReport()

    @property
    def missing(self) -> list[str]:
        """Every key the model needs that the state_dict lacks."""
        return self.report.missing

    @property
    def unexpected(self) -> list[str]:
        """Every state_dict key the model has no place for."""
        return self.report.unexpected

    @property
    def mismatched(self) -> list[str]:
        """Every key present on both sides with different shapes, as "key (checkpoint S, model S)"."""
        return self.report.mismatched


SHOWN_KEYS = 8  # key lists up to this long are printed whole; longer ones are summarised


def _module_of(key: str) -> str:
    """The top module of a key ("layer1.0.conv1.0.weight" -> "layer1", "blocks.3.res_blocks..." -> "blocks.3")."""
    parts = re.split(r"[./]", key.split(" ", 1)[0])
    if len(parts) > 2 and parts[1].isdigit() and not re.search(r"\d", parts[0]):
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def summarize_keys(keys: list[str], limit: int | None = SHOWN_KEYS) -> str:
    """`keys` joined with ", " when there are at most `limit` of them (or limit is None); otherwise the
    count per top module and the first few names, so that a message stays a line long."""
    if limit is None or len(keys) <= limit:
        return ", ".join(keys)
    counts: dict[str, int] = {}
    for key in keys:
        module = _module_of(key)
        counts[module] = counts.get(module, 0) + 1
    modules = [f"{m} {n}" for m, n in list(counts.items())[:limit]]
    if len(counts) > limit:
        modules.append(f"{len(counts) - limit} more modules")
    first = min(limit, 4)
    return f"by module: {', '.join(modules)}; first: {', '.join(keys[:first])}, ... ({len(keys) - first} more)"


@dataclass
class PortReport:
    """What `from_torch(..., strict=False)` could not load."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int | None = SHOWN_KEYS) -> str:
        """One line: each non-empty list with its count, summarised beyond `limit` keys (None: every key)."""
        parts = []
        if self.missing:
            parts.append(f"missing keys ({len(self.missing)}): {summarize_keys(self.missing, limit)}")
        if self.unexpected:
            parts.append(f"unexpected keys ({len(self.unexpected)}): {summarize_keys(self.unexpected, limit)}")
        if self.mismatched:
            parts.append(f"mis-shaped keys ({len(self.mismatched)}): {summarize_keys(self.mismatched, limit)}")
        return "; ".join(parts)


def _to_numpy(value: Any) -> np.ndarray:
    """A private numpy copy: jax may alias host buffers, so sharing memory with the caller's
    tensors would let a later in-place torch update (running stats) leak into the Flax model."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy().copy()
    return np.array(value, copy=True)


def _module_key(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _definition_rank(model: nnx.Module, path: tuple) -> tuple:
    """Where the module at `path` stands in its parents' attribute order: on a model its factory just
    built, the order its __init__ assigned them, which is its torch twin's state_dict order (nnx.split /
    merge sort attributes by name, so a merged model ranks by name)."""
    node, rank = model, []
    for part in path:
        names = [n for n in vars(node) if not n.startswith("_")]
        rank.append(names.index(str(part)) if str(part) in names else int(part))
        node = node[part] if isinstance(part, int) else getattr(node, part)
    return tuple(rank)


def _param_slots(model: nnx.Module) -> list:
    """(torch_key, module, flax_attr, kind) for every tensor the torch twin holds, in the model's
    attribute order (`_definition_rank`); all state covered."""
    slots, covered = [], set()
    modules = sorted(nnx.iter_modules(model), key=lambda item: _definition_rank(model, item[0]))
    for path, module in modules:
        for slot in _module_slots(path, module):
            slots.append(slot)
            covered.add((*path, slot[2]))
    state_paths = {tuple(p) for p, _ in nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat)))}
    if state_paths - covered:
        left = sorted(".".join(map(str, p)) for p in state_paths - covered)
        raise TypeError(f"{type(model).__name__} has state that porting does not know: {', '.join(left)}")
    return slots


def _module_slots(path: tuple, module: nnx.Module):
    """The torch twin's tensors of one module."""
    prefix = _module_key(path)
    if isinstance(module, Conv3d):
        yield f"{prefix}.weight", module, "kernel", "conv"
        if module.bias is not None:
            yield f"{prefix}.bias", module, "bias", "plain"
    elif isinstance(module, Linear):
        yield f"{prefix}.weight", module, "kernel", "linear"
        if module.bias is not None:
            yield f"{prefix}.bias", module, "bias", "plain"
    elif isinstance(module, BatchNorm):
        for torch_name, flax_name in _BN_NAMES.items():
            yield f"{prefix}.{torch_name}", module, flax_name, "plain"
    elif isinstance(module, LayerNorm):
        yield f"{prefix}.weight", module, "scale", "plain"
        yield f"{prefix}.bias", module, "bias", "plain"
    elif isinstance(module, (nnx.Conv, nnx.Linear, nnx.BatchNorm, nnx.LayerNorm)):
        raise TypeError(f"{prefix}: use v3d_flax.layers' Conv3d/Linear/BatchNorm or transformer_layers.LayerNorm "
                        f"so the module can be ported")
    else:  # a module's own parameters (a class token, position tables): torch nn.Parameters of its name
        for name, value in vars(module).items():
            if isinstance(value, (nnx.Param, nnx.BatchStat)):
                yield (f"{prefix}.{name}" if prefix else name), module, name, "plain"
    for name in getattr(module, "torch_buffers", lambda: {})():
        yield (f"{prefix}.{name}" if prefix else name), module, name, "buffer"


def _linear_to_flax(w: np.ndarray, module: Linear) -> np.ndarray:
    if module.torch_input_shape is not None:
        c = module.torch_input_shape[0]
        rest = tuple(module.torch_input_shape[1:])
        w = w.reshape(w.shape[0], c, *rest)
        w = np.moveaxis(w, 1, -1).reshape(w.shape[0], -1)  # columns (C, T, H, W) -> (T, H, W, C)
    return w.T


def _linear_to_torch(k: np.ndarray, module: Linear) -> np.ndarray:
    w = k.T
    if module.torch_input_shape is not None:
        c = module.torch_input_shape[0]
        rest = tuple(module.torch_input_shape[1:])
        w = w.reshape(w.shape[0], *rest, c)
        w = np.moveaxis(w, -1, 1).reshape(w.shape[0], -1)  # columns (T, H, W, C) -> (C, T, H, W)
    return w


def _flax_to_torch(value: np.ndarray, module, kind: str) -> np.ndarray:
    if kind == "conv":
        return np.transpose(value, CONV_TO_TORCH)
    if kind == "linear":
        return _linear_to_torch(value, module)
    return value


def _torch_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """The torch shape of a Flax tensor of `shape`, without moving data."""
    if kind == "conv":
        return tuple(shape[i] for i in CONV_TO_TORCH)
    if kind == "linear":
        return (shape[1], shape[0])
    return tuple(shape)


def _torch_to_flax(value: np.ndarray, module, kind: str) -> np.ndarray:
    if kind == "conv":
        return np.transpose(value, CONV_TO_FLAX)
    if kind == "linear":
        return _linear_to_flax(value, module)
    return value


def rename_keys(state_dict: Mapping[str, Any], source: str, arch: str | None) -> dict[str, Any]:
    """Apply the key rules of state_dict source `source` (`v3d_flax.port.sources`), then those the record
    of model `arch` has for it (`ModelSpec.key_rules`), to every key; drop the keys a rule maps to None. ValueError for a source that does not serve `arch`."""
    found = check_source(source, arch)
    if found.kind != "state_dict":
        raise ValueError(f"source {source!r} is not a PyTorch state_dict naming ({found.kind}: {found.checkpoints}); "
                         f"load it with port.load_weights")
    from v3d_flax.registry import list_models, model_spec

    own = model_spec(arch).key_rules.get(source, ()) if arch in list_models() else ()
    compiled = [(re.compile(p), repl) for p, repl in (*found.rules, *own)]
    renamed: dict[str, Any] = {}
    for key, value in state_dict.items():
        new: str | None = key
        for pattern, repl in compiled:
            if pattern.fullmatch(new):
                new = None if repl is None else pattern.sub(repl, new)
                if new is None:
                    break
        if new is not None:
            if new in renamed:
                raise PortError(f"key map {source!r} maps two keys onto {new!r} (one is {key!r})")
            renamed[new] = value
    return renamed


def torch_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """The state_dict keys and shapes the PyTorch twin of `model` has (abstract models from
    `nnx.eval_shape` work too: no weights are read)."""
    return {key: tuple(_slot_value(m, attr, kind).shape) if kind == "buffer"
            else _torch_shape(getattr(m, attr).get_value().shape, kind) for key, m, attr, kind in _param_slots(model)}


def _slot_value(module, attr: str, kind: str):
    """A slot's Flax value: its variable, or for a "buffer" the array the module computes."""
    return module.torch_buffers()[attr] if kind == "buffer" else getattr(module, attr)


def _resizer(arch: str | None):
    """The record's `resize_state` function of model `arch`, or None."""
    from v3d_flax.registry import list_models, model_spec

    target = model_spec(arch).resize_state if arch in list_models() else None
    if target is None:
        return None
    import importlib

    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def from_torch(model: nnx.Module, state_dict: Mapping[str, Any], *, source: str = "v3d",
               strict: bool = True, resize: bool = False) -> PortReport:
    """Copy a PyTorch state_dict (torch tensors or numpy arrays) into the Flax `model` in place.

    `source` names a state_dict source (`v3d_flax.port.sources`): "v3d" for `v3d_torch_ref` models,
    or a public checkpoint family (`port.load_weights` loads every kind of source). With `strict=True`,
    any missing, unexpected or mis-shaped key raises `PortError` naming them all and leaves the model
    untouched; with `strict=False` the keys that fit are loaded and a `PortReport` lists the rest.
    `resize=True`: a checkpoint of another clip (or window) size is fitted to this model by its record's
    `resize_state` (position embeddings and relative position tables interpolated).
    """
    arch = getattr(model, "arch", None)
    tensors = {k: _to_numpy(v) for k, v in rename_keys(state_dict, source, arch).items()}
    resizer = _resizer(arch)
    if resize:
        if resizer is None:
            raise ValueError(f"from_torch(resize=True): {arch or type(model).__name__} has no size-dependent tensors "
                             f"to interpolate (its record has no resize_state)")
        tensors = resizer(tensors, torch_shapes(model))
    slots = list(_param_slots(model))
    report = PortReport()
    updates = []
    for key, module, attr, kind in slots:
        if key not in tensors:
            if not key.endswith(_OPTIONAL_KEYS):
                report.missing.append(key)
            continue
        if kind == "buffer":  # computed from the configuration: the checkpoint's must be the same
            expected = module.torch_buffers()[attr]
            if tuple(tensors[key].shape) != expected.shape:
                report.mismatched.append(f"{key} (checkpoint {tuple(tensors[key].shape)}, model {expected.shape})")
            elif not np.array_equal(tensors[key], expected):
                report.mismatched.append(f"{key} (its values differ from the model's configuration)")
            continue
        target = getattr(module, attr)
        expected = _torch_shape(target.get_value().shape, kind)
        if tuple(tensors[key].shape) != expected:  # checked before any reshape (C3D's fc6 permutation)
            report.mismatched.append(f"{key} (checkpoint {tuple(tensors[key].shape)}, model {expected})")
            continue
        value = _torch_to_flax(tensors[key], module, kind) if tensors[key].ndim else tensors[key]
        updates.append((target, value))
    known = {key for key, *_ in slots}
    report.unexpected = sorted(k for k in tensors if k not in known)
    if strict and report:
        hint = ("; its position tables follow the clip size: from_torch(..., resize=True) interpolates them"
                if report.mismatched and resizer is not None and not resize else "")
        raise PortError(f"state_dict does not match {arch or type(model).__name__} (source={source!r}): "
                        + report.describe() + hint, report)
    for target, value in updates:
        target[...] = jnp.asarray(value, dtype=target[...].dtype)
    return report


def to_torch(model: nnx.Module) -> dict[str, "Any"]:
    """The Flax model's weights as a PyTorch state_dict in v3d_torch_ref's (torchvision's) naming, in
    the model's attribute order (the reference's key order for a model as its factory built it)."""
    from v3d_flax.extras import require

    torch = require("torch", "port.to_torch (PyTorch tensors)")

    state = {}
    for key, value in torch_state(model).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(int(value), dtype=torch.int64)
        else:
            state[key] = torch.from_numpy(value)
    return state


def torch_state(model: nnx.Module) -> dict[str, np.ndarray]:
    """`to_torch`'s state_dict as numpy arrays (no torch needed): torch names, layouts and key order."""
    state = {}
    for key, module, attr, kind in _param_slots(model):
        value = np.asarray(_slot_value(module, attr, kind)[...])
        state[key] = np.array(_flax_to_torch(value, module, kind), order="C", copy=True)  # 0-d stays 0-d
    return state
