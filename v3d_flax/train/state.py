"""Model construction for training, the optimizer, and the pure training state.

The model is split once into static graph definitions (one for train mode, one for eval mode) and
a pure state: `{"params": ..., "rest": ..., "opt_state": ...}` whose leaves are plain arrays
(`nnx.as_pure`). "rest" holds everything that is not a parameter: BatchNorm statistics and the
dropout RNG streams, so checkpointing it checkpoints the RNG state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from v3d_flax.conv import tied_to
from v3d_flax.layers import BatchNorm, Sequential
from v3d_flax.registry import create_model, model_spec

PMAP_AXIS = "batch"


def build_model(name: str, *, num_classes: int, num_frames: int, crop_size: int, seed: int,
                remat: bool = False, bn_axis_name: str | None = None, dropout: float | None = None) -> nnx.Module:
    """`create_model(name)`, passing the clip size where its record says the model follows it (C3D); optional
    per-block rematerialisation, cross-replica BatchNorm (for pmap) and a dropout rate for every
    dropout layer (None keeps the model's own)."""
    model = create_model(name, num_classes=num_classes, rngs=nnx.Rngs(seed),
                         **model_spec(name).size_kwargs(num_frames, crop_size))
    for _, module in nnx.iter_modules(model):
        if bn_axis_name is not None and isinstance(module, BatchNorm):
            module.axis_name = bn_axis_name
        if dropout is not None and isinstance(module, nnx.Dropout):
            module.rate = dropout
    if remat:
        apply_remat(model)
    return model


_REMAT_CLASSES: dict[type, type] = {}


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _remat_apply(graphdef, state, args):
    """(outputs, new non-parameter state) of the module `graphdef` + `state` called on `args`;
    its backward pass recomputes the forward from (state, args) instead of storing activations."""
    module = nnx.merge(graphdef, state)
    outputs = type(module).plain_call(module, *args)  # the block's own __call__, not the remat one
    return outputs, nnx.as_pure(nnx.state(module, nnx.Not(nnx.Param)))


def _remat_fwd(graphdef, state, args):
    return _remat_apply(graphdef, state, args), (state, args)


def _remat_bwd(graphdef, residuals, cotangents):
    # The new BatchNorm statistics and RNG counters are outputs nothing differentiates (the loss
    # reads the logits only), so only the outputs' cotangent is pulled back.
    state, args = residuals
    out_cotangent = cotangents[0]
    # XLA:CPU removes `jax.checkpoint`'s optimization barriers early, so CSE would merge this
    # recomputation back into the forward pass and remat would save nothing; tied to the
    # cotangent, it can be neither merged nor scheduled before its backward step.
    args = jax.tree.map(lambda a: tied_to(a, out_cotangent), args)
    _, pullback = jax.vjp(lambda s, a: _remat_apply.fun(graphdef, s, a)[0], state, args)
    return pullback(out_cotangent)


_remat_apply.defvjp(_remat_fwd, _remat_bwd)


def _remat_class(cls: type) -> type:
    """A subclass of `cls` whose __call__ recomputes its activations in the backward pass."""
    if cls not in _REMAT_CLASSES:
        def __call__(self, *args):
            graphdef, state = nnx.split(self)
            outputs, new_state = _remat_apply(graphdef, nnx.as_pure(state), args)
            nnx.update(self, new_state)
            return outputs

        _REMAT_CLASSES[cls] = type(f"Remat{cls.__name__}", (cls,), {"__call__": __call__, "plain_call": cls.__call__,
                                                                   "__module__": cls.__module__})
    return _REMAT_CLASSES[cls]


def _has_params(module: nnx.Module) -> bool:
    return len(nnx.to_flat_state(nnx.state(module, nnx.Param))) > 0


def _is_composite(module: nnx.Module) -> bool:
    return any(isinstance(c, nnx.Module) for _, c in nnx.iter_children(module))


def _block_list(module: nnx.Module) -> bool:
    """Whether `module` is a list of blocks: a Sequential/List whose parameter-holding items are all
    composite (a ResNet stage, PyTorchVideo's `blocks`), not a conv -> BN -> ReLU chain."""
    if not isinstance(module, (Sequential, nnx.List)):
        return False
    items = [m for m in module if isinstance(m, nnx.Module) and _has_params(m)]
    return bool(items) and all(_is_composite(m) for m in items)


def remat_blocks(model: nnx.Module) -> list[nnx.Module]:
    """The blocks `--remat` checkpoints, found without knowing the model: each parameter-holding
    child of the model, where a list of blocks (a ResNet stage) and a module that holds one (a
    PyTorchVideo stage, a SlowFast pathway pair) are replaced by the blocks inside, recursively."""
    blocks = []
    for _, child in nnx.iter_children(model):
        if not isinstance(child, nnx.Module) or not _has_params(child):
            continue
        if _block_list(child) or any(_block_list(c) for _, c in nnx.iter_children(child)
                                     if isinstance(c, nnx.Module)):
            blocks.extend(remat_blocks(child))
        else:
            blocks.append(child)
    return blocks


def apply_remat(model: nnx.Module) -> int:
    """Rematerialise every block in place; the module tree and its state paths are unchanged (the
    block's class is swapped for a subclass), so checkpoints are interchangeable with and without."""
    blocks = remat_blocks(model)
    for block in blocks:
        block.__class__ = _remat_class(type(block))
    return len(blocks)


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


def make_data_init(defs: ModelDefs):
    """A pure `(params, rest, video) -> params` running the model's `data_dependent_init` on `video`
    (models without normalisation layers define it; see `v3d_flax.models.c3d`)."""

    def data_init(params, rest, video):
        model = nnx.merge(defs.eval, params, rest)
        model.data_dependent_init(video)
        return nnx.as_pure(nnx.state(model, nnx.Param))

    return data_init


def count_params(params) -> int:
    """Number of scalars in a parameter tree."""
    return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def is_key(x) -> bool:
    """Whether `x` is a typed PRNG key array (or its abstract shape)."""
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
