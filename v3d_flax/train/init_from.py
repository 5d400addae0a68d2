"""`--init-from`: start a run from another checkpoint's weights, the classifier reset by name.

A checkpoint trained on another dataset has a classifier of another size: the layer the model's
record names (`ModelSpec.classifier`, e.g. "fc" or "blocks.5.proj") then starts freshly initialised.
Every other tensor must fit; one that does not is an error naming it, raised before training starts
(a silently fresh layer in the middle of a pretrained network would train to a worse model).
"""

from __future__ import annotations

import logging
import os

import jax
from flax import nnx

from v3d_flax.port import PortError, PortReport, load_weights
from v3d_flax.train.state import is_key


def classifier_keys(classifier: str) -> tuple[str, str]:
    """The torch state_dict names of the classifier's tensors ("fc" -> "fc.weight", "fc.bias")."""
    return f"{classifier}.weight", f"{classifier}.bias"


def classifier_prefix(classifier: str) -> str:
    """The "/"-joined Flax parameter path prefix of the classifier ("blocks.5.proj" -> "blocks/5/proj/")."""
    return classifier.replace(".", "/") + "/"


def architecture_of(model: str, init_from: str | None, modality: str = "rgb") -> dict:
    """The factory arguments the model must be built with to take --init-from `init_from`: those of
    its pretrained-weights record (SlowFast 4x16: alpha 8 and 5x1x1 lateral convs), or those recorded
    in the run.json of a training workdir; {} otherwise. ValueError for weights of another input
    modality than the run's (flow weights need --modality flow, RGB weights --modality rgb)."""
    if init_from is None:
        return {}
    from v3d_flax.weights import named_weights

    record = named_weights(model, init_from)
    if record is not None:
        if record.modality != modality:
            raise ValueError(f"--init-from {init_from}: these {model} weights take {record.modality} input; "
                             f"this run's --modality is {modality} (pass --modality {record.modality})")
        return {k: v for k, v in record.model_kwargs.items() if k != "in_channels"}  # the modality sets it
    if os.path.isdir(init_from):
        from v3d_flax.checkpoints import training_run_record

        run = training_run_record(init_from)
        recorded = (run.get("config") or {}).get("modality", "rgb")
        if recorded != modality:
            raise ValueError(f"--init-from {init_from}: that run trained with --modality {recorded}; this run's "
                             f"--modality is {modality}")
        return dict(run.get("model_kwargs") or {})
    return {}


def checkpoint_of(model: str, init_from: str, source: str) -> tuple[str, str]:
    """(checkpoint path, its source) of --init-from: a file of `source` as given, or the model's
    pretrained weights by name ("kinetics400", `v3d_flax.list_weights(model)`), fetched, verified and
    cached (`v3d_flax.hub`), with the source their record names."""
    from v3d_flax.weights import named_weights

    record = named_weights(model, init_from)
    if record is None:
        return init_from, source
    from v3d_flax.hub import fetch_weights

    return str(fetch_weights(record)), record.source


def load_checkpoint_file(model: nnx.Module, path: str, *, source: str, classifier: str) -> list[str]:
    """Load the checkpoint file `path` of `source` (`v3d_flax.port.list_sources()`) into `model` in
    place; returns the classifier tensors left fresh because their shapes differ (empty when it fits).

    PortError for missing or unexpected keys and for a mis-shaped tensor outside the classifier. Position
    tables that follow the clip size (MViT's) are interpolated to the run's clip (`ModelSpec.resize_state`).
    """
    from v3d_flax.port.sources import get_source
    from v3d_flax.registry import list_models, model_spec

    arch = getattr(model, "arch", None)
    resize = (arch in list_models() and model_spec(arch).resize_state is not None
              and get_source(source).kind == "state_dict")
    report = load_weights(model, path, source=source, strict=False, resize=resize)
    head = set(classifier_keys(classifier))
    fresh = [entry for entry in report.mismatched if entry.split(" ", 1)[0] in head]
    wrong = PortReport(missing=report.missing, unexpected=report.unexpected,
                       mismatched=[entry for entry in report.mismatched if entry not in fresh])
    if wrong:
        raise PortError(f"--init-from {path} does not fit {getattr(model, 'arch', type(model).__name__)} "
                        f"(source {source!r}; only the classifier {classifier} may differ in shape): "
                        f"{wrong.describe()}", wrong)
    return [entry.split(" ", 1)[0] for entry in fresh]


def _flat(tree) -> dict[str, object]:
    """{"/"-joined path: leaf} of a nested dict tree."""
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def split_mismatched(template: dict, stored: dict[str, tuple], classifier: str) -> tuple[list[str], list[str]]:
    """(classifier paths, other paths) of the "params"/"rest" leaves of `template` whose shape differs
    from `stored` ({"/"-joined path: shape} of a checkpoint), each path as "params/fc/kernel (checkpoint
    (512, 400), model (512, 10))"."""
    head, other = [], []
    prefix = "params/" + classifier_prefix(classifier)
    for path, leaf in _flat({"params": template["params"], "rest": template["rest"]}).items():
        # typed PRNG keys (dropout streams) are stored as their key data
        shape = tuple(jax.eval_shape(jax.random.key_data, leaf).shape if is_key(leaf) else getattr(leaf, "shape", ()))
        if path in stored and tuple(stored[path]) != shape:
            entry = f"{path} (checkpoint {tuple(stored[path])}, model {shape})"
            (head if path.startswith(prefix) else other).append(entry)
    return head, other


def _path_text(path: tuple) -> str:
    return "/".join(map(str, path))


def stored_shapes(path: str) -> dict[str, tuple]:
    """{"/"-joined path: shape} of the "params" and "rest" arrays of the orbax checkpoint of this
    trainer at `path` (a workdir, its checkpoints/ or best/ directory, or one step directory: the one
    `checkpoints.step_directory` finds, as `checkpointing.load_orbax_params` does), read from its
    metadata without loading an array."""
    import orbax.checkpoint as ocp

    from v3d_flax.checkpoints import step_directory

    step_dir = step_directory(path)
    if step_dir is None:
        raise FileNotFoundError(f"no orbax checkpoint of this trainer under {os.path.abspath(path)!r}")
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # orbax warns that a trainer's step has no checkpoint-level metadata file
    try:
        tree = ocp.PyTreeCheckpointer().metadata(os.path.join(step_dir, "state")).item_metadata.tree
    finally:
        absl_logger.setLevel(level)
    return {p: tuple(m.shape) for p, m in _flat({k: tree[k] for k in ("params", "rest") if k in tree}).items()}


def load_orbax(path: str, state: dict, sharding, *, classifier: str) -> tuple[dict, list[str]]:
    """`state` with "params" and "rest" read from the orbax checkpoint of this trainer at `path`
    (`checkpointing.load_orbax_params`), placed with `sharding`, and the classifier's paths left fresh
    because their shapes differ. ValueError naming every other mis-shaped array."""
    from v3d_flax.train.checkpointing import load_orbax_params

    head, other = split_mismatched(state, stored_shapes(path), classifier)
    if other:
        raise ValueError(f"--init-from {path} does not fit the model (only the classifier {classifier} may differ "
                         f"in shape): mis-shaped arrays ({len(other)}): {', '.join(other)}")
    fresh = {entry.split(" ", 1)[0] for entry in head}
    params = nnx.to_flat_state(state["params"])
    kept = nnx.from_flat_state([(p, v) for p, v in params if "params/" + _path_text(p) not in fresh])
    loaded = load_orbax_params(path, {"params": kept, "rest": state["rest"]}, sharding)
    merged = dict(params)
    merged.update(nnx.to_flat_state(loaded["params"]))
    return {**state, "params": nnx.from_flat_state(list(merged.items())), "rest": loaded["rest"]}, sorted(fresh)
