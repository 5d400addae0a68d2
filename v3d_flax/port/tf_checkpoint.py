"""Import DeepMind's TensorFlow I3D checkpoints (deepmind/kinetics-i3d) into the Flax `i3d` model.

DeepMind's variables live under `<scope>/inception_i3d/` with scope "RGB" or "Flow":

    Conv3d_1a_7x7/conv_3d/w                       kernel (kT, kH, kW, I, O), already DHWIO
    Conv3d_1a_7x7/batch_norm/{beta, moving_mean, moving_variance}   shape (1, 1, 1, 1, C); no gamma
    Mixed_3b/Branch_1/Conv3d_0b_3x3/...           Mixed_5b's second Branch_2 conv is "Conv3d_0a_3x3"
    Logits/Conv3d_0c_1x1/conv_3d/{w, b}

They are renamed to v3d's (piergiaj's) names by the table below, converted to PyTorch layout
(BN gamma, absent because Sonnet's BN had `scale=False`, becomes 1) and loaded by
`from_torch`, so the same strictness and error reports apply.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

import numpy as np
from flax import nnx

from v3d_flax.port.core import PortReport, from_torch

# TF unit scope (below inception_i3d/) -> v3d module path. Data: the one place DeepMind's names live.
UNIT_RULES: list[tuple[str, str]] = [
    (r"(Conv3d_[0-9][a-z]_[0-9]x[0-9])", r"\1"),
    (r"(Mixed_[0-9][a-z])/Branch_0/Conv3d_0a_1x1", r"\1.b0"),
    (r"(Mixed_[0-9][a-z])/Branch_1/Conv3d_0a_1x1", r"\1.b1a"),
    (r"(Mixed_[0-9][a-z])/Branch_1/Conv3d_0b_3x3", r"\1.b1b"),
    (r"(Mixed_[0-9][a-z])/Branch_2/Conv3d_0a_1x1", r"\1.b2a"),
    (r"(Mixed_[0-9][a-z])/Branch_2/Conv3d_0[ab]_3x3", r"\1.b2b"),  # Mixed_5b: "Conv3d_0a_3x3" upstream
    (r"(Mixed_[0-9][a-z])/Branch_3/Conv3d_0b_1x1", r"\1.b3b"),
    (r"Logits/Conv3d_0c_1x1", "logits"),
]
# TF variable leaf -> torch state_dict suffix.
LEAVES = {"conv_3d/w": "conv3d.weight", "conv_3d/b": "conv3d.bias", "batch_norm/beta": "bn.bias",
          "batch_norm/gamma": "bn.weight", "batch_norm/moving_mean": "bn.running_mean",
          "batch_norm/moving_variance": "bn.running_var"}
_ROOT = "inception_i3d"
_VARIABLE = re.compile(rf"(?P<scope>[^/]+)/{_ROOT}/(?P<unit>.+)/(?P<leaf>conv_3d/[wb]|batch_norm/[a-z_]+)"
                       r"(?P<slot>/.+)?")


def read_tf_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every variable of a TensorFlow checkpoint (its prefix, e.g. ".../model.ckpt"), as numpy arrays."""
    from v3d_flax.extras import require

    tf = require("tensorflow", "reading TensorFlow checkpoints")
    path = os.fspath(path)
    try:
        reader = tf.train.load_checkpoint(path)
    except Exception as e:  # NotFoundError, DataLossError...
        raise ValueError(f"could not read a TensorFlow checkpoint at {path!r}: {e}") from e
    return {name: np.asarray(reader.get_tensor(name)) for name in reader.get_variable_to_shape_map()}


def _scope(names, scope: str | None) -> str:
    found = sorted({m.group("scope") for m in map(_VARIABLE.fullmatch, names) if m})
    if not found:
        raise ValueError(f"no '<scope>/{_ROOT}/...' variables found: not a DeepMind I3D checkpoint")
    if scope is None:
        if len(found) > 1:
            raise ValueError(f"checkpoint holds several I3D scopes {found}; pass scope= one of them")
        return found[0]
    if scope not in found:
        raise ValueError(f"scope {scope!r} not in checkpoint; it holds {found}")
    return scope


def _unit_path(unit: str) -> str | None:
    for pattern, repl in UNIT_RULES:
        if re.fullmatch(pattern, unit):
            return re.sub(pattern, repl, unit)
    return None


def tf_to_state_dict(variables: Mapping[str, np.ndarray], *, scope: str | None = None) -> dict[str, np.ndarray]:
    """DeepMind I3D variables -> a state_dict in v3d's names and PyTorch layouts.

    Optimizer slots (".../w/Momentum") and variables outside `<scope>/inception_i3d/` are skipped;
    a variable inside it that fits no rule is kept under its TF name, so loading reports it.
    """
    scope = _scope(variables, scope)
    state: dict[str, np.ndarray] = {}
    with_gamma, bn_modules = set(), {}
    for name, value in variables.items():
        m = _VARIABLE.fullmatch(name)
        if m is None:
            if name.startswith(f"{scope}/{_ROOT}/"):
                state[name] = np.asarray(value)
            continue
        if m.group("scope") != scope or m.group("slot"):
            continue
        module, leaf = _unit_path(m.group("unit")), m.group("leaf")
        if module is None or leaf not in LEAVES:
            state[name] = np.asarray(value)
            continue
        value = np.asarray(value, np.float32)
        if leaf == "conv_3d/w":
            if value.ndim != 5:
                raise ValueError(f"{name}: expected a 5-D (kT, kH, kW, I, O) kernel, got shape {value.shape}")
            value = np.transpose(value, (4, 3, 0, 1, 2))  # DHWIO -> torch (O, I, kT, kH, kW)
        elif leaf.startswith("batch_norm/"):
            value = value.reshape(-1)  # Sonnet keeps BN vectors as (1, 1, 1, 1, C)
            bn_modules[module] = value.shape
            if leaf == "batch_norm/gamma":
                with_gamma.add(module)
        state[f"{module}.{LEAVES[leaf]}"] = np.ascontiguousarray(value)
    for module, shape in bn_modules.items():
        if module not in with_gamma:  # Sonnet BatchNorm(scale=False): gamma is 1
            state[f"{module}.bn.weight"] = np.ones(shape, np.float32)
    return state


def from_tf_checkpoint(model: nnx.Module, checkpoint: str | os.PathLike | Mapping[str, np.ndarray], *,
                       scope: str | None = None, strict: bool = True) -> PortReport:
    """Load DeepMind's TensorFlow I3D checkpoint into a Flax `i3d` model in place.

    `checkpoint` is the checkpoint prefix (".../rgb_imagenet/model.ckpt", read with TensorFlow) or
    an already read {variable name: array} mapping. `scope` picks "RGB" or "Flow" when the file
    holds both (found automatically otherwise); a flow checkpoint needs `in_channels=2`.
    Missing, unexpected and mis-shaped tensors raise `PortError` (or are reported with strict=False).
    """
    from v3d_flax.models.i3d import InceptionI3d

    if not isinstance(model, InceptionI3d):
        raise ValueError(f"DeepMind's TensorFlow checkpoints are I3D (Inception-v1) weights; "
                         f"got a {type(model).__name__}: build the model with create_model('i3d', ...)")
    variables = checkpoint if isinstance(checkpoint, Mapping) else read_tf_checkpoint(checkpoint)
    return from_torch(model, tf_to_state_dict(variables, scope=scope), source="v3d", strict=strict)
