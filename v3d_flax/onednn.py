"""oneDNN's convolutions (the library PyTorch's CPU convs run on) inside jitted JAX programs on CPU.

`conv3d_onednn` computes `lax.conv_general_dilated`'s NDHWC x DHWIO convolution with three XLA FFI
custom calls into oneDNN (forward, backward-data, backward-weights, joined by a `jax.custom_vjp`),
float32 or bfloat16. Under a sharded `jax.jit` each device convolves its own part of the batch
(`custom_partitioning`: the batch is never gathered; the kernel gradient is summed over it).

The handler (`csrc/onednn_conv.cc`) is compiled on first use with the system's C++ compiler (`$CXX`,
else `c++`/`g++`) against the oneDNN wheels (`onednn-cpu-gomp`, `onednn-devel-cpu-gomp`) and XLA's
FFI headers from jaxlib, into `$XDG_CACHE_HOME/v3d` (default `~/.cache/v3d`), once per source,
jaxlib and oneDNN version. Where that is impossible (no compiler, no oneDNN wheel, not Linux x86-64)
`available()` is False, one warning line says why, and `conv3d`'s "auto" keeps XLA's formulations.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

SOURCE = Path(__file__).with_name("csrc") / "onednn_conv.cc"
RUNTIME_DIST, HEADERS_DIST = "onednn-cpu-gomp", "onednn-devel-cpu-gomp"
_TARGETS = {"forward": "V3dOnednnConvForward", "backward_data": "V3dOnednnConvBackwardData",
            "backward_weights": "V3dOnednnConvBackwardWeights"}
_DTYPES = (jnp.float32, jnp.bfloat16)


class OnednnUnavailable(RuntimeError):
    """The oneDNN extension cannot be built or loaded here (the message says why)."""


def cache_dir() -> Path:
    """Where the compiled extension is kept: `$XDG_CACHE_HOME/v3d`, default `~/.cache/v3d`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "v3d"


def _dist_file(dist: str, suffix: str) -> Path:
    """The installed file of distribution `dist` whose path ends with `suffix`."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise OnednnUnavailable(f"the {dist} wheel is not installed (pip install {dist})") from None
    for f in files:  # recorded relative to site-packages (e.g. ../../libdnnl.so.3): compare resolved paths
        path = Path(f.locate()).resolve()
        if path.as_posix().endswith(suffix):
            return path
    raise OnednnUnavailable(f"the {dist} wheel has no {suffix}")


def _compiler() -> str:
    for name in [os.environ.get("CXX"), "c++", "g++"]:
        if name and shutil.which(name):
            return shutil.which(name)
    raise OnednnUnavailable(f"no C++ compiler found ($CXX={os.environ.get('CXX')!r}, c++, g++)")


def build() -> Path:
    """Compile the extension into `cache_dir()` if it is not there yet; its path. Raises
    OnednnUnavailable (with the reason) where it cannot be built."""
    if not (sys.platform.startswith("linux") and os.uname().machine == "x86_64"):
        raise OnednnUnavailable(f"oneDNN convs are built for Linux x86-64 only (this is {sys.platform} "
                                f"{os.uname().machine})")
    library = _dist_file(RUNTIME_DIST, "lib/libdnnl.so.3")
    include = _dist_file(HEADERS_DIST, "include/oneapi/dnnl/dnnl.hpp").parents[2]
    ffi_include = jax.ffi.include_dir()
    cxx = _compiler()
    tag = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), jax.lib.__version__.encode(),
                                     importlib.metadata.version(RUNTIME_DIST).encode(),
                                     str(library).encode(), str(library.stat().st_mtime_ns).encode(),
                                     cxx.encode()])).hexdigest()[:16]
    target = cache_dir() / f"v3d_onednn_{tag}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{include}", f"-I{ffi_include}",
               str(SOURCE), str(library), f"-Wl,-rpath,{library.parent}", "-o", str(out)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode:
            last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise OnednnUnavailable(f"compiling {SOURCE.name} failed: {last}")
        os.replace(out, target)  # atomic: concurrent builders each install a complete file
    return target


@functools.cache
def _load() -> ctypes.CDLL | str:
    """The loaded extension with its FFI targets registered, or why it is unavailable."""
    try:
        lib = ctypes.CDLL(str(build()))
    except (OnednnUnavailable, OSError) as e:
        return str(e)
    for name, symbol in _TARGETS.items():
        jax.ffi.register_ffi_target(f"v3d_onednn_{name}", jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    return lib


def available() -> bool:
    """Whether oneDNN convs can run here (builds the extension on first call). Where they cannot,
    warns once with the reason and returns False."""
    loaded = _load()
    if isinstance(loaded, str):
        _warn_once(loaded)
        return False
    return True


@functools.cache
def _warn_once(reason: str) -> None:
    warnings.warn(f"v3d: oneDNN convolutions unavailable, using XLA's: {reason}", RuntimeWarning, stacklevel=3)


def version() -> str:
    """The loaded oneDNN library's version, e.g. "3.2.0"; raises OnednnUnavailable where it is absent."""
    loaded = _load()
    if isinstance(loaded, str):
        raise OnednnUnavailable(loaded)
    v = loaded.V3dOnednnVersion()
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}"


def applies(x, kernel, *, padding) -> bool:
    """Whether `conv3d_onednn` takes these operands: float32 or bfloat16, same dtype, no negative padding."""
    return (x.dtype == kernel.dtype and any(x.dtype == d for d in _DTYPES)
            and min(p for pair in padding for p in pair) >= 0)


def _attrs(strides, padding, dilation, groups):
    return dict(strides=np.asarray(strides, np.int64), padding=np.asarray(padding, np.int64).reshape(-1),
                dilation=np.asarray(dilation, np.int64), groups=np.int64(groups))


def _output_shape(x_shape, kernel_shape, strides, padding, dilation):
    spatial = [(n + lo + hi - d * (k - 1) - 1) // s + 1
               for n, k, s, (lo, hi), d in zip(x_shape[1:4], kernel_shape[:3], strides, padding, dilation)]
    if min(spatial) < 1:
        raise ValueError(f"conv3d: input {tuple(x_shape)} padded by {padding} is smaller than the kernel "
                         f"{tuple(kernel_shape[:3])} (dilation {dilation})")
    return (x_shape[0], *spatial, kernel_shape[4])


def _ffi(name, first, second, result_shape, dtype, geometry):
    call = jax.ffi.ffi_call(f"v3d_onednn_{name}", jax.ShapeDtypeStruct(result_shape, dtype))
    return call(first, second, **_attrs(*geometry))


def _batch_partitioned(fn, sharding_rule, *, batch_reduced=False):
    """`fn(a, b)` run per device on its part of the leading (batch) axis of its batch operands; every
    other axis replicated. `batch_reduced`: the result has no batch axis and is summed over devices."""
    partitioned = custom_partitioning(fn)

    def batch_axes(arg_shapes):
        spec = arg_shapes[0].sharding.spec
        return spec[0] if len(spec) else None

    def shard_specs(arg_shapes):
        axes = batch_axes(arg_shapes)
        return [PartitionSpec(axes, *[None] * (a.ndim - 1)) if _is_batched(i, batch_reduced) else
                PartitionSpec(*[None] * a.ndim) for i, a in enumerate(arg_shapes)]

    def result_spec(arg_shapes, result_shape):
        if batch_reduced:
            return PartitionSpec(*[None] * result_shape.ndim)
        return PartitionSpec(batch_axes(arg_shapes), *[None] * (result_shape.ndim - 1))

    def infer(mesh, arg_shapes, result_shape):
        return NamedSharding(mesh, result_spec(arg_shapes, result_shape))

    def partition(mesh, arg_shapes, result_shape):
        axes = batch_axes(arg_shapes)
        lower = fn
        if batch_reduced and axes is not None:
            lower = lambda a, b: jax.lax.psum(fn(a, b), axes)  # noqa: E731
        return (mesh, lower, NamedSharding(mesh, result_spec(arg_shapes, result_shape)),
                tuple(NamedSharding(mesh, s) for s in shard_specs(arg_shapes)))

    partitioned.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=sharding_rule,
                              need_replication_factors=tuple(f for f in sharding_rule.replace(",", " ")
                                                             .replace("->", " ").split() if f != "b"),
                              reduction_factors=("b",) if batch_reduced else ())
    return partitioned


def _is_batched(index, batch_reduced):
    return batch_reduced or index == 0


def _geometry(strides, padding, dilation, groups):
    return (tuple(int(s) for s in strides), tuple((int(lo), int(hi)) for lo, hi in padding),
            tuple(int(d) for d in dilation), int(groups))


def _check_available():
    if not available():
        raise OnednnUnavailable(_load())


def conv3d_onednn(x, kernel, *, strides, padding, dilation=(1, 1, 1), groups=1):
    """NDHWC x DHWIO 3D convolution by oneDNN (see the module docstring); padding as three (lo, hi)
    pairs. Reverse-mode differentiable (a `jax.custom_vjp`). Raises OnednnUnavailable where oneDNN
    cannot run (check `available()` first)."""
    _check_available()
    return _conv(x, kernel, _geometry(strides, padding, dilation, groups))


def conv3d_onednn_grad(x, kernel, dy, *, strides, padding, dilation=(1, 1, 1), groups=1, need_x=True):
    """The gradients (dx, dkernel) of `conv3d(x, kernel)` for the output cotangent dy, by oneDNN's
    backward-data and backward-weights; dx is None when `need_x` is False."""
    _check_available()
    _, backward_data, backward_weights = _sharded(_geometry(strides, padding, dilation, groups), x.shape[1:],
                                                  kernel.shape)
    return backward_data(dy, kernel) if need_x else None, backward_weights(x, dy)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, kernel, geometry):
    return _sharded(geometry, x.shape[1:], kernel.shape)[0](x, kernel)


def _conv_fwd(x, kernel, geometry):
    return _conv(x, kernel, geometry), (x, kernel)


def _conv_bwd(geometry, residuals, dy):
    x, kernel = residuals
    _, backward_data, backward_weights = _sharded(geometry, x.shape[1:], kernel.shape)
    return backward_data(dy, kernel), backward_weights(x, dy)


_conv.defvjp(_conv_fwd, _conv_bwd)


@functools.cache
def _sharded(geometry, x_tail, kernel_shape):
    """forward(x, w), backward_data(dy, w) and backward_weights(x, dy) of one conv geometry, each run
    per device on its part of the batch. Shapes other than the batch are fixed per geometry, so the
    backward functions know their result shapes."""
    def forward(x, w):
        return _ffi("forward", x, w, _output_shape(x.shape, w.shape, *geometry[:3]), x.dtype, geometry)

    def backward_data(dy, w):
        return _ffi("backward_data", dy, w, (dy.shape[0], *x_tail), dy.dtype, geometry)

    def backward_weights(x, dy):
        return _ffi("backward_weights", x, dy, kernel_shape, x.dtype, geometry)

    return (_vmappable(_batch_partitioned(forward, "b d h w c, p q r i o -> b e f g k")),
            _vmappable(_batch_partitioned(backward_data, "b e f g k, p q r i o -> b d h w c")),
            _vmappable(_batch_partitioned(backward_weights, "b d h w c, b e f g k -> p q r i o", batch_reduced=True),
                       fold=False))


def _vmappable(fn, fold=True):
    """`fn(a, b)` under `jax.vmap` (custom_partitioning has no batching rule of its own): with only `a`
    mapped and `fold`, the mapped axis is folded into the batch (one call); otherwise one call per
    mapped element (`lax.map`)."""
    mapped = jax.custom_batching.custom_vmap(fn)

    @mapped.def_vmap
    def rule(axis_size, in_batched, a, b):
        if fold and in_batched[0] and not in_batched[1]:
            out = fn(a.reshape(-1, *a.shape[2:]), b)
            return out.reshape(axis_size, -1, *out.shape[1:]), True
        a, b = (v if batched else jnp.broadcast_to(v, (axis_size, *v.shape)) for v, batched in zip((a, b), in_batched))
        return jax.lax.map(lambda ab: fn(*ab), (a, b)), True

    return mapped
