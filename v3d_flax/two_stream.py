"""Input modalities (RGB, TV-L1 flow, both) and the two-stream model that fuses an RGB and a flow network.

A flow or two-stream model is fed RGB clips in [0, 1] of one frame more than it sees (T + 1 frames
give T flow fields): `model_input` turns such a clip into the network's input inside the jitted
step, on the device, so an input pipeline stays RGB. Flow is OpenCV's TV-L1 (`v3d_flax.flow`),
scaled as I3D's flow stream was trained: clipped to [-20, 20] pixels, divided by 20, x then y.

    model = TwoStream(rgb=create_model("i3d", ...), flow=create_model("i3d", in_channels=2, ...))
    scores = model(model_input("two-stream", clip, normalization))["fused"]

Fusion follows the two papers: "logits" sums the streams' logits (DeepMind's I3D joint model),
"softmax" averages their class probabilities (Simonyan and Zisserman; returned as the log of the
average, so a softmax of it is that average).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from v3d_flax.flow import TVL1, i3d_flow_input, optical_flow
from v3d_flax.preprocessing import Normalization

MODALITIES = ("rgb", "flow", "two-stream")
FUSIONS = ("logits", "softmax")
STREAMS = ("rgb", "flow")
RAW = Normalization("none: frames in [0, 1] as decoded", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
# A precomputed-flow dataset's uint8 127 + 127 f / 20 (`v3d_flax.flow.quantize_flow`), read as [0, 1]:
# (v - 127/255) / (127/255) is f / 20, I3D's flow input.
FLOW_DATASET = Normalization("I3D flow from uint8 127 + 127 f / 20", (127 / 255, 127 / 255), (127 / 255, 127 / 255))


def check_modality(modality: str) -> None:
    """ValueError naming the choices when `modality` is not one of MODALITIES."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")


def check_dataset(modality: str, dataset_modality: str) -> None:
    """ValueError unless a run of `modality` can read a dataset of `dataset_modality` (its
    `DatasetInfo.modality`): precomputed flow feeds `--modality flow` only."""
    check_modality(modality)
    if dataset_modality == "flow" and modality != "flow":
        raise ValueError(f"this dataset holds precomputed flow, not RGB frames: train it with --modality flow "
                         f"(--modality {modality} needs the RGB dataset it was computed from)")


def clip_frames(modality: str, num_frames: int, dataset_modality: str = "rgb") -> int:
    """Frames to read for a model that sees `num_frames`: one more where flow is computed from RGB."""
    check_dataset(modality, dataset_modality)
    return num_frames if modality == "rgb" or dataset_modality == "flow" else num_frames + 1


def pipeline_normalization(modality: str, normalization: Normalization, dataset_modality: str = "rgb") -> Normalization:
    """What the input pipeline applies: the RGB model's own for RGB; none for flow or two streams,
    whose flow needs the frames as decoded (the RGB stream is normalised on the device); I3D's
    scaling for a precomputed-flow dataset."""
    check_dataset(modality, dataset_modality)
    if dataset_modality == "flow":
        return FLOW_DATASET
    return normalization if modality == "rgb" else RAW


def in_channels(modality: str) -> int:
    """Input channels of a single-stream network for `modality` (3 for RGB, 2 for flow)."""
    check_modality(modality)
    if modality == "two-stream":
        raise ValueError("a two-stream model has two networks: RGB (3 channels) and flow (2)")
    return 3 if modality == "rgb" else 2


def flow_input(clip: jax.Array, params: TVL1 = TVL1(), mesh: Mesh | None = None) -> jax.Array:
    """(B, T + 1, H, W, 3) RGB in [0, 1] -> (B, T, H, W, 2) I3D-scaled TV-L1 flow (no gradient flows).

    With a `mesh` whose first axis splits the batch, each device computes its own clips' flow with
    `shard_map`: TV-L1's stopping rule is per pair, and a batch-sharded loop would otherwise
    all-reduce its condition over the devices on every iteration.
    """
    def compute(c):
        return jax.lax.stop_gradient(i3d_flow_input(optical_flow(c.astype(jnp.float32), params)))

    if mesh is None or mesh.size == 1:
        return compute(clip)
    batch = P(mesh.axis_names[0])
    return jax.shard_map(compute, mesh=mesh, in_specs=batch, out_specs=batch, check_vma=False)(clip)


def model_input(modality: str, clip: jax.Array, normalization: Normalization, params: TVL1 = TVL1(),
                mesh: Mesh | None = None):
    """The network input of `modality` from an RGB clip: the clip itself for "rgb" (already normalised
    by the pipeline); for "flow" and "two-stream" the clip holds T + 1 frames in [0, 1] and this returns
    the flow input, or {"rgb": the first T frames normalised by `normalization`, "flow": the flow}
    (`flow_input` says what `mesh` is for)."""
    check_modality(modality)
    if modality == "rgb":
        return clip
    if modality == "flow":
        return flow_input(clip, params, mesh)
    return {"rgb": rgb_input(clip.astype(jnp.float32), normalization), "flow": flow_input(clip, params, mesh)}


def rgb_input(clip, normalization: Normalization):
    """The RGB stream's input from a (B, T + 1, H, W, 3) clip in [0, 1] (numpy or JAX): its first T
    frames normalised by `normalization`."""
    mean, std = np.asarray(normalization.mean, np.float32), np.asarray(normalization.std, np.float32)
    return (clip[:, :-1] - mean) / std


def input_function(modality: str, normalization: Normalization, params: TVL1 = TVL1(),
                   mesh: Mesh | None = None, dataset_modality: str = "rgb") -> Callable | None:
    """`model_input` bound to its settings, or None where the pipeline delivers the network's input
    (RGB, or a precomputed-flow dataset)."""
    check_dataset(modality, dataset_modality)
    if modality == "rgb" or dataset_modality == "flow":
        return None
    return lambda clip: model_input(modality, clip, normalization, params, mesh)


def check_fusion(fusion: str) -> None:
    """ValueError naming the choices when `fusion` is not one of FUSIONS."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")


def fuse(rgb_logits: jax.Array, flow_logits: jax.Array, fusion: str = "logits") -> jax.Array:
    """Late fusion of two streams' logits (see the module docstring)."""
    check_fusion(fusion)
    if fusion == "logits":
        return rgb_logits + flow_logits
    return jnp.log(0.5 * (jax.nn.softmax(rgb_logits, axis=-1) + jax.nn.softmax(flow_logits, axis=-1)))


class TwoStream(nnx.Module):
    """An RGB network and a flow network evaluated as one: {"rgb", "flow": their logits, "fused"}.

    Called on {"rgb": (B, T, H, W, 3) normalised clip, "flow": (B, T, H, W, 2)}, as `model_input`
    makes them. Training sums the two streams' own losses (so each stream learns as it would alone),
    and reports the fused scores.
    """

    def __init__(self, rgb: nnx.Module, flow: nnx.Module, fusion: str = "logits"):
        check_fusion(fusion)
        if getattr(flow, "in_channels", 2) != 2:
            raise ValueError(f"the flow stream must take 2 input channels, it takes {flow.in_channels}")
        self.rgb, self.flow, self.fusion = rgb, flow, fusion

    def __call__(self, inputs: dict) -> dict:
        rgb, flow = self.rgb(inputs["rgb"]), self.flow(inputs["flow"])
        return {"rgb": rgb, "flow": flow, "fused": fuse(rgb.astype(jnp.float32), flow.astype(jnp.float32),
                                                          self.fusion)}

    def data_dependent_init(self, inputs: dict) -> None:
        """The streams' own data-dependent initialisation (C3D's), each on its input."""
        for name in STREAMS:
            stream = getattr(self, name)
            if hasattr(stream, "data_dependent_init"):
                stream.data_dependent_init(inputs[name])


class TwoStreamPredictor:
    """An RGB and a flow `v3d_flax.predict.Predictor` of one model, fused per view (`fuse`).

    Its views are RGB clips in [0, 1] of one frame more than the recipe's (`predictor_views`): the RGB
    network sees the first frames normalised as its weights expect, the flow network their flow.
    """

    def __init__(self, rgb: Predictor, flow: Predictor, fusion: str = "logits"):
        if rgb.modality != "rgb" or flow.modality != "flow":
            raise ValueError(f"--two-stream needs RGB --weights and flow --flow-weights, got {rgb.modality} and "
                             f"{flow.modality} weights")
        if rgb.arch != flow.arch or rgb.spec is None:
            raise ValueError(f"the two streams must be one registered model, got {rgb.arch} and {flow.arch}")
        if rgb.recipe.pathways != 1:
            raise ValueError(f"--two-stream takes single-pathway models, not {rgb.arch}")
        self.rgb, self.flow, self.fusion = rgb, flow, fusion
        self.model, self.weights, self.spec, self.recipe = rgb.model, rgb.weights, rgb.spec, rgb.recipe
        self.normalization, self.modality = rgb.normalization, "two-stream"

    def stream_logits(self, views: np.ndarray) -> dict[str, np.ndarray]:
        """{"rgb", "flow", "fused"}: (V, num_classes) float32 logits of V views."""
        rgb = self.rgb.logits(rgb_input(views, self.normalization))
        flow = self.flow.logits(views)
        return {"rgb": rgb, "flow": flow, "fused": np.asarray(fuse(rgb, flow, self.fusion))}

    def logits(self, views: np.ndarray) -> np.ndarray:
        """(V, num_classes) float32 fused logits of V views."""
        return self.stream_logits(views)["fused"]

    def features(self, views: np.ndarray) -> np.ndarray:
        """(V, F_rgb + F_flow) float32: the two streams' features side by side, RGB first."""
        rgb = self.rgb.features(rgb_input(views, self.normalization))
        return np.concatenate([rgb, self.flow.features(views)], axis=1)
