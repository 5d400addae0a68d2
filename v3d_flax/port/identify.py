"""Which registered model a checkpoint belongs to, from its key names and shapes alone.

Each candidate's expected keys come from an abstract model (`registry.abstract_model`: shapes, no weights),
as torch keys (`torch_shapes`, after the key rules of each state_dict source of `v3d_flax.port.sources`)
or as the "/"-joined NNX paths of a Flax checkpoint. Building even an abstract model costs up to seconds, so the search
stops at the first model whose keys are the checkpoint's (`Match.complete`), and tries the model the
user named first, then one model per model file (family), entering a family whose key names (indices
aside) are the checkpoint's.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Mapping

HEAD_SLACK = 2  # mis-shaped keys a checkpoint of the very model may have: its classifier (weight, bias)


@dataclass(frozen=True)
class Match:
    """How well a checkpoint's keys fit one model (with one key source)."""

    model: str
    source: str
    common: int  # keys on both sides
    same_shape: int  # of those, keys with equal shapes
    checkpoint_keys: int
    model_keys: int

    @property
    def score(self) -> float:
        """1.0 for identical keys and shapes; half the weight on names, half on shapes, over all keys."""
        union = self.checkpoint_keys + self.model_keys - self.common
        return (self.common + self.same_shape) / (2 * union) if union else 0.0

    @property
    def complete(self) -> bool:
        """The same key names, and equal shapes except (at most) a classifier's."""
        return (self.common == self.checkpoint_keys == self.model_keys
                and self.common - self.same_shape <= HEAD_SLACK)

    def describe(self) -> str:
        """"122 of r3d_18's 122 keys": how many of the model's key names the checkpoint has."""
        return f"{self.common} of {self.model}'s {self.model_keys} keys"


@functools.lru_cache(maxsize=None)
def expected_shapes(name: str, kind: str = "torch") -> dict[str, tuple[int, ...]]:
    """The keys and shapes a checkpoint of registered model `name` has: "torch" (v3d key names) or
    "flax" ("/"-joined NNX paths of parameters and batch statistics). Cached per process."""
    from flax import nnx

    from v3d_flax.port.core import torch_shapes
    from v3d_flax.registry import abstract_model

    model = abstract_model(name, num_classes=2)
    if kind == "torch":
        return torch_shapes(model)
    state = nnx.state(model, nnx.Not(nnx.RngState))
    return {"/".join(map(str, p)): tuple(v.get_value().shape) for p, v in nnx.to_flat_state(state)}


def _sources_for(name: str, first: str | None) -> list[str]:
    """The state_dict sources that serve `name`, `first` first."""
    from v3d_flax.port.sources import SOURCES

    out = [s for s, source in SOURCES.items() if source.kind == "state_dict" and source.serves(name)]
    return sorted(out, key=lambda s: s != first)


def match_model(shapes: Mapping[str, tuple], name: str, *, kind: str = "torch", source: str | None = "v3d") -> Match:
    """How well a checkpoint of `shapes` (key -> shape) fits `name`: the best over the key sources that
    cover it (`source` wins ties); for kind "flax" the keys are NNX paths and no key map applies."""
    from v3d_flax.port.core import PortError, rename_keys

    expected = expected_shapes(name, kind)
    best = None
    for src in (_sources_for(name, source) if kind == "torch" else ["flax"]):
        try:
            keys = shapes if kind != "torch" else rename_keys(shapes, src, name)
        except (PortError, ValueError):  # the key map does not apply to these keys
            continue
        if kind == "flax":
            keys = {k: v for k, v in keys.items() if "rngs" not in k.split("/")}
        common = [k for k in keys if k in expected]
        same = sum(tuple(keys[k]) == tuple(expected[k]) for k in common)
        match = Match(name, src, len(common), same, len(keys), len(expected))
        if best is None or match.score > best.score:
            best = match
    return best or Match(name, source or "", 0, 0, len(shapes), len(expected))


def _skeleton(keys) -> set[str]:
    """Key names with indices blanked ("layer1.0.conv1.0.weight" -> "layer#.#.conv#.#.weight"): equal
    within a family of models that differ in depth."""
    return {re.sub(r"\d+", "#", k) for k in keys}


def identify_checkpoint(shapes: Mapping[str, tuple], *, kind: str = "torch", source: str | None = "v3d",
                        first: str | None = None, names: list[str] | None = None) -> Match | None:
    """The registered model (and key source) whose keys and shapes fit the checkpoint's `shapes` best,
    or None when no model shares a key with it. `first` (the model the user named) is tried first and
    wins ties; `names` limits the candidates (default: all). Stops at the first complete match."""
    from v3d_flax.registry import all_specs

    families: dict[str, list[str]] = {}
    for spec in all_specs():
        if names is None or spec.name in names:
            families.setdefault(spec.family, []).append(spec.name)
    tried: dict[str, Match] = {}

    def complete_among(members) -> Match | None:
        for name in members:
            if name not in tried:
                tried[name] = match_model(shapes, name, kind=kind, source=source)
            if tried[name].complete:
                return tried[name]
        return None

    found = complete_among([first] if first is not None else [])
    if first is not None and tried[first].common == tried[first].checkpoint_keys == tried[first].model_keys:
        # the names are all `first`'s: only a model of its own file can have them with other shapes
        families = {f: members for f, members in families.items() if first in members}
    skeleton, resemblance = _skeleton(shapes), {}
    for family, members in families.items():  # one model per family; into a family whose names fit
        found = found or complete_among(members[:1])
        if found:
            return found
        theirs = _skeleton(expected_shapes(members[0], kind))
        resemblance[family] = len(skeleton & theirs) / max(len(skeleton | theirs), 1)
        if resemblance[family] >= 0.9:
            found = complete_among(members[1:])
    top = max(resemblance.values(), default=0.0)
    for family, members in families.items():  # no family fits by names: the closest ones, in full
        if found:
            return found
        if 0.0 < top - 0.1 <= resemblance[family] < 0.9:
            found = complete_among(members[1:])
    if found:
        return found
    best = max(tried.values(), key=lambda m: m.score, default=None)  # the first of equals: `first`
    return best if best is not None and best.common else None
