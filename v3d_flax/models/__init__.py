"""The Flax model families, one module each; every registered model is a `VideoModel`.

This package's import stays cheap (no JAX): the family modules are imported by the registry on use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Union, runtime_checkable

if TYPE_CHECKING:  # annotations only
    import jax

    # One NDHWC clip, or a (slow, fast) pair for the two-pathway models (SlowFast).
    Clip = Union[jax.Array, tuple[jax.Array, jax.Array]]


@runtime_checkable
class VideoModel(Protocol):
    """The interface every model `v3d_flax.create_model` builds has (NDHWC clips in).

    - `in_channels`: channels of the input clips (3 for RGB; I3D's flow stream takes 2).
    - `num_features`: the width of `forward_features`' output.
    - `forward_map(x)`: the trunk's last feature map, unpooled, (B, t, h, w, C): what the head pools
      (SlowFast: the (slow, fast) pair of its pathways' maps; C3D: pool5).
    - `forward_features(x)`: (B, num_features) pooled features before dropout and the classifier.
    - `__call__(x)`: (B, num_classes) logits.

    Families add their own extras: C3D's `forward_features(x, layer="fc6")`, I3D's
    `forward_map(x, endpoint=...)` and `time_logits(x)`.
    """

    in_channels: int
    num_features: int

    def forward_map(self, x: Clip) -> jax.Array | tuple[jax.Array, jax.Array]:
        """The unpooled output of the trunk."""
        ...

    def forward_features(self, x: Clip) -> jax.Array:
        """Pooled pre-classifier features, (B, num_features)."""
        ...

    def __call__(self, x: Clip) -> jax.Array:
        """Logits, (B, num_classes)."""
        ...
