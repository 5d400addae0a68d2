"""The 3D convolution every v3d Flax layer calls, with backend-selectable implementations.

`conv3d` takes NDHWC input, a DHWIO kernel and explicit ((lo, hi),) * 3 padding. Every
formulation below computes the same function as `lax.conv_general_dilated` (forward and, through
autodiff, backward); they differ only in speed, which depends on the backend:

- "lax":       one `lax.conv_general_dilated` (XLA's native conv). "auto" off CPU.
- "time2d":    time folded into the batch, one 2D conv per temporal tap, summed. XLA:CPU's 2D conv
               path is faster than its 3D one. "auto" on CPU for strided, grouped and (kT, 1, 1) convs.
- "time2d_lax_grad": "time2d"'s forward with the backward of "lax" (both gradients as XLA's
               native 3D conv transposes, which XLA:CPU runs faster than the 2D ones for stride-1
               convs, and slower for strided ones); only the input and kernel are saved for the
               backward, not the per-tap frame copies. "auto" on CPU for stride-1 ungrouped convs
               with a spatial kernel. Reverse-mode only (a `jax.custom_vjp`): `jax.jvp` through
               such a conv fails; use "time2d" for forward-mode differentiation.
- "im2col":    a (kT*kH*kW*C_in)-wide patch matrix times the kernel; for stride-1 ungrouped convs
               on tiny spatial maps or 3-channel inputs, where XLA:CPU's conv is pathological.
- "shift_add": depthwise (groups == C_in) conv as kT*kH*kW shifted multiply-adds; XLA:CPU's
               `feature_group_count` conv is far slower on such convs.
- "onednn":    oneDNN's convolutions (the library PyTorch's CPU convs call) as XLA custom calls
               (`v3d_flax.onednn`), float32 and bfloat16, on CPU where the extension builds; depthwise
               convs keep "shift_add"'s forward (oneDNN 3.2's 3D depthwise forward is slow) with
               oneDNN's backward. Reverse-mode only (a `jax.custom_vjp`). "auto" on CPU where available,
               except stride-1 convs on maps of at most 16 pixels ("im2col" trains faster there).
- "auto":      per backend and shape (see `select_impl`); the default.
- "xla":       "auto"'s choice among XLA's own formulations, never oneDNN (the fallback where the
               oneDNN extension is unavailable).

The formulation is an argument: `conv3d(..., impl=name)`, which `v3d_flax.layers.Conv3d` passes
from its `impl` field (`v3d_flax.layers.set_conv_impl(model, name)` sets it on a built model).
A named formulation is used where it applies; "time2d_lax_grad", "im2col" and "shift_add" fall back
to "auto" for convs they do not cover. docs/performance.md has the measurements behind "auto".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from v3d_flax import onednn
from v3d_flax.archfacts import check_conv_impl

_DIMENSION_NUMBERS = ("NDHWC", "DHWIO", "NDHWC")
_DIMENSION_NUMBERS_2D = ("NHWC", "HWIO", "NHWC")


def conv3d(x: jax.Array, kernel: jax.Array, *, strides, padding, groups: int = 1, dilation=(1, 1, 1),
           impl: str = "auto") -> jax.Array:
    """3D convolution, NDHWC x DHWIO -> NDHWC, padding given as three (lo, hi) pairs, computed by the
    formulation `impl` (one of `v3d_flax.archfacts.CONV_IMPLS`) where it applies, else by the one "auto" picks."""
    strides, dilation = tuple(int(s) for s in strides), tuple(int(d) for d in dilation)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if x.ndim != 5 or kernel.ndim != 5 or len(strides) != 3 or len(dilation) != 3 or len(padding) != 3:
        raise ValueError(f"conv3d expects NDHWC x (5D), DHWIO kernel (5D) and 3 strides/dilations/pads; got "
                         f"x {x.shape}, kernel {kernel.shape}, strides {strides}, dilation {dilation}, "
                         f"padding {padding}")
    if x.shape[-1] != kernel.shape[3] * groups or kernel.shape[4] % groups:
        raise ValueError(f"conv3d: x has {x.shape[-1]} channels, kernel {kernel.shape} with groups={groups} "
                         f"expects {kernel.shape[3] * groups} and output channels divisible by groups")
    impl = select_impl(x, kernel, strides=strides, groups=groups, dilation=dilation, impl=impl, padding=padding)
    args = dict(strides=strides, padding=padding, dilation=dilation)
    if impl == "onednn":
        if groups > 1 and groups == x.shape[-1]:
            return conv3d_depthwise_onednn_grad(x, kernel, strides, padding, dilation)
        return onednn.conv3d_onednn(x, kernel, groups=groups, **args)
    if impl == "shift_add":
        return conv3d_shift_add(x, kernel, **args)
    if impl == "im2col":
        return conv3d_im2col(x, kernel, padding=padding)
    if impl == "time2d":
        return conv3d_time2d(x, kernel, groups=groups, **args)
    if impl == "time2d_lax_grad":
        return conv3d_time2d_lax_grad(x, kernel, strides, padding, dilation, groups)
    return conv3d_lax(x, kernel, groups=groups, **args)


def select_impl(x, kernel, *, strides, groups, dilation, impl: str = "auto", padding=((0, 0),) * 3) -> str:
    """The formulation `conv3d(..., impl=impl)` uses for these operands on the current backend."""
    requested = check_conv_impl(impl)
    depthwise = groups > 1 and groups == x.shape[-1]
    if requested == "shift_add" and depthwise:
        return "shift_add"
    if requested == "im2col" and _im2col_applies(strides, groups, dilation):
        return "im2col"
    if requested == "time2d_lax_grad" and _lax_grad_applies(kernel, strides, groups):
        return requested
    if requested in ("lax", "time2d"):
        return requested
    if requested == "onednn" and _onednn_applies(x, kernel, padding):
        return "onednn"
    if _platform(x) != "cpu":
        return "lax"
    tiny_map = x.shape[2] * x.shape[3] <= 16
    if _im2col_applies(strides, groups, dilation) and tiny_map:
        return "im2col"
    if requested != "xla" and _onednn_applies(x, kernel, padding):
        return "onednn"
    if depthwise:
        return "shift_add"
    if _im2col_applies(strides, groups, dilation) and x.shape[-1] <= 4:
        return "im2col"
    return "time2d_lax_grad" if _lax_grad_applies(kernel, strides, groups) else "time2d"


def _platform(x) -> str:
    """The platform x lives on (concrete arrays), else the default backend (under tracing)."""
    if isinstance(x, jax.core.Tracer):  # checked first: a tracer's failing .devices() is slow to raise
        return jax.default_backend()
    try:
        return next(iter(x.devices())).platform
    except Exception:
        return jax.default_backend()


def _onednn_applies(x, kernel, padding) -> bool:
    return _platform(x) == "cpu" and onednn.applies(x, kernel, padding=padding) and onednn.available()


def _lax_grad_applies(kernel, strides, groups) -> bool:
    """Where XLA:CPU's 3D conv backward beats the 2D one: stride 1, ungrouped, a spatial kernel."""
    return groups == 1 and tuple(strides) == (1, 1, 1) and tuple(kernel.shape[1:3]) != (1, 1)


def _im2col_applies(strides, groups, dilation) -> bool:
    return groups == 1 and tuple(strides) == (1, 1, 1) and tuple(dilation) == (1, 1, 1)


def conv3d_lax(x, kernel, *, strides, padding, groups=1, dilation=(1, 1, 1)):
    """XLA's native 3D convolution."""
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=tuple(strides), padding=tuple(padding), rhs_dilation=tuple(dilation),
        dimension_numbers=_DIMENSION_NUMBERS, feature_group_count=groups)


def _temporal_taps(x, kt, *, stride, pad, dilation):
    """For each temporal tap a, the input frames it meets, (B, T_out, H, W, C) each."""
    xp = jnp.pad(x, ((0, 0), pad, (0, 0), (0, 0), (0, 0))) if pad != (0, 0) else x
    t_out = (xp.shape[1] - dilation * (kt - 1) - 1) // stride + 1
    if t_out < 1:
        raise ValueError(f"conv3d: {x.shape[1]} frames padded by {pad} are fewer than the temporal kernel "
                         f"extent {dilation * (kt - 1) + 1}")
    return [jax.lax.slice_in_dim(xp, a * dilation, a * dilation + (t_out - 1) * stride + 1, stride, axis=1)
            for a in range(kt)], t_out


def conv3d_time2d(x, kernel, *, strides, padding, groups=1, dilation=(1, 1, 1)):
    """3D conv as a sum over temporal taps of 2D convs on the time-folded batch."""
    kt = kernel.shape[0]
    taps, t_out = _temporal_taps(x, kt, stride=strides[0], pad=padding[0], dilation=dilation[0])
    b = x.shape[0]
    if kernel.shape[1:3] == (1, 1) and groups == 1 and padding[1:] == ((0, 0), (0, 0)):
        # (kT, 1, 1) kernels: each tap is a plain matmul (XLA:CPU's 1x1 conv is far slower than its dot).
        sh, sw = strides[1:]
        out = None
        for a, xa in enumerate(taps):
            y = jnp.dot(xa[:, :, ::sh, ::sw], kernel[a, 0, 0])
            out = y if out is None else out + y
        return out
    out = None
    for a, xa in enumerate(taps):
        y = jax.lax.conv_general_dilated(
            xa.reshape(b * t_out, *xa.shape[2:]), kernel[a], window_strides=strides[1:], padding=padding[1:],
            rhs_dilation=dilation[1:], dimension_numbers=_DIMENSION_NUMBERS_2D, feature_group_count=groups)
        out = y if out is None else out + y
    return out.reshape(b, t_out, *out.shape[1:])


def tied_to(leaf: jax.Array, cotangents) -> jax.Array:
    """`leaf` plus a zero computed from the incoming cotangent(s): the same values, but a new value
    for XLA that exists only once the cotangent does, so XLA cannot compute from it earlier (or CSE
    it with a forward-pass value). x * 0.0 is not folded for floats (NaN semantics), so the zero
    survives; cost: one fused add."""
    floats = [c for c in jax.tree.leaves(cotangents) if jnp.issubdtype(c.dtype, jnp.floating)]
    if not floats or not jnp.issubdtype(leaf.dtype, jnp.floating):
        return leaf
    zero = jax.lax.index_in_dim(floats[0].reshape(-1), 0, keepdims=False) * 0.0
    return leaf + zero.astype(leaf.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv3d_time2d_lax_grad(x, kernel, strides, padding, dilation, groups):
    """`conv3d_time2d`'s value; gradients from `conv3d_lax`'s (exact transposes of the same conv).
    A `jax.custom_vjp`: reverse-mode differentiation only (no `jax.jvp` / `jacfwd`)."""
    return conv3d_time2d(x, kernel, strides=strides, padding=padding, dilation=dilation, groups=groups)


def _time2d_lax_grad_fwd(x, kernel, strides, padding, dilation, groups):
    return conv3d_time2d_lax_grad(x, kernel, strides, padding, dilation, groups), (x, kernel)


def _time2d_lax_grad_bwd(strides, padding, dilation, groups, residuals, cotangent):
    x, kernel = residuals
    # Tied to the cotangent: XLA:CPU otherwise makes the kernel gradient's transposed copy of x as
    # soon as x exists, and in r3d_18's backward that copy stayed live across a whole block, one
    # layer1-sized tensor more at the memory peak (docs/performance.md, *History of the CPU figures*).
    x = tied_to(x, cotangent)
    _, vjp = jax.vjp(lambda x, k: conv3d_lax(x, k, strides=strides, padding=padding, groups=groups,
                                             dilation=dilation), x, kernel)
    return vjp(cotangent)


conv3d_time2d_lax_grad.defvjp(_time2d_lax_grad_fwd, _time2d_lax_grad_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv3d_depthwise_onednn_grad(x, kernel, strides, padding, dilation):
    """Depthwise conv: `conv3d_shift_add`'s forward (oneDNN 3.2 has no fast 3D depthwise forward), the
    backward by oneDNN, except dx of a stride-1 conv, which is the depthwise conv of the cotangent
    with the flipped kernel (shift_add again). Reverse-mode only (a `jax.custom_vjp`)."""
    return conv3d_shift_add(x, kernel, strides=strides, padding=padding, dilation=dilation)


def _depthwise_onednn_grad_fwd(x, kernel, strides, padding, dilation):
    return conv3d_depthwise_onednn_grad(x, kernel, strides, padding, dilation), (x, kernel)


def _depthwise_onednn_grad_bwd(strides, padding, dilation, residuals, cotangent):
    x, kernel = residuals
    flip_pads = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel.shape[:3], padding))
    by_flip = (strides == (1, 1, 1) and dilation == (1, 1, 1) and kernel.shape[4] == x.shape[-1]
               and min(p for pair in flip_pads for p in pair) >= 0)
    dx, dk = onednn.conv3d_onednn_grad(x, kernel, cotangent, strides=strides, padding=padding, dilation=dilation,
                                       groups=x.shape[-1], need_x=not by_flip)
    if by_flip:
        dx = conv3d_shift_add(cotangent, kernel[::-1, ::-1, ::-1], strides=strides, padding=flip_pads)
    return dx, dk


conv3d_depthwise_onednn_grad.defvjp(_depthwise_onednn_grad_fwd, _depthwise_onednn_grad_bwd)


def conv3d_im2col(x: jax.Array, kernel: jax.Array, *, padding) -> jax.Array:
    """Stride-1, ungrouped 3D conv as one matmul of the (kT*kH*kW*C_in)-wide patch matrix."""
    kt, kh, kw, cin, cout = kernel.shape
    xp = jnp.pad(x, ((0, 0), *[tuple(p) for p in padding], (0, 0)))
    t, h, w = xp.shape[1] - kt + 1, xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
    # Built one axis at a time (kW, then kH, then kT shifts): three small concatenations compile
    # faster than one with kT*kH*kW operands, and run no slower.
    patches = jnp.concatenate([xp[:, :, :, c:c + w] for c in range(kw)], axis=-1)
    patches = jnp.concatenate([patches[:, :, b:b + h] for b in range(kh)], axis=-1)
    patches = jnp.concatenate([patches[:, a:a + t] for a in range(kt)], axis=-1)
    return patches @ kernel.reshape(kt * kh * kw * cin, cout)


def conv3d_shift_add(x, kernel, *, strides, padding, dilation=(1, 1, 1)):
    """Depthwise 3D conv (groups == C_in, any channel multiplier) as shifted multiply-adds."""
    kt, kh, kw, _, cout = kernel.shape
    cin = x.shape[-1]
    if kernel.shape[3] != 1 or cout % cin:
        raise ValueError(f"conv3d_shift_add needs a depthwise kernel (kT, kH, kW, 1, m*C_in); got {kernel.shape} "
                         f"for {cin} input channels")
    mult = cout // cin
    if mult > 1:  # output channel c*mult + j reads input channel c
        x = jnp.repeat(x, mult, axis=-1)
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    out_shape = [(xp.shape[1 + i] - dilation[i] * (k - 1) - 1) // strides[i] + 1 for i, k in enumerate((kt, kh, kw))]
    if min(out_shape) < 1:
        raise ValueError(f"conv3d: input {x.shape} padded by {padding} is smaller than the kernel {kernel.shape[:3]}")
    w = kernel.reshape(kt, kh, kw, cout).astype(x.dtype)
    out = None
    for a in range(kt):
        for b in range(kh):
            for c in range(kw):
                start = (0, a * dilation[0], b * dilation[1], c * dilation[2], 0)
                limit = (xp.shape[0], *[s + (n - 1) * st + 1 for s, n, st in zip(start[1:4], out_shape, strides)],
                         cout)
                term = jax.lax.slice(xp, start, limit, (1, *strides, 1)) * w[a, b, c]
                out = term if out is None else out + term
    return out
