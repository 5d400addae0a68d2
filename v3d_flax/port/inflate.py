"""2D -> 3D inflation (I3D, Carreira & Zisserman 2017): start a video network from an image network.

Each 2D conv kernel (O, I, kH, kW) becomes (O, I, kT, kH, kW) by repeating it kT times along time and
dividing by kT, so on a clip of one repeated frame every inflated conv gives the 2D conv's response
(away from the temporal zero padding at the clip's ends). BatchNorm and the classifier copy as they
are. Which 2D key feeds which 3D key is data: the model's record holds, per inflation source, its rename
rules (`ModelSpec.key_rules`); its classifier's keys (`ModelSpec.classifier`) are left out with
`head=False`, for a 3D model with another number of classes. The inflation sources are entries of `v3d_flax.port.sources`
(kind "inflate_2d"), which also say which models each serves.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from v3d_flax.port.core import PortError, PortReport, from_torch, summarize_keys, torch_shapes
from v3d_flax.port.sources import KeyRule, get_source, list_sources

# the inflation sources' names before they joined one registry with the key maps (where "torchvision"
# is the video models' naming)
FORMER_NAMES = {"torchvision": "imagenet-2d"}


def _entry(source: str, arch: str | None) -> tuple[list[KeyRule], str]:
    """(the model record's inflation table for `source`, the regex of its classifier's keys)."""
    from v3d_flax.registry import list_models, model_spec

    source = FORMER_NAMES.get(source, source)
    inflating = [name for name in list_sources() if get_source(name).kind == "inflate_2d"]
    if source not in inflating:
        raise ValueError(f"unknown inflation source {source!r}; known: {', '.join(inflating)}")
    found = get_source(source)
    if arch not in list_models() or source not in model_spec(arch).key_rules:
        raise ValueError(f"inflation source {source!r} has no table for model {arch!r} (set model.arch, as "
                         f"create_model does); it covers: {', '.join(found.models())}")
    spec = model_spec(arch)
    return list(spec.key_rules[source]), re.escape(spec.classifier) + r"\..*"


def rename_2d(state_dict_2d: Mapping[str, Any], rules: list[KeyRule]) -> tuple[dict[str, Any], list[str]]:
    """({3D key: (2D key, 2D value)}, the 2D keys no rule maps): `rules` applied to each key, the keys a
    rule maps to None left out. Values are not inflated."""
    compiled = [(re.compile(p), r) for p, r in rules]
    renamed, unmapped = {}, []
    for key, value in state_dict_2d.items():
        rule = next(((p, r) for p, r in compiled if p.fullmatch(key)), None)
        if rule is None:
            unmapped.append(key)
        elif rule[1] is not None:  # None: a tensor the 3D model has no use for
            renamed[rule[0].sub(rule[1], key)] = (key, value)
    return renamed, unmapped


def inflated_names(state_dict_2d: Mapping[str, Any], source: str, arch: str) -> dict[str, Any]:
    """The 2D state_dict under the 3D model's torch key names (2D shapes, nothing inflated; unmapped keys
    left out): what the checkpoint holds for each key of `arch`, e.g. its classifier's size."""
    renamed, _ = rename_2d(state_dict_2d, _entry(source, arch)[0])
    return {new: value for new, (_, value) in renamed.items()}


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    return np.array(value)


def inflate_kernel(kernel_2d: np.ndarray, time: int) -> np.ndarray:
    """(O, I, kH, kW) -> (O, I, time, kH, kW): the kernel repeated over time, divided by `time`."""
    kernel_2d = np.asarray(kernel_2d)
    if kernel_2d.ndim != 4 or time < 1:
        raise ValueError(f"expected a 4-D (O, I, kH, kW) kernel and time >= 1, got {kernel_2d.shape} and {time}")
    return np.repeat(kernel_2d[:, :, None], time, axis=2) / np.asarray(time, kernel_2d.dtype)


def _target_of(mismatch: str) -> str:
    """The 3D key of a mismatch entry "2D key -> 3D key (2D shape, model shape)"."""
    return mismatch.split(" -> ")[1].split(" ")[0]


def inflate_state_dict(state_dict_2d: Mapping[str, Any], targets: Mapping[str, tuple[int, ...]],
                       rules: list[KeyRule], *, head_regex: str | None = None, head: bool = True,
                       strict: bool = True) -> tuple[dict[str, np.ndarray], PortReport]:
    """(the 3D state_dict (numpy, our torch reference's keys) that `targets` (key -> shape) asks for, the
    report of what does not fit).

    Every 2D key must be renamed by `rules` (or dropped by a None rule); every target key must be
    fed, except the classifier keys (`head_regex`) when `head=False`. With `strict`, problems raise
    PortError listing all of them; otherwise the state_dict holds what fits.
    """
    head_re = re.compile(head_regex) if head_regex else None
    renamed, unmapped = rename_2d(state_dict_2d, rules)
    out: dict[str, np.ndarray] = {}
    unexpected, mismatched = [], []
    for new, (key, value) in renamed.items():
        if not head and head_re is not None and head_re.fullmatch(new):
            continue
        if new not in targets:
            unexpected.append(f"{key} -> {new}")
            continue
        value, shape = _numpy(value), tuple(targets[new])
        if value.ndim == 4 and len(shape) == 5 and value.shape == shape[:2] + shape[3:]:
            value = inflate_kernel(value, shape[2])
        elif value.ndim == 2 and len(shape) == 5 and value.shape == shape[:2] and shape[2:] == (1, 1, 1):
            value = value.reshape(shape)  # a Linear classifier onto a 1x1x1 conv head (I3D's logits)
        if value.shape != shape:
            mismatched.append(f"{key} -> {new} (2D {value.shape}, model {shape})")
            continue
        out[new] = value
    missing = [k for k in targets if k not in out and not k.endswith("num_batches_tracked")
               and not (not head and head_re is not None and head_re.fullmatch(k))
               and k not in {_target_of(m) for m in mismatched}]
    report = PortReport(missing=missing, unexpected=unmapped + unexpected, mismatched=mismatched)
    problems = []
    for what, keys in (("2D keys no rule maps", unmapped), ("keys the model lacks", unexpected),
                       ("mis-shaped keys", mismatched), ("model keys the 2D state_dict does not give", missing)):
        if keys:
            problems.append(f"{what} ({len(keys)}): {summarize_keys(keys)}")
    if problems and strict:
        if head and head_re is not None and any(head_re.fullmatch(_target_of(m)) for m in mismatched):
            problems.append("the classifier has another number of classes: pass head=False to keep the "
                            "model's own classifier")
        raise PortError("cannot inflate the 2D state_dict: " + "; ".join(problems), report)
    return out, report


def inflate_2d(model3d: nnx.Module, state_dict_2d: Mapping[str, Any], *, source: str = "imagenet-2d",
               head: bool = True, strict: bool = True) -> PortReport:
    """Load a 2D image network's state_dict into the 3D `model3d` in place, inflating its kernels.

    `source` picks the table in `INFLATE_MAPS` for `model3d.arch` (set by `create_model`), e.g. a
    torchvision ResNet-50 into i3d_r50 / slow_r50 / c2d_r50 ("torchvision", its former name, is
    accepted). With `head=False` the 2D classifier is not copied and the model keeps its own (for
    another number of classes; its keys are reported missing). With `strict` (all or nothing), any
    problem raises a PortError naming every offending key and the model is untouched; otherwise what
    fits is loaded and the returned report lists the rest.
    """
    rules, head_regex = _entry(source, getattr(model3d, "arch", None))
    targets = torch_shapes(model3d)
    state, report = inflate_state_dict(state_dict_2d, targets, rules, head_regex=head_regex, head=head,
                                       strict=strict)
    loaded = from_torch(model3d, state, source="v3d", strict=strict and head)
    misshaped = {_target_of(m) for m in report.mismatched}
    return PortReport(missing=[k for k in loaded.missing if k not in misshaped], unexpected=report.unexpected,
                      mismatched=report.mismatched)
