"""Model construction for training, the optimizer, and the pure training state.

The model is split once into static graph definitions (one for train mode, one for eval mode) and
a pure state: `{"params": ..., "rest": ..., "opt_state": ...}` whose leaves are plain arrays
(`nnx.as_pure`). "rest" holds everything that is not a parameter: BatchNorm statistics and the
dropout RNG streams, so checkpointing it checkpoints the RNG state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from v3d_flax.layers import BatchNorm, set_conv_impl
from v3d_flax.registry import create_model, model_spec
from v3d_flax.train.remat import apply_remat


def build_model(name: str, *, num_classes: int, num_frames: int, crop_size: int, seed: int,
                remat: bool = False, bn_axis_name: str | None = None, dropout: float | None = None,
                conv_impl: str = "auto", modality: str = "rgb", fusion: str = "logits",
                **architecture) -> nnx.Module:
    """`create_model(name, **architecture)`, passing the clip size where its record says the model follows
    it (C3D); optional per-block rematerialisation (`v3d_flax.train.remat`), cross-replica BatchNorm over
    `bn_axis_name` (the pmap path's axis), a dropout rate for every dropout layer (None keeps the
    model's own) and the formulation of every 3D convolution (`v3d_flax.layers.set_conv_impl`).
    `modality` "flow" builds it with 2 input channels; "two-stream" builds an RGB and a flow network
    (seeds `seed` and `seed + 1`) in a `v3d_flax.two_stream.TwoStream` fused by `fusion`."""
    from v3d_flax import two_stream

    two_stream.check_modality(modality)

    def network(channels: int, network_seed: int) -> nnx.Module:
        kwargs = {**architecture, **({"in_channels": channels} if channels != 3 else {})}
        return create_model(name, num_classes=num_classes, rngs=nnx.Rngs(network_seed),
                            **model_spec(name).size_kwargs(num_frames, crop_size), **kwargs)

    if modality == "two-stream":
        model = two_stream.TwoStream(network(3, seed), network(2, seed + 1), fusion)
    else:
        model = network(two_stream.in_channels(modality), seed)
    set_conv_impl(model, conv_impl)
    for _, module in nnx.iter_modules(model):
        if bn_axis_name is not None and isinstance(module, BatchNorm):
            module.axis_name = bn_axis_name
        if dropout is not None and isinstance(module, nnx.Dropout):
            module.rate = dropout
    if remat:
        apply_remat(model)
    return model


def lr_schedule(lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    decay = optax.cosine_decay_schedule(lr, max(total_steps - warmup_steps, 1))
    if warmup_steps == 0:
        return decay
    warm = optax.linear_schedule(0.0, lr, warmup_steps)
    return optax.join_schedules([warm, decay], [warmup_steps])


def decay_mask(params) -> Any:
    """True for conv and linear kernels; False for biases and BatchNorm scale/shift (all 1-D)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def build_optimizer(config, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """SGD (momentum, Nesterov) or AdamW with warmup + cosine, clipping, masked weight decay, and
    gradient accumulation through `optax.MultiSteps` when `grad_accum > 1`."""
    schedule = lr_schedule(config.lr, config.warmup_steps, total_steps)
    parts = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip > 0 else []
    if config.optimizer == "sgd":
        if config.weight_decay:
            parts.append(optax.add_decayed_weights(config.weight_decay, mask=decay_mask))
        parts.append(optax.sgd(schedule, momentum=config.momentum, nesterov=True))
    elif config.optimizer == "adamw":
        parts.append(optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask))
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {config.optimizer!r}")
    tx = optax.chain(*parts)
    if config.grad_accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum)
    return tx, schedule


@dataclass(frozen=True)
class ModelDefs:
    """The static halves of the split model: train-mode and eval-mode graph definitions."""

    train: nnx.GraphDef
    eval: nnx.GraphDef


def split_model(model: nnx.Module) -> tuple[ModelDefs, dict]:
    """(graph definitions, {"params", "rest"}) with pure array leaves."""
    model.eval()
    eval_def, _, _ = nnx.split(model, nnx.Param, ...)
    model.train()
    train_def, params, rest = nnx.split(model, nnx.Param, ...)
    return ModelDefs(train_def, eval_def), {"params": nnx.as_pure(params), "rest": nnx.as_pure(rest)}


def init_state(model_state: dict, tx: optax.GradientTransformation) -> dict:
    """The full training state: parameters, other model state and optimizer state."""
    return {"params": model_state["params"], "rest": model_state["rest"],
            "opt_state": tx.init(model_state["params"])}


def make_data_init(defs: ModelDefs, input_fn=None):
    """A pure `(params, rest, video) -> params` running the model's `data_dependent_init` on `video`
    (models without normalisation layers define it; see `v3d_flax.models.c3d`), or on `input_fn(video)`
    (the flow a flow model sees)."""

    def data_init(params, rest, video):
        model = nnx.merge(defs.eval, params, rest)
        model.data_dependent_init(video if input_fn is None else input_fn(video))
        return nnx.as_pure(nnx.state(model, nnx.Param))

    return data_init


def count_params(params) -> int:
    """Number of scalars in a parameter tree."""
    return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def is_key(x) -> bool:
    """Whether `x` is a typed PRNG key array (or its abstract shape)."""
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
