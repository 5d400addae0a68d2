"""The model registry: one record (`ModelSpec`) per model holds everything v3d knows about it.

Each family declares its records in `v3d_flax/records/<family>.py` with `register_model(...)` (with
the architecture tables both frameworks build it from), beside its Flax file
`v3d_flax/models/<family>.py`; the registry finds the record modules by listing that package, so
adding a family touches no file here. Records are plain Python (no JAX import): the
command lines read names and defaults before the heavy imports. Factories are "module:function"
strings, imported on first use.

Everything below the model layer (data, video, training, checkpoints) takes what it needs from a
record as arguments; only the command lines and the top-level functions look a record up by name.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from v3d_flax.preprocessing import Normalization, Recipe

if TYPE_CHECKING:  # annotations only
    from flax import nnx


@dataclass(frozen=True)
class Published:
    """Figures the original publisher gives for a model: parameters (an int, or millions as a float
    where only that is published) and GMACs at the canonical clip (None where not published), for a
    head of `num_classes`; `source` says where they come from."""

    params: int | float
    gmacs: float | None
    num_classes: int
    source: str


@dataclass(frozen=True)
class ModelSpec:
    """Everything known about one model.

    - `factory`: "module:function" building the Flax model (keyword arguments `num_classes`, `rngs`).
    - `clip`: canonical (frames, height, width) of its published recipe (SlowFast: the fast pathway's).
    - `recipe`, `normalization`: the publisher's test-time sampling and input normalisation.
    - `num_classes`: the head size of its reference checkpoints (400: Kinetics; C3D 487: Sports-1M).
    - `classifier`: the path of the classifier layer in the module tree ("." separated, as in the
      PyTorch state_dict); its weight's output axis is the number of classes.
    - `head_pool_kernel`: the fixed AvgPool3d window of the PyTorchVideo hub model at `clip` (one per
      pathway for SlowFast), None where the hub pools globally; our models pool globally by default.
    - `sources`: the `v3d_flax.port` checkpoint sources whose key layouts it accepts.
    - `key_rules`: per source, this model's own key rules, `(regex, replacement)` pairs from the
      publisher's names to ours (None drops a key): after a state_dict source's own rules; an
      inflation source's table (2D names onto this model's). Empty where the names are ours.
    - `clip_kwargs`: the factory arguments that follow the clip ("num_frames", "crop_size": C3D's fc6).
    - `feature_layers`: names `forward_features(x, layer=...)` takes, the first the default (empty: the
      pooled features only).
    - `cpu_defaults`: train.py settings for a CPU run that differ from the common ones.
    - `published`: the publisher's parameter / MAC counts.
    - `resize_state`: "module:function" for models whose tensors follow the clip size (position
      embeddings, relative position tables): `function(state, shapes) -> state` takes a torch-named
      state_dict of numpy arrays and the shapes (`port.torch_shapes`) of the model built for another
      clip, and returns it with those tensors interpolated to these shapes, the rest as they were; used by
      `port.from_torch(..., resize=True)` and by `create_model(..., weights=..., num_frames=..., crop_size=...)`.
    - `weights`: its pretrained checkpoints (`v3d_flax.weights.Weights`), their recipe and normalisation
      filled in from this record where they give none; `get_weights(name)` finds one.
    """

    name: str
    factory: str
    clip: tuple[int, int, int]
    recipe: Recipe
    normalization: Normalization
    classifier: str
    num_classes: int = 400
    head_pool_kernel: tuple | None = None
    sources: tuple[str, ...] = ("v3d",)
    key_rules: Mapping[str, tuple] = field(default_factory=dict)
    clip_kwargs: tuple[str, ...] = ()
    feature_layers: tuple[str, ...] = ()
    cpu_defaults: Mapping[str, Any] = field(default_factory=dict)
    published: Published | None = None
    resize_state: str | None = None
    weights: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "cpu_defaults", MappingProxyType(dict(self.cpu_defaults)))
        object.__setattr__(self, "key_rules", MappingProxyType({k: tuple(v) for k, v in self.key_rules.items()}))
        if not set(self.key_rules) <= set(self.sources):
            raise ValueError(f"{self.name}: key_rules for {sorted(set(self.key_rules) - set(self.sources))}, "
                             f"which are not among its sources {self.sources}")
        unknown = set(self.clip_kwargs) - {"num_frames", "crop_size"}
        if unknown:
            raise ValueError(f"{self.name}: clip_kwargs may name num_frames and crop_size, not {sorted(unknown)}")
        object.__setattr__(self, "weights", tuple(w.for_model(self) for w in self.weights))
        names = [w.name for w in self.weights]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: weights names repeat: {names}")

    def get_weights(self, name: str):
        """The weights record `name` (`v3d_flax.weights.Weights`); ValueError naming this model's weights."""
        from v3d_flax.weights import get_weights

        return get_weights(self.name, name)

    @property
    def family(self) -> str:
        """The module of its factory (models of one family share key names, differing in depth or widths)."""
        return self.factory.split(":")[0]

    @property
    def pathways(self) -> int:
        """1, or 2 for a (slow, fast) pair of clips (SlowFast)."""
        return self.recipe.pathways

    def size_kwargs(self, num_frames: int, crop_size: int) -> dict:
        """The factory arguments that make the model for (num_frames, crop_size) clips ({} for most)."""
        sizes = {"num_frames": num_frames, "crop_size": crop_size}
        return {k: sizes[k] for k in self.clip_kwargs}

    def input_shapes(self, clip: tuple[int, int, int] | None = None, *, batch: int = 1,
                     in_channels: int = 3) -> tuple[tuple[int, ...], ...]:
        """NDHWC shapes of one input at `clip` (default: the canonical one): one per pathway, slow first."""
        t, h, w = clip or self.clip
        if self.pathways == 2:
            return (batch, t // self.recipe.alpha, h, w, in_channels), (batch, t, h, w, in_channels)
        return ((batch, t, h, w, in_channels),)


_SPECS: dict[str, ModelSpec] = {}
_LOADED = False


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add `spec` to the registry (called by the record modules); a name can be registered once."""
    if spec.name in _SPECS and _SPECS[spec.name] != spec:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _SPECS[spec.name] = spec
    return spec


def _load_records() -> dict[str, ModelSpec]:
    global _LOADED
    if not _LOADED:
        from v3d_flax import records

        for info in sorted(pkgutil.iter_modules(records.__path__), key=lambda m: m.name):
            importlib.import_module(f"{records.__name__}.{info.name}")
        _LOADED = True
    return _SPECS


def list_models() -> list[str]:
    """Names accepted by `create_model`, sorted."""
    return sorted(_load_records())


def all_specs() -> list[ModelSpec]:
    """Every record, family by family (record modules by name), each family in its declaration order."""
    return list(_load_records().values())


def model_spec(name: str) -> ModelSpec:
    """The record of `name`; ValueError listing the names (and the closest one) otherwise."""
    specs = _load_records()
    if name not in specs:
        from v3d_flax.cli import unknown_model_message

        raise ValueError(unknown_model_message(name))
    return specs[name]


def get_factory(name: str):
    """The factory function of `name` (imports its family's module)."""
    module, attr = model_spec(name).factory.split(":")
    return getattr(importlib.import_module(module), attr)


def create_model(name: str, *, num_classes: int | None = None, rngs: nnx.Rngs | None = None, weights=None,
                 source: str | None = None, **kwargs) -> nnx.Module:
    """Build the Flax model `name` (NDHWC input, logits output) with freshly initialised weights, or
    with pretrained `weights`.

    Without `weights`, `num_classes` and `rngs` are required; the random weights are drawn in one
    jitted program (`v3d_flax.layers.build_batched`), with the values an eager build from the same
    `rngs` gives. To load a checkpoint, build the structure without any draws with `abstract_model`.

    `weights`: a weights name of the model's record ("kinetics400": `v3d_flax.list_weights(name)`),
    a `v3d_flax.weights.Weights` record, or a local checkpoint path of `source`
    (`v3d_flax.port.list_sources()`, default "v3d"); downloaded, verified and cached by
    `v3d_flax.hub.load_pretrained`, which also takes its `cache_dir=`, `offline=` and `progress=`
    here. A `num_classes` other than the checkpoint's keeps the backbone and gives a fresh head of
    that size (initialised from `rngs`, default `nnx.Rngs(0)`). The model is returned in training
    mode, as a fresh one is: call `model.eval()` for inference.
    """
    if weights is not None:
        from v3d_flax.hub import load_pretrained

        model = load_pretrained(name, weights, num_classes=num_classes, rngs=rngs, source=source, **kwargs)
        model.train()
        return model
    if source is not None:
        raise TypeError("create_model: source= names the format of a weights file; pass it with weights=<path>")
    if num_classes is None or rngs is None:
        raise TypeError(f"create_model({name!r}) needs num_classes= and rngs= (or weights=, a pretrained "
                        f"checkpoint: v3d_flax.list_weights({name!r}))")
    from v3d_flax.layers import build_batched

    model = build_batched(get_factory(name), num_classes=num_classes, rngs=rngs, **kwargs)
    _label(model, name, kwargs)
    return model


def abstract_model(name: str, *, num_classes: int, rngs: nnx.Rngs | None = None, **kwargs) -> nnx.Module:
    """`create_model`'s structure without its weights: what ``nnx.eval_shape(lambda: create_model(...))``
    gives (arrays as jax.ShapeDtypeStruct), but built without tracing and without drawing any random
    weight; for reading shapes, or for filling in a checkpoint's arrays."""
    from flax import nnx
    from v3d_flax.layers import build_abstract

    model = build_abstract(get_factory(name), num_classes=num_classes, rngs=nnx.Rngs(0) if rngs is None else rngs,
                           **kwargs)
    _label(model, name, kwargs)
    return model


def _label(model, name: str, kwargs: dict) -> None:
    """Name the built model (`model.arch`) and keep the architecture arguments it was built with beyond
    the clip size (`model.arch_kwargs`, e.g. SlowFast 4x16's alpha), which checkpoints record."""
    model.arch = name
    clip_args = model_spec(name).clip_kwargs
    model.arch_kwargs = tuple(sorted((k, v) for k, v in kwargs.items()
                                     if k not in clip_args and isinstance(v, (bool, int, float, str))))
