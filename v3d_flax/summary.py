"""Model summary: parameters, MACs and XLA FLOPs of every registered model at its canonical clip.

    python -m v3d_flax.summary [--models r3d_18 c3d ...] [--no-xla] [--num-classes 400]

MACs follow fvcore's convention, the one torchvision, PyTorchVideo and the X3D/SlowFast papers
quote as "GFLOPs": every conv counts out_elements x C_in/groups x kernel volume, padded taps
included, plus the linear layers; BN, activations and pooling are not counted. They are read off
the traced forward pass (its convolutions and matrix products), with every `Conv3d` set to XLA's
native conv so that each conv is one convolution there. XLA's count (`cost_analysis()["flops"]`)
is 2 FLOPs per multiply-add and skips padded taps, so it comes out a little under 2 x MACs.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

import jax
import jax.extend.core
import jax.numpy as jnp
from flax import nnx

from v3d_flax.archfacts import conv_param_counts, midplanes
from v3d_flax.layers import set_conv_impl
from v3d_flax.registry import abstract_model, list_models, model_spec

@dataclass
class ModelSummary:
    name: str
    clip: tuple[int, int, int]
    num_classes: int
    params: int
    macs: int
    xla_flops: float | None


def example_input(name: str, clip: tuple[int, int, int], batch: int = 1, in_channels: int = 3):
    """A ShapeDtypeStruct (or a (slow, fast) pair for two-pathway models) for `name` at `clip`."""
    shapes = model_spec(name).input_shapes(clip, batch=batch, in_channels=in_channels)
    inputs = tuple(jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes)
    return inputs if len(inputs) > 1 else inputs[0]


def count_macs(jaxpr: jax.extend.core.Jaxpr | jax.extend.core.ClosedJaxpr) -> int:
    """fvcore MACs of a traced computation: each convolution's output elements x its kernel's
    input channels (C_in / groups) x kernel volume, padded taps included, plus each matrix
    product's output elements x its contracted size; nested jaxprs (jit, remat, custom
    derivatives, scans) are counted where they are called."""
    if isinstance(jaxpr, jax.extend.core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            kernel = eqn.invars[1].aval.shape
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, *spatial)
            per_output = math.prod(kernel[d] for d in rhs_spec[1:])
            total += math.prod(eqn.outvars[0].aval.shape) * per_output
        elif name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contracting)
        elif name in ("cond", "while"):
            raise ValueError(f"count_macs: cannot count MACs through a {name!r} (data-dependent control flow)")
        else:
            repeats = eqn.params.get("length", 1) if name == "scan" else 1
            for sub in _sub_jaxprs(eqn.params):
                total += repeats * count_macs(sub)
    return total


def _sub_jaxprs(params: dict):
    """The jaxprs among an equation's parameters (a jit's body, a custom derivative's function...)."""
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
                yield item


def count_params(model: nnx.Module) -> int:
    """Trainable parameters (BN running statistics excluded, as torchvision counts them)."""
    return sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


def summarize(name: str, *, num_classes: int = 400, clip: tuple[int, int, int] | None = None,
              xla: bool = True, **model_kwargs) -> ModelSummary:
    """Parameters, fvcore MACs (batch 1) and optionally XLA FLOPs of `name` at `clip`."""
    spec = model_spec(name)
    clip = clip or spec.clip
    model_kwargs = {**spec.size_kwargs(clip[0], clip[1]), **model_kwargs}
    # Shapes only: no weights are initialised (a forward pass on abstract arrays is all we need).
    model = abstract_model(name, num_classes=num_classes, **model_kwargs)
    model.eval()
    # XLA's own conv on every backend: one convolution per conv (CPU's "auto" splits them up)
    graphdef, state = nnx.split(set_conv_impl(model, "lax"))
    x = example_input(name, clip)

    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    macs = count_macs(jax.make_jaxpr(forward)(state, x))
    flops = None
    if xla:
        cost = jax.jit(forward).lower(state, x).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", float("nan")))
    return ModelSummary(name, clip, num_classes, count_params(model), macs, flops)


def step_flops(name: str, clip: tuple[int, int, int], batch: int, *, num_classes: int = 400) -> dict[str, float]:
    """Model FLOPs of one step of `batch` clips from the analytic count, the same on every backend:
    2 x the fvcore MACs of the forward pass for inference ("infer"), and 3 x that for a training step
    ("train": the backward pass computes two products, for the input and for the weights, per forward
    one). XLA's cost analysis is no substitute: on GPU it does not count cuDNN's convolutions."""
    forward = 2 * summarize(name, num_classes=num_classes, clip=tuple(clip), xla=False).macs * batch
    return {"infer": float(forward), "train": 3.0 * forward}


def format_table(rows: list[ModelSummary]) -> str:
    """Markdown table of the summaries, with the published figures beside ours."""
    out = ["| model | clip (T x H x W) | params | GMACs (fvcore) | XLA GFLOPs | published params / GMACs |",
           "|---|---|---:|---:|---:|---|"]
    for r in rows:
        pub = model_spec(r.name).published
        shown = pub is not None and r.num_classes == pub.num_classes
        pub_s = f"{pub.params:,} / {pub.gmacs if pub.gmacs is not None else '-'}" if shown else "-"
        xla = f"{r.xla_flops / 1e9:.2f}" if r.xla_flops is not None else "-"
        out.append(f"| {r.name} | {'x'.join(map(str, r.clip))} | {r.params:,} | {r.macs / 1e9:.2f} | {xla} | {pub_s} |")
    return "\n".join(out)


def conv_comparison_table(widths=(64, 128, 256, 512)) -> str:
    """The seed's comparison: weights of one 3x3 2D (per frame), 3x3x3 3D and (2+1)D conv, C -> C."""
    out = ["| channels | 2D 3x3 (per frame) | 3D 3x3x3 | (2+1)D 1x3x3 + 3x1x1 (mid) | 3D / 2D |",
           "|---:|---:|---:|---:|---:|"]
    for c in widths:
        p = conv_param_counts(c, c)
        out.append(f"| {c} | {p['2d']:,} | {p['3d']:,} | {p['(2+1)d']:,} ({midplanes(c, c)}) | {p['3d'] / p['2d']:.0f}x |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m v3d_flax.summary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list_models(), default=list_models(),
                        metavar="NAME", help="models to summarise (default: all registered)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classifier size (default: 400; 487 for c3d, its Sports-1M head)")
    parser.add_argument("--no-xla", action="store_true", help="skip compiling for XLA's FLOP count (faster)")
    args = parser.parse_args(argv)
    rows = []
    for name in args.models:
        n = args.num_classes or model_spec(name).num_classes
        rows.append(summarize(name, num_classes=n, xla=not args.no_xla))
        print(f"  {name}: done", file=sys.stderr, flush=True)
    print(format_table(rows))
    print("\nMACs: fvcore convention (padded taps counted, conv + linear only). XLA FLOPs: 2 per MAC, padded taps skipped.\n")
    print("2D vs 3D vs (2+1)D: weights of one conv, C -> C channels\n")
    print(conv_comparison_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
