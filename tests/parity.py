"""Reusable parity harness: copy random PyTorch reference weights into the Flax twin and compare.

Every architecture's parity test calls `check_parity`; it measures, at float32 precision,
eval- and train-mode outputs, BatchNorm running statistics after one train-mode forward, the
gradient of a fixed loss with respect to the input, and the Flax -> torch -> Flax round trip.

Train mode normalises with statistics of the batch itself; on the tiny clips a fast suite can
afford, a deep net's BatchNorms see few elements per channel and the float32 forward becomes
ill-conditioned: PyTorch's own float32 result then sits up to ~5e-4 (relative) from its float64
one (csn_r101, x3d_l, r2plus1d_r50). So the train-mode bound is TOL or, where larger, twice the
reference's own float32 error measured in the same test ("as exact as PyTorch itself"); the
float64 input-gradient check (GRAD_TOL) pins every train-mode formula exactly in any case.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import v3d_flax
import v3d_torch_ref
from v3d_torch_ref.blocks import StochasticDepth
from v3d_flax import port

TOL = 1e-4
GRAD_TOL = 1e-6  # float64 on both sides: any formula difference shows far above this


def rel_err(ref: np.ndarray, got: np.ndarray) -> float:
    """max |ref - got| relative to the scale (max |ref|) of the reference."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    assert ref.shape == got.shape, (ref.shape, got.shape)
    return float(np.max(np.abs(ref - got)) / max(np.max(np.abs(ref)), 1e-12))


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def ncdhw_to_ndhwc(x):
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 4, 1)))


def _torch_call(model, inputs):
    tensors = [torch.from_numpy(x) for x in inputs]
    return model(tensors if len(tensors) > 1 else tensors[0])


def _flax_inputs(inputs):
    arrays = tuple(jnp.asarray(ncdhw_to_ndhwc(x)) for x in inputs)
    return arrays if len(arrays) > 1 else arrays[0]


def _torch_train_mode(model):
    model.train()
    for m in model.modules():  # dropout cannot share RNG streams across frameworks: keep it off
        if isinstance(m, (torch.nn.Dropout, StochasticDepth)):
            m.eval()


def _flax_train_mode(model):
    model.train()
    for _, m in nnx.iter_modules(model):
        if isinstance(m, nnx.Dropout):  # transformer_layers.StochasticDepth too
            m.deterministic = True


def jitted_forward(model, x, *methods: str):
    """model.method(x) for each method, compiled as one program (eager op-by-op dispatch compiles
    every op of a big net separately, several times slower here); the model's state updates (BN
    statistics) are kept, as after one call."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, x):
        m = nnx.merge(graphdef, state)
        outs = [getattr(m, method)(x) for method in methods]
        return outs, nnx.state(m)

    outs, new_state = forward(state, x)
    nnx.update(model, new_state)
    return [np.asarray(o) for o in outs]


def eval_pair(tm, fm, inputs):
    """Eval-mode logits and features of the torch reference and its Flax twin on NCDHW `inputs` (an
    array, or a list of arrays for multi-pathway models): (ref, got, ref_features, got_features)."""
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    tm.eval()
    fm.eval()
    with torch.no_grad():
        ref = _torch_call(tm, inputs).numpy()
        ref_features = _torch_call(tm.forward_features, inputs).numpy()
    with jax.default_matmul_precision("float32"):
        got, got_features = jitted_forward(fm, _flax_inputs(inputs), "__call__", "forward_features")
    return ref, got, ref_features, got_features


def head_pair(tm, fm, maps, first_block: int):
    """Eval-mode logits of `blocks[first_block:]` (the head alone) of the torch reference and its Flax
    twin on NCDHW final feature maps `maps` (a list for multi-pathway models): (ref, got). Tests of
    head-only options need no compiled full-network forward."""
    tm.eval()
    fm.eval()
    ref = [torch.from_numpy(m) for m in maps]
    got = tuple(jnp.asarray(ncdhw_to_ndhwc(m)) for m in maps)
    ref, got = (ref, got) if len(maps) > 1 else (ref[0], got[0])
    with torch.no_grad():
        for block in list(tm.blocks)[first_block:]:
            ref = block(ref)
    with jax.default_matmul_precision("float32"):
        for block in list(fm.blocks)[first_block:]:
            got = block(got)
    return ref.numpy(), np.asarray(got)


def input_gradient_error(tm, fm, inputs, weights) -> float:
    """Train-mode gradient of sum(logits * weights) w.r.t. the input, Flax vs torch, both in float64.

    Float64 on both sides makes this an exact check of every backward formula (BN's included):
    in float32 the input gradient of a deep randomly initialised net is ill-conditioned, and
    PyTorch's own float32 gradient sits 1e-5..1e-2 (relative L2) from its float64 one.
    """
    tm64 = copy.deepcopy(tm).double()
    _torch_train_mode(tm64)
    tensors = [torch.from_numpy(x.astype(np.float64)).requires_grad_(True) for x in inputs]
    out = tm64(tensors if len(tensors) > 1 else tensors[0])
    (out * torch.from_numpy(weights)).sum().backward()
    _flax_train_mode(fm)
    graphdef, state = nnx.split(fm)
    with jax.enable_x64(True):
        # cast on the host: an eager astype compiles one tiny program per weight shape
        state64 = jax.tree.map(lambda a: np.asarray(a, np.float64) if a.dtype == jnp.float32 else a, nnx.as_pure(state))
        xs = tuple(jnp.asarray(ncdhw_to_ndhwc(x.astype(np.float64))) for x in inputs)

        def loss(xs, state):
            return jnp.sum(nnx.merge(graphdef, state)(xs if len(xs) > 1 else xs[0]) * weights)

        # forward and backward as one compiled program (grad of a jitted loss compiles two)
        grads = jax.jit(jax.grad(loss))(xs, state64)
        return max(rel_err(ncdhw_to_ndhwc(t.grad.numpy()), np.asarray(g)) for t, g in zip(tensors, grads))


@dataclass
class ParityReport:
    errors: dict[str, float] = field(default_factory=dict)
    # PyTorch's own float32 error against its float64 result, for the train-mode checks
    reference_f32_errors: dict[str, float] = field(default_factory=dict)

    @property
    def worst(self) -> float:
        return max(self.errors.values())

    def bound(self, what: str, tol: float) -> float:
        """The bound `what` is held to (see the module docstring)."""
        if what == "input_grad_f64":
            return GRAD_TOL
        return max(tol, 2 * self.reference_f32_errors.get(what, 0.0))


def flax_model_without_init(name: str, *, num_classes: int, seed: int = 0, **kwargs) -> nnx.Module:
    """The Flax model of `name` built without running its initialisers (eagerly, each weight shape
    compiles its own random-init program: 10-15 s for the big nets), for tests that load every
    weight from a reference right after: float variables are NaN, so one the port leaves out
    poisons the outputs and the round trip instead of passing unnoticed."""
    abstract = nnx.eval_shape(lambda: v3d_flax.create_model(name, num_classes=num_classes, rngs=nnx.Rngs(seed),
                                                            **kwargs))
    return nan_like(abstract, seed)


def nan_like(model: nnx.Module, seed: int = 0) -> nnx.Module:
    """A model of `model`'s structure (abstract or concrete) with NaN float variables (see above)."""
    graphdef, state = nnx.split(model)

    def materialise(leaf):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # dropout streams need real keys
            return jax.random.split(jax.random.key(seed), leaf.shape) if leaf.shape else jax.random.key(seed)
        fill = np.nan if np.issubdtype(leaf.dtype, np.floating) else 0
        return jnp.asarray(np.full(leaf.shape, fill, leaf.dtype))

    return nnx.merge(graphdef, jax.tree.map(materialise, state))


def build_pair(name: str, *, num_classes: int = 10, seed: int = 0, **kwargs):
    """A torch reference with random weights and BN statistics, and its Flax twin loaded from it."""
    torch.manual_seed(seed)
    tm = v3d_torch_ref.create_model(name, num_classes=num_classes, **kwargs)
    randomize_batchnorm(tm, seed)
    fm = flax_model_without_init(name, num_classes=num_classes, seed=seed + 1, **kwargs)
    port.from_torch(fm, tm.state_dict())
    return tm, fm


def check_parity(name: str, input_shapes, *, num_classes: int = 10, seed: int = 0, tol: float = TOL,
                 **kwargs) -> ParityReport:
    """Run every parity check for model `name` on NCDHW inputs of `input_shapes`; assert each within tol."""
    if isinstance(input_shapes[0], int):
        input_shapes = [input_shapes]
    rng = np.random.RandomState(seed)
    inputs = [rng.randn(*s).astype(np.float32) for s in input_shapes]
    tm, fm = build_pair(name, num_classes=num_classes, seed=seed, **kwargs)
    report = ParityReport()
    with jax.default_matmul_precision("float32"):
        ref, got, ref_features, got_features = eval_pair(tm, fm, inputs)
        report.errors["eval_output"] = rel_err(ref, got)
        report.errors["eval_features"] = rel_err(ref_features, got_features)

        # train mode: output, then the BN running statistics both updated; the float64 reference
        # measures how far PyTorch's own float32 result is from exact (see the module docstring)
        tm64 = copy.deepcopy(tm).double()
        _torch_train_mode(tm)
        _torch_train_mode(tm64)
        _flax_train_mode(fm)
        with torch.no_grad():
            ref = _torch_call(tm, inputs).numpy()
            ref64 = _torch_call(tm64, [x.astype(np.float64) for x in inputs]).numpy()
        got_train, = jitted_forward(fm, _flax_inputs(inputs), "__call__")
        report.errors["train_output"] = rel_err(ref, got_train)
        report.reference_f32_errors["train_output"] = rel_err(ref64, ref)
        ref_state, ref64_state = tm.state_dict(), tm64.state_dict()
        got_state = port.to_torch(fm)
        stats = [k for k in ref_state if k.endswith(("running_mean", "running_var"))]
        if stats:
            report.errors["bn_running_stats"] = max(rel_err(ref_state[k].numpy(), got_state[k].numpy()) for k in stats)
            report.reference_f32_errors["bn_running_stats"] = max(
                rel_err(ref64_state[k].numpy(), ref_state[k].numpy()) for k in stats)
            counts = {k for k in ref_state if k.endswith("num_batches_tracked")}
            assert all(int(ref_state[k]) == int(got_state[k]) for k in counts)

    # round trip Flax -> torch -> Flax is bit-exact, and the reference loads it strictly
    exported = port.to_torch(fm)
    tm.load_state_dict(exported, strict=True)
    fresh = nan_like(fm, seed + 7)
    port.from_torch(fresh, exported)
    for (pa, a), (pb, b) in zip(nnx.to_flat_state(nnx.state(fm)), nnx.to_flat_state(nnx.state(fresh))):
        if isinstance(a, (nnx.Param, nnx.BatchStat)):
            assert pa == pb and np.array_equal(np.asarray(a.get_value()), np.asarray(b.get_value())), f"round trip changed {pa}"
    for k, v in port.to_torch(fresh).items():
        assert torch.equal(v, exported[k]), f"round trip changed {k}"

    report.errors["input_grad_f64"] = input_gradient_error(tm, fm, inputs, rng.randn(inputs[0].shape[0], num_classes))
    if os.environ.get("V3D_PARITY_REPORT"):  # a JSON line per model, for tables of measured errors
        with open(os.environ["V3D_PARITY_REPORT"], "a") as fh:
            fh.write(json.dumps({"model": name, "inputs": [list(s) for s in input_shapes], **report.errors,
                                 "reference_f32": report.reference_f32_errors}) + "\n")
    for what, err in report.errors.items():
        bound = report.bound(what, tol)
        assert err <= bound, (f"{name}: {what} relative error {err:.3g} > {bound:.3g} ({report.errors}; "
                              f"PyTorch's own float32 error: {report.reference_f32_errors})")
    return report
