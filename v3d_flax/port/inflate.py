"""2D -> 3D inflation (I3D, Carreira & Zisserman 2017): start a video network from an image network.

Each 2D conv kernel (O, I, kH, kW) becomes (O, I, kT, kH, kW) by repeating it kT times along time and
dividing by kT, so on a clip of one repeated frame every inflated conv gives the 2D conv's response
(away from the temporal zero padding at the clip's ends). BatchNorm and the classifier copy as they
are. Which 2D key feeds which 3D key is data: `INFLATE_MAPS[source]` lists, per model pattern, the
rename rules and the regex of the model's classifier keys (left out with `head=False`, for a 3D
model with another number of classes).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from v3d_flax.port.core import PortError, PortReport, from_torch, summarize_keys, torch_shapes
from v3d_flax.port.keymaps import KeyRule

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


def _torchvision_resnet_rules(stage_blocks: tuple[int, int, int, int], head_block: int) -> list[KeyRule]:
    """torchvision's 2D ResNet (conv1, bn1, layerN.j.{conv,bn}{1,2,3}, layerN.j.downsample.{0,1}, fc)
    onto PyTorchVideo's layout (blocks.0.{conv,norm}, blocks.i.res_blocks.j.branch2.{conv,norm}_{a,b,c},
    branch1_{conv,norm}, blocks.H.proj), the stages sitting at `stage_blocks`."""
    rules: list[KeyRule] = [(r"conv1\.weight", "blocks.0.conv.weight"), (rf"bn1\.{_BN}", r"blocks.0.norm.\1")]
    for n, b in enumerate(stage_blocks, start=1):
        for i, part in enumerate("abc", start=1):
            rules += [(rf"layer{n}\.(\d+)\.conv{i}\.weight", rf"blocks.{b}.res_blocks.\1.branch2.conv_{part}.weight"),
                      (rf"layer{n}\.(\d+)\.bn{i}\.{_BN}", rf"blocks.{b}.res_blocks.\1.branch2.norm_{part}.\2")]
        rules += [(rf"layer{n}\.(\d+)\.downsample\.0\.weight", rf"blocks.{b}.res_blocks.\1.branch1_conv.weight"),
                  (rf"layer{n}\.(\d+)\.downsample\.1\.{_BN}", rf"blocks.{b}.res_blocks.\1.branch1_norm.\2")]
    rules.append((r"fc\.(weight|bias)", rf"blocks.{head_block}.proj.\1"))
    return rules


# torchvision's GoogLeNet Inception blocks -> I3D's Mixed blocks, and branch modules -> I3D's units.
_GOOGLENET_BLOCKS = {"3a": "Mixed_3b", "3b": "Mixed_3c", "4a": "Mixed_4b", "4b": "Mixed_4c", "4c": "Mixed_4d",
                     "4d": "Mixed_4e", "4e": "Mixed_4f", "5a": "Mixed_5b", "5b": "Mixed_5c"}
_GOOGLENET_BRANCHES = {r"branch1": "b0", r"branch2\.0": "b1a", r"branch2\.1": "b1b", r"branch3\.0": "b2a",
                       r"branch3\.1": "b2b", r"branch4\.1": "b3b"}


def _torchvision_googlenet_rules() -> list[KeyRule]:
    """torchvision's GoogLeNet (conv1..3 and inceptionXY.branchN as BasicConv2d {conv, bn}, fc) onto
    I3D's (piergiaj's) names; the auxiliary classifiers aux1/aux2 are dropped."""
    units = {"conv1": "Conv3d_1a_7x7", "conv2": "Conv3d_2b_1x1", "conv3": "Conv3d_2c_3x3"}
    for block, mixed in _GOOGLENET_BLOCKS.items():
        for branch, unit in _GOOGLENET_BRANCHES.items():
            units[rf"inception{block}\.{branch}"] = f"{mixed}.{unit}"
    rules: list[KeyRule] = []
    for src, dst in units.items():
        rules += [(rf"{src}\.conv\.weight", f"{dst}.conv3d.weight"), (rf"{src}\.bn\.{_BN}", rf"{dst}.bn.\1")]
    return rules + [(r"fc\.(weight|bias)", r"logits.conv3d.\1"), (r"aux[12]\..*", None)]


# source -> [(arch fnmatch pattern, rename rules (2D key -> our 3D torch key; None drops), classifier regex)]
INFLATE_MAPS: dict[str, list[tuple[str, list[KeyRule], str]]] = {
    # torchvision.models.resnet50 (v1.5: stride on the 3x3 conv, like PyTorchVideo's conv_b).
    # c2d_r50 / i3d_r50 have a max-pool as blocks.2, so their stages sit at 1, 3, 4, 5.
    "torchvision": [
        ("c2d_r50", _torchvision_resnet_rules((1, 3, 4, 5), 6), r"blocks\.6\.proj\..*"),
        ("i3d_r50", _torchvision_resnet_rules((1, 3, 4, 5), 6), r"blocks\.6\.proj\..*"),
        ("slow_r50", _torchvision_resnet_rules((1, 2, 3, 4), 5), r"blocks\.5\.proj\..*"),
        # torchvision.models.googlenet (Inception-v1; its 3x3 "5x5" branch matches I3D's) -> i3d.
        ("i3d", _torchvision_googlenet_rules(), r"logits\.conv3d\..*"),
    ],
}


def _entry(source: str, arch: str | None) -> tuple[list[KeyRule], str]:
    if source not in INFLATE_MAPS:
        raise ValueError(f"unknown inflation source {source!r}; known: {', '.join(sorted(INFLATE_MAPS))}")
    for pattern, rules, head in INFLATE_MAPS[source]:
        if arch is not None and fnmatch.fnmatchcase(arch, pattern):
            return rules, head
    covered = ", ".join(p for p, _, _ in INFLATE_MAPS[source])
    raise ValueError(f"inflation source {source!r} has no table for model {arch!r} (set model.arch, as "
                     f"create_model does); it covers: {covered}")


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


def inflate_state_dict(state_dict_2d: Mapping[str, Any], targets: Mapping[str, tuple[int, ...]],
                       rules: list[KeyRule], *, head_regex: str | None = None,
                       head: bool = True) -> dict[str, np.ndarray]:
    """The 3D state_dict (numpy, our torch reference's keys) that `targets` (key -> shape) asks for.

    Every 2D key must be renamed by `rules` (or dropped by a None rule); every target key must be
    fed, except the classifier keys (`head_regex`) when `head=False`. Problems raise PortError
    listing all of them.
    """
    compiled = [(re.compile(p), r) for p, r in rules]
    head_re = re.compile(head_regex) if head_regex else None
    out: dict[str, np.ndarray] = {}
    unmapped, unexpected, mismatched = [], [], []
    for key, value in state_dict_2d.items():
        rule = next(((p, r) for p, r in compiled if p.fullmatch(key)), None)
        if rule is None:
            unmapped.append(key)
            continue
        if rule[1] is None:  # a tensor the 3D model has no use for
            continue
        new = rule[0].sub(rule[1], key)
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
               and not (not head and head_re is not None and head_re.fullmatch(k))]
    problems = []
    for what, keys in (("2D keys no rule maps", unmapped), ("keys the model lacks", unexpected),
                       ("mis-shaped keys", mismatched), ("model keys the 2D state_dict does not give", missing)):
        if keys:
            problems.append(f"{what} ({len(keys)}): {summarize_keys(keys)}")
    if problems:
        if head and head_re is not None and any(head_re.fullmatch(m.split(" -> ")[1].split(" ")[0])
                                                for m in mismatched):
            problems.append("the classifier has another number of classes: pass head=False to keep the "
                            "model's own classifier")
        raise PortError("cannot inflate the 2D state_dict: " + "; ".join(problems),
                        PortReport(missing=missing, unexpected=unmapped + unexpected, mismatched=mismatched))
    return out


def inflate_2d(model3d: nnx.Module, state_dict_2d: Mapping[str, Any], *, source: str = "torchvision",
               head: bool = True) -> PortReport:
    """Load a 2D image network's state_dict into the 3D `model3d` in place, inflating its kernels.

    `source` picks the table in `INFLATE_MAPS` for `model3d.arch` (set by `create_model`), e.g. a
    torchvision ResNet-50 into i3d_r50 / slow_r50 / c2d_r50. With `head=False` the 2D classifier
    is not copied and the model keeps its own (for another number of classes). All or nothing:
    on any problem a PortError names every offending key and the model is untouched.
    """
    rules, head_regex = _entry(source, getattr(model3d, "arch", None))
    targets = torch_shapes(model3d)
    state = inflate_state_dict(state_dict_2d, targets, rules, head_regex=head_regex, head=head)
    return from_torch(model3d, state, source="v3d", strict=head)
