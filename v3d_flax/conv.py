"""The 3D convolution every v3d Flax layer calls, with backend-selectable implementations.

`conv3d` takes NDHWC input, a DHWIO kernel and explicit ((lo, hi),) * 3 padding.
"""

from __future__ import annotations

import jax

_DIMENSION_NUMBERS = ("NDHWC", "DHWIO", "NDHWC")


def conv3d(x: jax.Array, kernel: jax.Array, *, strides, padding, groups: int = 1, dilation=(1, 1, 1)) -> jax.Array:
    """3D convolution, NDHWC x DHWIO -> NDHWC, padding given as three (lo, hi) pairs."""
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=tuple(strides), padding=tuple(padding), rhs_dilation=tuple(dilation),
        dimension_numbers=_DIMENSION_NUMBERS, feature_group_count=groups)
