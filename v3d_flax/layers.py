"""Layers shared by every v3d Flax model (NDHWC).

The modules here mirror `torch.nn` so that a PyTorch state_dict maps onto them mechanically:
`Conv3d` (kernel stored DHWIO), `Linear`, `BatchNorm` with PyTorch's running-statistics
semantics, stateless `ReLU` / pooling modules and a `Sequential` whose children are indexed like
`torch.nn.Sequential`'s, so that the NNX path ``("stem", 0, "kernel")`` is the torch key
``stem.0.weight``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from v3d_flax import conv as conv_ops

Triple = tuple[int, int, int]
Padding = str | Sequence[int] | Sequence[tuple[int, int]]

# torchvision initialises video convs with kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_kernel_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


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
    """3D convolution on NDHWC input with a DHWIO kernel; padding torch-style or TF 'SAME'."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int | Sequence[int],
                 strides: int | Sequence[int] = 1, padding: Padding = 0, *, use_bias: bool = False,
                 groups: int = 1, dilation: int | Sequence[int] = 1, kernel_init=conv_kernel_init,
                 rngs: nnx.Rngs):
        if in_features % groups or out_features % groups:
            raise ValueError(f"groups={groups} must divide in_features={in_features} and out_features={out_features}")
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        self.kernel_size, self.strides, self.dilation = _triple(kernel_size), _triple(strides), _triple(dilation)
        self.padding = padding
        shape = (*self.kernel_size, in_features // groups, out_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, jnp.float32))
        if use_bias:
            fan_in = in_features // groups * self.kernel_size[0] * self.kernel_size[1] * self.kernel_size[2]
            bound = 1.0 / fan_in ** 0.5
            self.bias = nnx.Param(jax.random.uniform(rngs.params(), (out_features,), jnp.float32, -bound, bound))
        else:
            self.bias = None

    def __call__(self, x: jax.Array) -> jax.Array:
        pads = resolve_padding(self.padding, x.shape[1:4], self.kernel_size, self.strides)
        kernel = self.kernel[...].astype(x.dtype)
        y = conv_ops.conv3d(x, kernel, strides=self.strides, padding=pads, groups=self.groups,
                            dilation=self.dilation)
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y


class Linear(nnx.Linear):
    """`nnx.Linear` with torchvision's init and an optional torch flatten layout.

    `torch_input_shape` records the (C, T, H, W) shape a torch model flattened to produce this
    layer's input; NDHWC models flatten (T, H, W, C) instead, so porting permutes the columns.
    """

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
                 torch_input_shape: tuple[int, ...] | None = None, rngs: nnx.Rngs):
        super().__init__(in_features, out_features, use_bias=use_bias,
                         kernel_init=nnx.initializers.normal(0.01), rngs=rngs)
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
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))

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
            # whose error message alone costs ~40 ms per BatchNorm per trace.
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
