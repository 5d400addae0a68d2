"""Per-block rematerialisation (`--remat`): each block's backward pass recomputes its forward.

`apply_remat(model)` swaps the class of every block `remat_blocks` finds for a subclass whose
`__call__` goes through `_remat_apply`, a `jax.custom_vjp` that keeps only the block's input and
state for the backward pass. The module tree and its state paths stay the same, so checkpoints are
interchangeable between runs with and without it.
"""

from __future__ import annotations

from functools import partial

import jax
from flax import nnx

from v3d_flax.conv import tied_to
from v3d_flax.layers import Sequential


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
