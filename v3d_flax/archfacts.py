"""Framework-free facts shared across the families: the 3D conv formulations' names and the building
blocks' channel rules (`v3d_flax.blocks`, `v3d_torch_ref.blocks`).

A family's own tables and rules live in its record module, `v3d_flax/records/<family>.py`. This
module imports neither JAX nor PyTorch, so command-line parsers can use it.
"""

from __future__ import annotations


def midplanes(inplanes: int, planes: int, kernel: int = 3) -> int:
    """(2+1)D mid channels matching a full kernel^3 conv's parameters (torchvision's formula)."""
    return (inplanes * planes * kernel ** 3) // (inplanes * kernel ** 2 + kernel * planes)


def conv_param_counts(in_channels: int, out_channels: int, kernel: int = 3) -> dict[str, int]:
    """Weights of a 2D (frame-by-frame), a 3D and a (2+1)D conv between the same channel counts."""
    mid = midplanes(in_channels, out_channels, kernel)
    return {
        "2d": in_channels * out_channels * kernel ** 2,
        "3d": in_channels * out_channels * kernel ** 3,
        "(2+1)d": in_channels * mid * kernel ** 2 + mid * out_channels * kernel,
    }


# The formulations `v3d_flax.conv.conv3d` implements: "auto" picks per backend and shape, the others
# force one where it applies.
CONV_IMPLS = ("auto", "xla", "lax", "time2d", "time2d_lax_grad", "im2col", "shift_add", "onednn")


def check_conv_impl(name: str, where: str = "conv impl") -> str:
    """`name` when it is one of `CONV_IMPLS`; otherwise a ValueError naming `where` and the choices."""
    if name not in CONV_IMPLS:
        raise ValueError(f"{where}: unknown conv implementation {name!r}; expected one of {', '.join(CONV_IMPLS)}")
    return name


# The state_dict suffixes of a PyTorch BatchNorm, as a regex group (for key rules).
BATCHNORM_KEYS = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
