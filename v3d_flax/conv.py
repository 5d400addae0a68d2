"""The 3D convolution every v3d Flax layer calls, with backend-selectable implementations.

`conv3d` takes NDHWC input, a DHWIO kernel and explicit ((lo, hi),) * 3 padding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_DIMENSION_NUMBERS = ("NDHWC", "DHWIO", "NDHWC")


def conv3d(x: jax.Array, kernel: jax.Array, *, strides, padding, groups: int = 1, dilation=(1, 1, 1)) -> jax.Array:
    """3D convolution, NDHWC x DHWIO -> NDHWC, padding given as three (lo, hi) pairs."""
    if _use_im2col(x, kernel, strides, groups, dilation):
        return conv3d_im2col(x, kernel, padding=padding)
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=tuple(strides), padding=tuple(padding), rhs_dilation=tuple(dilation),
        dimension_numbers=_DIMENSION_NUMBERS, feature_group_count=groups)


def _use_im2col(x, kernel, strides, groups, dilation) -> bool:
    """XLA:CPU's conv is pathological for tiny spatial maps (C3D's conv4/conv5: 2x2 maps ran 50x
    slower than a matmul) and for 3-channel inputs; a patch matrix times the kernel is fast there."""
    if jax.default_backend() != "cpu" or groups != 1 or tuple(dilation) != (1, 1, 1) or tuple(strides) != (1, 1, 1):
        return False
    return x.shape[2] * x.shape[3] <= 16 or x.shape[-1] <= 4


def conv3d_im2col(x: jax.Array, kernel: jax.Array, *, padding) -> jax.Array:
    """Stride-1, ungrouped 3D conv as one matmul of the (kT*kH*kW*C_in)-wide patch matrix."""
    kt, kh, kw, cin, cout = kernel.shape
    xp = jnp.pad(x, ((0, 0), *[tuple(p) for p in padding], (0, 0)))
    t, h, w = xp.shape[1] - kt + 1, xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
    patches = jnp.concatenate([xp[:, a:a + t, b:b + h, c:c + w] for a in range(kt) for b in range(kh)
                               for c in range(kw)], axis=-1)
    return patches @ kernel.reshape(kt * kh * kw * cin, cout)
