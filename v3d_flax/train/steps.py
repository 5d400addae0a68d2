"""Pure training and evaluation steps, un-compiled (`v3d_flax.train.parallel` compiles them).

`train_step(state, batch) -> (state, metrics)` merges the train-mode graph definition with the
pure state, runs forward and backward, applies the optimizer and returns the new pure state. Under
`jax.jit` with a batch-sharded input and replicated state, XLA inserts the gradient and BatchNorm
reductions; under `jax.pmap` they are explicit (`pmean` over `axis_name`).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

COMPUTE_DTYPES = {"fp32": jnp.float32, "fp32-highest": jnp.float32, "bf16": jnp.bfloat16}
# "fp32-highest": every matrix product and convolution in full float32, where "fp32" lets the backend
# choose (TF32 on NVIDIA Ampere and later, bf16 passes on TPU; full float32 on CPU either way).
MATMUL_PRECISIONS = {"fp32-highest": "highest"}


def with_matmul_precision(step: Callable, precision: str) -> Callable:
    """`step`, traced under `jax.default_matmul_precision` where `precision` asks for one."""
    level = MATMUL_PRECISIONS.get(precision)
    if level is None:
        return step

    @functools.wraps(step)
    def traced_at_precision(*args, **kwargs):
        with jax.default_matmul_precision(level):
            return step(*args, **kwargs)

    return traced_at_precision


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Per-example 1.0 where fewer than `k` classes score above the label's logit (top-k hit).

    Written as a comparison and a sum rather than `lax.top_k`, which the SPMD partitioner cannot
    split over the batch and would all-gather the logits for.
    """
    label_logit = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)
    rank = jnp.sum(logits > label_logit, axis=-1)
    return (rank < k).astype(jnp.float32)


def model_inputs(batch: dict, dtype, input_fn: Callable | None = None):
    """The model's input from a batch: `input_fn(batch["video"])` (flow computed on the device, see
    `v3d_flax.two_stream.input_function`) or the clip itself, cast to the compute dtype."""
    x = batch["video"] if input_fn is None else input_fn(batch["video"])
    return jax.tree.map(lambda a: a.astype(dtype), x)


def scores_and_loss(outputs, targets):
    """(logits to score, loss) of a model's output: a single network's logits, or a two-stream
    model's {"rgb", "flow", "fused"}, trained on the sum of the streams' own losses and scored fused."""
    if isinstance(outputs, dict):
        loss = sum(optax.softmax_cross_entropy(outputs[k].astype(jnp.float32), targets).mean()
                   for k in outputs if k != "fused")
        return outputs["fused"].astype(jnp.float32), loss
    logits = outputs.astype(jnp.float32)
    return logits, optax.softmax_cross_entropy(logits, targets).mean()


def make_train_step(defs, tx: optax.GradientTransformation, schedule: optax.Schedule, *, num_classes: int,
                    label_smoothing: float, precision: str, grad_accum: int = 1,
                    axis_name: str | None = None, input_fn: Callable | None = None) -> Callable:
    """The un-compiled pure training step (see the module docstring); `input_fn` makes the model's
    input from the batch's clips (`model_inputs`)."""
    dtype = COMPUTE_DTYPES[precision]

    def train_step(state: dict, batch: dict):
        x = model_inputs(batch, dtype, input_fn)
        labels = batch["label"]
        targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)

        def loss_fn(params):
            model = nnx.merge(defs.train, params, state["rest"])
            logits, loss = scores_and_loss(model(x), targets)
            return loss, (logits, nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param))))

        (loss, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        top1 = topk_correct(logits, labels, 1).mean()
        top5 = topk_correct(logits, labels, 5).mean()
        if axis_name is not None:
            grads, loss, top1, top5 = jax.lax.pmean((grads, loss, top1, top5), axis_name)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        opt_step = _optimizer_count(state["opt_state"], grad_accum)  # the update this step applies
        metrics = {"loss": loss, "top1": top1, "top5": top5, "grad_norm": optax.tree.norm(grads),
                   "update_norm": optax.tree.norm(updates), "lr": schedule(opt_step)}
        return {"params": params, "rest": rest, "opt_state": opt_state}, metrics

    return with_matmul_precision(train_step, precision)


def _optimizer_count(opt_state, grad_accum: int) -> jax.Array:
    """Completed optimizer updates, read from the optimizer state (MultiSteps counts its own)."""
    if grad_accum > 1:
        return opt_state.gradient_step
    has_count = lambda s: isinstance(getattr(s, "count", None), jax.Array)  # noqa: E731 (not tuple.count)
    counts = [s.count for s in jax.tree.leaves(opt_state, is_leaf=has_count) if has_count(s)]
    return counts[0] if counts else jnp.zeros((), jnp.int32)


def make_eval_step(defs, *, precision: str, input_fn: Callable | None = None) -> Callable:
    """The un-compiled pure evaluation step: float32 logits of a batch in eval mode (a two-stream
    model's: {"rgb", "flow", "fused"})."""
    dtype = COMPUTE_DTYPES[precision]

    def eval_step(state: dict, batch: dict):
        model = nnx.merge(defs.eval, state["params"], state["rest"])
        return jax.tree.map(lambda a: a.astype(jnp.float32), model(model_inputs(batch, dtype, input_fn)))

    return with_matmul_precision(eval_step, precision)
