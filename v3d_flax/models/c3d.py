"""C3D (Tran et al. 2015), Sports-1M layout, in Flax NNX (NDHWC); names as c3d-pytorch's."""

from __future__ import annotations

import jax
from flax import nnx

from v3d_flax.records.c3d import C3D_CONVS, C3D_POOLS, c3d_convs, c3d_pooled_shape
from v3d_flax.layers import Conv3d, Linear, NormalInit, check_video_input, max_pool3d


class C3D(nnx.Module):
    """Eight 3x3x3 convs with bias and ReLU, five max-pools, fc6/fc7 (4096, dropout 0.5), fc8."""

    def __init__(self, num_classes: int = 487, num_frames: int = 16, crop_size: int = 112,
                 dropout: float = 0.5, in_channels: int = 3, *, rngs: nnx.Rngs):
        self.num_frames, self.crop_size, self.in_channels = num_frames, crop_size, in_channels
        for name, cin, cout in c3d_convs(in_channels):
            setattr(self, name, Conv3d(cin, cout, 3, padding=1, use_bias=True, rngs=rngs))
        t, h, w = c3d_pooled_shape(num_frames, crop_size)
        he_fan_in = NormalInit(scale=2.0, mode="fan_in")
        # torch flattens pool5's (C, T, H, W); we flatten (T, H, W, C): porting permutes fc6's columns.
        self.fc6 = Linear(512 * t * h * w, 4096, torch_input_shape=(512, t, h, w), rngs=rngs)
        self.fc7 = Linear(4096, 4096, rngs=rngs)
        for fc in (self.fc6, self.fc7):
            # set_value, not `[...] =`: under create_model the kernel is still a placeholder
            fc.kernel.set_value(he_fan_in(rngs.params(), fc.kernel.get_value().shape))
        self.num_features = 4096
        self.fc8 = Linear(self.num_features, num_classes, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def _check(self, x: jax.Array) -> None:
        check_video_input(x, channels=self.in_channels, name="C3D", frames=self.num_frames,
                          size=(self.crop_size, self.crop_size))

    def forward_map(self, x: jax.Array) -> jax.Array:
        """pool5's map (B, t, h, w, 512) that fc6 flattens."""
        self._check(x)
        for name, _ in C3D_CONVS:
            x = jax.nn.relu(getattr(self, name)(x))
            if name in C3D_POOLS:
                _, kernel, pad = C3D_POOLS[name]
                x = max_pool3d(x, kernel, kernel, pad)
        return x

    def forward_features(self, x: jax.Array, layer: str = "fc7") -> jax.Array:
        """fc6 or fc7 activations (after ReLU, before dropout)."""
        x = self.forward_map(x)
        x = jax.nn.relu(self.fc6(x.reshape(x.shape[0], -1)))
        if layer == "fc6":
            return x
        return jax.nn.relu(self.fc7(self.dropout(x)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc8(self.dropout(self.forward_features(x)))

    def data_dependent_init(self, x: jax.Array) -> None:
        """Rescale conv1..fc7 in place so that, on the batch `x`, every channel's pre-activation has
        zero mean and unit variance (Kraehenbuehl et al. 2015, "Data-dependent initializations of
        CNNs"); fc8 keeps its small init.

        Without BatchNorm, activations of a randomly initialised C3D shrink ~15x through the eight
        convs and pool5's features barely differ between clips, so training from scratch stalls
        at chance; after this it learns at once. Under jit with a batch sharded over devices the
        statistics are those of the global batch.
        """
        self._check(x)
        layers = [(getattr(self, name), name) for name, _ in C3D_CONVS] + [(self.fc6, "fc6"), (self.fc7, "fc7")]
        for layer, name in layers:
            if name == "fc6":
                x = x.reshape(x.shape[0], -1)
            y = layer(x)
            axes = tuple(range(y.ndim - 1))
            mean, std = y.mean(axes), y.std(axes) + 1e-6
            layer.kernel.set_value(layer.kernel.get_value() / std)
            layer.bias.set_value((layer.bias.get_value() - mean) / std)
            x = jax.nn.relu((y - mean) / std)
            if name in C3D_POOLS:
                _, kernel, pad = C3D_POOLS[name]
                x = max_pool3d(x, kernel, kernel, pad)


def c3d(*, num_classes: int = 487, num_frames: int = 16, crop_size: int = 112, dropout: float = 0.5,
        in_channels: int = 3, rngs: nnx.Rngs) -> C3D:
    """C3D for num_frames x crop_size x crop_size clips; fc6's fan-in follows the clip size."""
    return C3D(num_classes, num_frames, crop_size, dropout, in_channels, rngs=rngs)
