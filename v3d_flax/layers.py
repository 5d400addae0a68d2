"""Layers shared by every v3d Flax model (NDHWC).

The modules here mirror `torch.nn` so that a PyTorch state_dict maps onto them mechanically:
`Conv3d` (kernel stored DHWIO), `Linear`, `BatchNorm` with PyTorch's running-statistics
semantics, stateless `ReLU` / pooling modules and a `Sequential` whose children are indexed like
`torch.nn.Sequential`'s, so that the NNX path ``("stem", 0, "kernel")`` is the torch key
``stem.0.weight``.

Initialisation: built eagerly, each random initialiser is an XLA program compiled for its weight
shape, and a model has dozens of shapes. `build_batched` (what `create_model` uses) builds the model
with placeholders instead and then draws every random weight in one jitted program, bit-identical
to the eager values: the initialisers here (`NormalInit`, `uniform_init`) know how to defer
themselves, and constant initialisers fill on the host. Any other initialiser still runs eagerly.
"""

from __future__ import annotations

import contextvars
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from v3d_flax import conv as conv_ops
from v3d_flax.archfacts import check_conv_impl

Triple = tuple[int, int, int]
Padding = str | Sequence[int] | Sequence[tuple[int, int]]

# ---------------------------------------------------------------------------------------------- initialisers

_DEFERRING = contextvars.ContextVar("v3d_layers_deferring", default=False)


class _Pending(jax.ShapeDtypeStruct):
    """Placeholder value of a float32 parameter whose random draw `build_batched` still owes."""

    def __init__(self, shape, key, kind: str, a, b):
        super().__init__(tuple(shape), jnp.float32)
        self.key, self.kind, self.a, self.b = key, kind, a, b


def _deferrable(key, shape, dtype, out_sharding=None) -> bool:
    """Whether an initialiser call may wait for `build_batched`'s draw, which reproduces jax's
    partitionable threefry streams in float32 only."""
    return (_DEFERRING.get() and out_sharding is None and np.dtype(dtype) == np.float32
            and math.prod(shape) < 2 ** 32 and jax.config.jax_threefry_partitionable
            and jax.dtypes.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key)
            and jax.random.key_impl(key) == "threefry2x32")


class NormalInit:
    """Initializer drawing N(0, stddev^2) float32 values: `NormalInit(0.01)` is
    `nnx.initializers.normal(0.01)`, `NormalInit(scale=2.0, mode="fan_out")` is
    `nnx.initializers.variance_scaling(2.0, "fan_out", "normal")`, value for value; inside
    `build_batched` the draw is deferred to its single program."""

    def __init__(self, stddev: float | None = None, *, scale: float | None = None, mode: str | None = None):
        if (stddev is None) == (scale is None) or (scale is not None and mode not in ("fan_in", "fan_out")):
            raise ValueError("NormalInit takes a stddev, or a scale with mode 'fan_in' or 'fan_out'")
        self.stddev, self.scale, self.mode = stddev, scale, mode
        self._eager = (nnx.initializers.normal(stddev) if stddev is not None
                       else nnx.initializers.variance_scaling(scale, mode, "normal"))

    def std_for(self, shape) -> np.float32:
        """The float32 standard deviation for a weight of `shape` (fans as jax.nn.initializers computes them)."""
        if self.stddev is not None:
            return np.float32(self.stddev)
        receptive = math.prod(shape) / shape[-2] / shape[-1]
        fan = (shape[-2] if self.mode == "fan_in" else shape[-1]) * receptive
        return np.sqrt(np.float32(self.scale / fan))

    def __call__(self, key, shape, dtype=jnp.float32, out_sharding=None):
        shape = tuple(shape)
        if not _deferrable(key, shape, dtype, out_sharding) or (self.scale is not None and len(shape) < 2):
            return self._eager(key, shape, dtype, out_sharding=out_sharding)
        return _Pending(shape, key, "normal", self.std_for(shape), None)


def uniform_init(key, shape, minval: float, maxval: float, dtype=jnp.float32):
    """`jax.random.uniform(key, shape, dtype, minval, maxval)`, deferred inside `build_batched`."""
    if not _deferrable(key, shape, dtype):
        return jax.random.uniform(key, shape, dtype, minval, maxval)
    return _Pending(shape, key, "uniform", np.float32(minval), np.float32(maxval))


def host_full(shape, fill, dtype=jnp.float32) -> jax.Array:
    """A constant array made on the host and transferred: `jnp.full` would compile a program per shape."""
    return jax.device_put(np.full(shape, fill, dtype))


def zeros_init(key, shape, dtype=jnp.float32) -> jax.Array:
    """Initializer of zeros (the key is ignored), made on the host."""
    del key
    return host_full(shape, 0, dtype)


# torchvision initialises video convs with kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_kernel_init = NormalInit(scale=2.0, mode="fan_out")

_BLOCK = 256  # elements per row of the draw: each weight starts on a row of its own
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(k1, k2, x0, x1):
    """Threefry-2x32 with 20 rounds, as jax's lowering computes it (unrolled: XLA fuses it into one loop
    over the elements, where the CPU lowering of the primitive materialises every round's arrays)."""
    def rotl(x, r):
        return jax.lax.shift_left(x, np.uint32(r)) | jax.lax.shift_right_logical(x, np.uint32(32 - r))

    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ rotl(x1, r)
        x0, x1 = x0 + ks[(i + 1) % 3], x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


@jax.jit
def _draw_rows(k1, k2, start, minval, maxval, std, normal):
    """All deferred draws as one (rows * _BLOCK,) float32 vector; every argument has one entry per row.

    Row r holds elements start[r] .. start[r] + _BLOCK - 1 of the draw keyed (k1[r], k2[r]); jax's
    partitionable threefry gives element i of a draw the counter i, so these are the very values of
    `jax.random.normal` / `uniform` for that key. The float steps copy `jax.random.uniform` and
    `normal`; the barrier keeps XLA from folding the initialiser's stddev product into normal's
    sqrt(2) product, which the eager initialiser computes as a separate rounding.
    """
    shape = (k1.shape[0], _BLOCK)

    def rows(v):
        return jax.lax.broadcast_in_dim(v, shape, (0,))

    counter = rows(start) + jax.lax.broadcasted_iota(np.uint32, shape, 1)
    bits1, bits2 = _threefry2x32(rows(k1), rows(k2), jnp.zeros(shape, np.uint32), counter)
    bits = jax.lax.shift_right_logical(bits1 ^ bits2, np.uint32(32 - 23)) | np.array(1.0, np.float32).view(np.uint32)
    floats = jax.lax.bitcast_convert_type(bits, np.float32) - np.float32(1.0)
    lo, hi = rows(minval), rows(maxval)
    u = jax.lax.max(lo, floats * (hi - lo) + lo)
    n = jax.lax.optimization_barrier(jax.lax.mul(np.float32(np.sqrt(2)), jax.lax.erf_inv(u)))
    return jnp.where(rows(normal), n * rows(std), u).reshape(-1)


def _draw(pending: list[_Pending]) -> list[jax.Array]:
    """The values of `pending`, drawn by one `_draw_rows` call (traced when the keys are tracers)."""
    normal_lo = np.nextafter(np.float32(-1), np.float32(0))
    sizes = [math.prod(p.shape) for p in pending]
    nrows = [-(-n // _BLOCK) for n in sizes]
    owner = np.repeat(np.arange(len(pending)), nrows)
    first = np.cumsum([0] + nrows[:-1])
    start = ((np.arange(len(owner)) - np.repeat(first, nrows)) * _BLOCK).astype(np.uint32)
    offsets = first * _BLOCK
    is_normal = np.array([p.kind == "normal" for p in pending])
    minval = np.array([normal_lo if p.kind == "normal" else p.a for p in pending], np.float32)
    maxval = np.array([1.0 if p.kind == "normal" else p.b for p in pending], np.float32)
    std = np.array([p.a if p.kind == "normal" else 1.0 for p in pending], np.float32)
    per_row = [a[owner] for a in (minval, maxval, std, is_normal)]
    keys = [jax.random.key_data(p.key) for p in pending]
    if any(isinstance(k, jax.core.Tracer) for k in keys):  # under jit / eval_shape: stay in the trace
        data = jnp.stack(keys)[owner]
        flat = _draw_rows(data[:, 0], data[:, 1], start, *per_row)
        return [flat[o:o + n].reshape(p.shape) for o, n, p in zip(offsets, sizes, pending)]
    data = np.stack([np.asarray(k) for k in keys])[owner]
    flat = np.asarray(_draw_rows(data[:, 0], data[:, 1], start, *per_row))
    # slices on the host: slicing the device array eagerly would compile a program per shape
    return [jax.device_put(flat[o:o + n].reshape(p.shape)) for o, n, p in zip(offsets, sizes, pending)]


def build_batched(factory: Callable[..., nnx.Module], *args, **kwargs) -> nnx.Module:
    """`factory(*args, **kwargs)` with its random weights drawn in one jitted program instead of one
    compiled program per weight shape; the values equal an eager build's, and the Rngs passed in
    advance exactly as they would. Initialisers other than this module's run eagerly as usual."""
    module = _build_deferring(factory, args, kwargs)
    owed, seen = [], set()
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Variable) and id(node) not in seen:
            seen.add(id(node))
            if isinstance(node.get_value(), _Pending):
                owed.append(node)
    if owed:
        for var, value in zip(owed, _draw([var.get_value() for var in owed])):
            var.set_value(value)
    return module


def build_abstract(factory: Callable[..., nnx.Module], *args, **kwargs) -> nnx.Module:
    """What ``nnx.eval_shape(lambda: factory(*args, **kwargs))`` returns (every array a
    jax.ShapeDtypeStruct), built without drawing the deferred random weights and without tracing
    (under eval_shape each RNG stream update costs a tracer sharding probe): for loading weights
    into, or reading shapes from."""
    graphdef, state = nnx.split(_build_deferring(factory, args, kwargs))
    return nnx.merge(graphdef, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state))


def build_structure(factory: Callable[..., nnx.Module], *args, **kwargs) -> nnx.Module:
    """`factory(*args, **kwargs)` as its __init__ builds it, attributes in the order it assigns them
    (which nnx.split / merge sort by name), its random weights left as placeholders: for reading the
    module tree (the torch twin's key order), never for running."""
    return _build_deferring(factory, args, kwargs)


def _build_deferring(factory, args, kwargs) -> nnx.Module:
    token = _DEFERRING.set(True)
    try:
        return factory(*args, **kwargs)
    finally:
        _DEFERRING.reset(token)


def _triple(v: int | Sequence[int]) -> Triple:
    if isinstance(v, int):
        return (v, v, v)
    v = tuple(int(i) for i in v)
    if len(v) != 3:
        raise ValueError(f"expected an int or 3 ints (T, H, W), got {v!r}")
    return v  # type: ignore[return-value]


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding for one axis: the odd pixel goes at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def resolve_padding(padding: Padding, spatial: Sequence[int], kernel: Triple, stride: Triple):
    """Explicit ((lo, hi),) * 3 pads from an int/triple (symmetric, torch style), pairs or 'SAME'."""
    if isinstance(padding, str):
        if padding.upper() != "SAME":
            raise ValueError(f"padding must be 'SAME', an int, 3 ints or 3 (lo, hi) pairs, got {padding!r}")
        return tuple(tf_same_padding(n, k, s) for n, k, s in zip(spatial, kernel, stride))
    if isinstance(padding, int):
        return ((padding, padding),) * 3
    padding = tuple(padding)
    if len(padding) == 3 and all(isinstance(p, int) for p in padding):
        return tuple((p, p) for p in padding)
    return tuple((int(lo), int(hi)) for lo, hi in padding)


class Conv3d(nnx.Module):
    """3D convolution on NDHWC input with a DHWIO kernel; padding torch-style or TF 'SAME'.

    `impl` names the formulation `v3d_flax.conv.conv3d` computes it with (one of
    `v3d_flax.archfacts.CONV_IMPLS`; "auto": chosen per backend and shape). It is configuration, not a
    weight: `set_conv_impl` changes it on a built model, and checkpoints do not record it.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int | Sequence[int],
                 strides: int | Sequence[int] = 1, padding: Padding = 0, *, use_bias: bool = False,
                 groups: int = 1, dilation: int | Sequence[int] = 1, kernel_init=conv_kernel_init,
                 impl: str = "auto", rngs: nnx.Rngs):
        if in_features % groups or out_features % groups:
            raise ValueError(f"groups={groups} must divide in_features={in_features} and out_features={out_features}")
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        self.kernel_size, self.strides, self.dilation = _triple(kernel_size), _triple(strides), _triple(dilation)
        self.padding = padding
        self.impl = check_conv_impl(impl, "Conv3d(impl=...)")
        shape = (*self.kernel_size, in_features // groups, out_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, jnp.float32))
        if use_bias:
            fan_in = in_features // groups * self.kernel_size[0] * self.kernel_size[1] * self.kernel_size[2]
            bound = 1.0 / fan_in ** 0.5
            self.bias = nnx.Param(uniform_init(rngs.params(), (out_features,), -bound, bound))
        else:
            self.bias = None

    def __call__(self, x: jax.Array) -> jax.Array:
        pads = resolve_padding(self.padding, x.shape[1:4], self.kernel_size, self.strides)
        kernel = self.kernel[...].astype(x.dtype)
        y = conv_ops.conv3d(x, kernel, strides=self.strides, padding=pads, groups=self.groups,
                            dilation=self.dilation, impl=self.impl)
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y


def set_conv_impl(model: nnx.Module, impl: str) -> nnx.Module:
    """Set the conv formulation of every `Conv3d` in `model` to `impl` (one of
    `v3d_flax.archfacts.CONV_IMPLS`) in place, and return `model`. A function jitted over the model before
    keeps the formulation it was traced with until it is traced again."""
    check_conv_impl(impl, "set_conv_impl")
    if not isinstance(model, nnx.Module):
        raise TypeError(f"set_conv_impl expects an nnx.Module, got {type(model).__name__}")
    for _, module in nnx.iter_modules(model):
        if isinstance(module, Conv3d):
            module.impl = impl
    return model


class Linear(nnx.Linear):
    """`nnx.Linear` with torchvision's init (N(0, 0.01); `kernel_init` to change it) and an optional torch
    flatten layout.

    `torch_input_shape` records the (C, T, H, W) shape a torch model flattened to produce this
    layer's input; NDHWC models flatten (T, H, W, C) instead, so porting permutes the columns.
    """

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
                 torch_input_shape: tuple[int, ...] | None = None, kernel_init=None, rngs: nnx.Rngs):
        super().__init__(in_features, out_features, use_bias=use_bias,
                         kernel_init=kernel_init or NormalInit(0.01), bias_init=zeros_init, rngs=rngs)
        self.torch_input_shape = torch_input_shape

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x @ self.kernel[...].astype(x.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y


class BatchNorm(nnx.Module):
    """BatchNorm over the last axis with PyTorch semantics.

    `momentum` is PyTorch's (weight of the new batch, default 0.1). Train mode normalises with
    the biased batch variance and updates `var` with the unbiased one, exactly as
    `torch.nn.BatchNorm3d`. Statistics are computed in float32 whatever the input dtype. With
    `axis_name` set (inside `pmap`/`shard_map`) the statistics are averaged over that axis; under
    `jax.jit` with a batch-sharded input they are global without it.
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1,
                 use_scale: bool = True, axis_name: str | None = None,
                 use_running_average: bool = False, rngs: nnx.Rngs | None = None):
        del rngs  # deterministic init, like torch
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.use_scale, self.axis_name = use_scale, axis_name
        self.use_running_average = use_running_average
        self.scale = nnx.Param(host_full((num_features,), 1.0))
        self.bias = nnx.Param(host_full((num_features,), 0.0))
        self.mean = nnx.BatchStat(host_full((num_features,), 0.0))
        self.var = nnx.BatchStat(host_full((num_features,), 1.0))
        self.num_batches_tracked = nnx.BatchStat(host_full((), 0, jnp.int32))

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.num_features:
            raise ValueError(f"BatchNorm expects {self.num_features} channels on the last axis, got shape {x.shape}")
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # bf16 -> f32; f64 stays
            count = 1
            for a in axes:
                count *= x.shape[a]
            # Two passes (mean, then mean squared deviation), as torch does, for precision.
            mean = jnp.mean(xf, axes)
            if self.axis_name is not None:
                mean = jax.lax.pmean(mean, self.axis_name)
            var = jnp.mean(jnp.square(xf - mean), axes)
            if self.axis_name is not None:
                var = jax.lax.pmean(var, self.axis_name)
                count *= jax.lax.psum(1, self.axis_name)
            unbiased = var * (count / max(count - 1, 1))
            m = self.momentum
            # set_value, not `v[...] = `: under tracing the indexed form probes the tracer's sharding,
            # and building that probe's error message slows every trace (docs/performance.md).
            self.mean.set_value(((1 - m) * self.mean[...] + m * mean).astype(self.mean[...].dtype))
            self.var.set_value(((1 - m) * self.var[...] + m * unbiased).astype(self.var[...].dtype))
            self.num_batches_tracked.set_value(self.num_batches_tracked[...] + 1)
        inv = jax.lax.rsqrt(var + self.eps)
        if self.use_scale:
            inv = inv * self.scale[...]
        shift = self.bias[...] - mean * inv
        return (x * inv.astype(x.dtype) + shift.astype(x.dtype)).astype(x.dtype)


class ReLU(nnx.Module):
    """Stateless ReLU, a placeholder-free slot that keeps `Sequential` indices equal to torch's."""

    def __call__(self, x):
        return jax.nn.relu(x)


class Swish(nnx.Module):
    """x * sigmoid(x)."""

    def __call__(self, x):
        return x * jax.nn.sigmoid(x)


def max_pool3d(x: jax.Array, kernel_size, strides=None, padding: Padding = 0) -> jax.Array:
    """Max-pool NDHWC; torch-style symmetric pads (padded with -inf) or TF 'SAME'."""
    k = _triple(kernel_size)
    s = _triple(strides if strides is not None else kernel_size)
    pads = resolve_padding(padding, x.shape[1:4], k, s)
    # A concrete numpy init lets JAX recognise the max monoid (reduce_window_max), which has a VJP.
    init = np.array(-np.inf, x.dtype)
    return jax.lax.reduce_window(x, init, jax.lax.max, (1, *k, 1), (1, *s, 1), ((0, 0), *pads, (0, 0)))


def avg_pool3d(x: jax.Array, kernel_size, strides=None, padding: Padding = 0) -> jax.Array:
    """Average-pool NDHWC, zero pads counted (torch's count_include_pad=True)."""
    k = _triple(kernel_size)
    s = _triple(strides if strides is not None else kernel_size)
    pads = resolve_padding(padding, x.shape[1:4], k, s)
    summed = jax.lax.reduce_window(x, np.array(0, x.dtype), jax.lax.add, (1, *k, 1), (1, *s, 1),
                                   ((0, 0), *pads, (0, 0)))
    return summed / (k[0] * k[1] * k[2])


class MaxPool3d(nnx.Module):
    """Stateless max-pool module (see `max_pool3d`)."""

    def __init__(self, kernel_size, strides=None, padding: Padding = 0):
        self.kernel_size, self.strides, self.padding = kernel_size, strides, padding

    def __call__(self, x):
        return max_pool3d(x, self.kernel_size, self.strides, self.padding)


class Sequential(nnx.List):
    """A list of modules applied in order; child i has NNX path (..., i), like torch's `Sequential`."""

    def __call__(self, x):
        for layer in self:
            x = layer(x)
        return x


def check_video_input(x: jax.Array, *, channels: int, name: str, frames: int | None = None,
                      size: tuple[int, int] | None = None) -> None:
    """Raise ValueError unless `x` is a 5-D NDHWC clip with `channels` channels (and the fixed size)."""
    if getattr(x, "ndim", None) != 5:
        raise ValueError(f"{name} expects a 5-D NDHWC clip (batch, frames, height, width, {channels}), "
                         f"got shape {getattr(x, 'shape', type(x))}")
    if x.shape[-1] != channels:
        hint = " (this looks like NCDHW: transpose with x.transpose(0, 2, 3, 4, 1))" if x.shape[1] == channels else ""
        raise ValueError(f"{name} expects NDHWC input with {channels} channels on the last axis, "
                         f"got shape {tuple(x.shape)}{hint}")
    if frames is not None and size is not None and (x.shape[1], *x.shape[2:4]) != (frames, *size):
        raise ValueError(f"{name} was built for {frames}x{size[0]}x{size[1]} clips (frames x height x width), "
                         f"got {x.shape[1]}x{x.shape[2]}x{x.shape[3]}; rebuild it with num_frames/crop_size")
