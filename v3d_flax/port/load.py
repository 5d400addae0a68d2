"""`load_weights`: one entry point that loads a checkpoint of any source (`v3d_flax.port.sources`).

Each kind of source has a reader (a file -> {name: array}), a renaming onto v3d's torch key names
(for reading a checkpoint's shapes before a model exists, e.g. its number of classes) and a loader
that applies the source's key rules and copies the weights into a model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flax import nnx

from v3d_flax.port.core import PortReport, from_torch, rename_keys
from v3d_flax.port.sources import Source, check_source, get_source


def read_source(source: str | Source, path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint at `path` read with `source`'s reader: a PyTorch file's unwrapped state_dict, or a
    TensorFlow checkpoint's variables (its prefix, e.g. ".../model.ckpt"), as numpy arrays."""
    if isinstance(source, str):
        source = get_source(source)
    if source.reader == "tensorflow":
        from v3d_flax.port.tf_checkpoint import read_tf_checkpoint

        return read_tf_checkpoint(path)
    from v3d_flax.port.checkpoint import load_torch_checkpoint

    return load_torch_checkpoint(path)


def v3d_names(state: Mapping[str, Any], source: str, arch: str, **options) -> dict[str, Any]:
    """`state` (as read from `source`) under model `arch`'s torch key names, values as the source has
    them (a 2D network's kernels not inflated): for reading shapes before the model is built."""
    found = check_source(source, arch)
    if found.kind == "tensorflow":
        from v3d_flax.port.tf_checkpoint import tf_to_state_dict

        return tf_to_state_dict(state, scope=options.get("scope"))
    if found.kind == "inflate_2d":
        from v3d_flax.port.inflate import inflated_names

        return inflated_names(state, found.name, arch)
    return rename_keys(state, found.name, arch)


def load_weights(model: nnx.Module, path_or_state: str | os.PathLike | Mapping[str, Any], *, source: str = "v3d",
                 strict: bool = True, resize: bool = False, **options) -> PortReport:
    """Load a checkpoint of `source` (`port.list_sources()`) into `model` in place.

    `path_or_state` is a file (a PyTorch or safetensors file; for "deepmind-tf" a TensorFlow checkpoint
    prefix) or what was read from one (a state_dict, or TensorFlow variables). The source must serve
    `model.arch` (its record's `sources`); ValueError names the sources that do. With `strict=True`
    any missing, unexpected or mis-shaped tensor raises `PortError` and the model is untouched; with
    `strict=False` what fits is loaded and the returned `PortReport` lists the rest. `options` go to
    the source's loader: `scope=` ("RGB"/"Flow") for "deepmind-tf", `head=False` for "imagenet-2d"
    (keep the 3D model's own classifier). `resize=True` (PyTorch state_dict sources): fit a checkpoint of
    another clip size by interpolating the position tables (`from_torch`'s `resize`).
    """
    found = check_source(source, getattr(model, "arch", None))
    state = path_or_state if isinstance(path_or_state, Mapping) else read_source(found, path_or_state)
    if found.kind == "tensorflow":
        from v3d_flax.port.tf_checkpoint import from_tf_checkpoint

        return from_tf_checkpoint(model, state, strict=strict, **options)
    if found.kind == "inflate_2d":
        from v3d_flax.port.inflate import inflate_2d

        return inflate_2d(model, state, source=found.name, strict=strict, **options)
    if options:
        raise TypeError(f"source {found.name!r} takes no options (got {', '.join(sorted(options))})")
    return from_torch(model, state, source=found.name, strict=strict, resize=resize)
