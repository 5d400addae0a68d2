"""C3D (Tran et al. 2015), Sports-1M layout, in Flax NNX (NDHWC); names as c3d-pytorch's."""

from __future__ import annotations

import jax
from flax import nnx

from v3d_flax.layers import Conv3d, Linear, NormalInit, check_video_input, max_pool3d

# (name, in, out) of the eight 3x3x3 convs, and the pool (name, kernel = stride, padding) after a stage.
CONVS = (("conv1", 3, 64), ("conv2", 64, 128), ("conv3a", 128, 256), ("conv3b", 256, 256),
         ("conv4a", 256, 512), ("conv4b", 512, 512), ("conv5a", 512, 512), ("conv5b", 512, 512))
POOLS = {"conv1": ("pool1", (1, 2, 2), (0, 0, 0)), "conv2": ("pool2", (2, 2, 2), (0, 0, 0)),
         "conv3b": ("pool3", (2, 2, 2), (0, 0, 0)), "conv4b": ("pool4", (2, 2, 2), (0, 0, 0)),
         "conv5b": ("pool5", (2, 2, 2), (0, 1, 1))}


def pooled_shape(num_frames: int, crop_size: int) -> tuple[int, int, int]:
    """(T, H, W) after pool5 for a num_frames x crop_size x crop_size clip (convs keep the size)."""
    t, h, w = num_frames, crop_size, crop_size
    for _, kernel, pad in POOLS.values():
        t, h, w = ((n + 2 * p - k) // k + 1 for n, k, p in zip((t, h, w), kernel, pad))
    if min(t, h, w) < 1:
        raise ValueError(f"C3D needs clips of at least 16 frames and 16x16 pixels, got {num_frames}x{crop_size}x{crop_size}")
    return t, h, w


class C3D(nnx.Module):
    """Eight 3x3x3 convs with bias and ReLU, five max-pools, fc6/fc7 (4096, dropout 0.5), fc8."""

    def __init__(self, num_classes: int = 487, num_frames: int = 16, crop_size: int = 112,
                 dropout: float = 0.5, *, rngs: nnx.Rngs):
        self.num_frames, self.crop_size = num_frames, crop_size
        for name, cin, cout in CONVS:
            setattr(self, name, Conv3d(cin, cout, 3, padding=1, use_bias=True, rngs=rngs))
        t, h, w = pooled_shape(num_frames, crop_size)
        he_fan_in = NormalInit(scale=2.0, mode="fan_in")
        # torch flattens pool5's (C, T, H, W); we flatten (T, H, W, C): porting permutes fc6's columns.
        self.fc6 = Linear(512 * t * h * w, 4096, torch_input_shape=(512, t, h, w), rngs=rngs)
        self.fc7 = Linear(4096, 4096, rngs=rngs)
        for fc in (self.fc6, self.fc7):
            # set_value, not `[...] =`: under create_model the kernel is still a placeholder
            fc.kernel.set_value(he_fan_in(rngs.params(), fc.kernel.get_value().shape))
        self.fc8 = Linear(4096, num_classes, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def forward_features(self, x: jax.Array, layer: str = "fc7") -> jax.Array:
        """fc6 or fc7 activations (after ReLU, before dropout)."""
        check_video_input(x, channels=3, name="C3D", frames=self.num_frames, size=(self.crop_size, self.crop_size))
        for name, _, _ in CONVS:
            x = jax.nn.relu(getattr(self, name)(x))
            if name in POOLS:
                _, kernel, pad = POOLS[name]
                x = max_pool3d(x, kernel, kernel, pad)
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
        check_video_input(x, channels=3, name="C3D", frames=self.num_frames, size=(self.crop_size, self.crop_size))
        layers = [(getattr(self, name), name) for name, _, _ in CONVS] + [(self.fc6, "fc6"), (self.fc7, "fc7")]
        for layer, name in layers:
            if name == "fc6":
                x = x.reshape(x.shape[0], -1)
            y = layer(x)
            axes = tuple(range(y.ndim - 1))
            mean, std = y.mean(axes), y.std(axes) + 1e-6
            layer.kernel.set_value(layer.kernel.get_value() / std)
            layer.bias.set_value((layer.bias.get_value() - mean) / std)
            x = jax.nn.relu((y - mean) / std)
            if name in POOLS:
                _, kernel, pad = POOLS[name]
                x = max_pool3d(x, kernel, kernel, pad)


def c3d(*, num_classes: int = 487, num_frames: int = 16, crop_size: int = 112, dropout: float = 0.5,
        rngs: nnx.Rngs) -> C3D:
    """C3D for num_frames x crop_size x crop_size clips; fc6's fan-in follows the clip size."""
    return C3D(num_classes, num_frames, crop_size, dropout, rngs=rngs)
