"""The model records are true of the models they describe, and cost no JAX import to read."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import jax
import pytest
from flax import nnx

from v3d_flax.registry import ModelSpec, abstract_model, list_models, model_spec, register_model


def _module_at(model, path: str):
    for part in path.split("."):
        model = model[int(part)] if part.isdigit() else getattr(model, part)
    return model


@pytest.mark.parametrize("name", list_models())
def test_the_classifier_path_names_the_layer_that_makes_the_classes(name):
    spec = model_spec(name)
    model = abstract_model(name, num_classes=7, **spec.size_kwargs(*spec.clip[:2]))
    head = _module_at(model, spec.classifier)
    assert head.kernel.get_value().shape[-1] == 7
    assert type(model).__module__ == spec.family  # models of one family share key names (identify_checkpoint)


def test_clip_kwargs_size_the_model_that_follows_the_clip():
    spec = model_spec("c3d")
    small = abstract_model("c3d", num_classes=3, **spec.size_kwargs(16, 32))
    canonical = abstract_model("c3d", num_classes=3, **spec.size_kwargs(*spec.clip[:2]))
    assert small.fc6.kernel.get_value().shape[0] < canonical.fc6.kernel.get_value().shape[0]
    assert model_spec("r3d_18").size_kwargs(16, 32) == {}


@pytest.mark.parametrize("name", ["r3d_18", "slowfast_r50", "x3d_xs"])
def test_input_shapes_are_what_the_model_takes(name):
    spec = model_spec(name)
    model = abstract_model(name, num_classes=5)
    model.eval()
    shapes = spec.input_shapes((8, 64, 64), batch=2)
    assert len(shapes) == spec.pathways
    inputs = [jax.ShapeDtypeStruct(s, "float32") for s in shapes]
    graphdef, state = nnx.split(model)
    out = jax.eval_shape(lambda state, *x: nnx.merge(graphdef, state)(x if len(x) > 1 else x[0]), state, *inputs)
    assert out.shape == (2, 5)


def test_a_name_is_registered_once():
    spec = model_spec("r3d_18")
    assert register_model(spec) is spec  # the same record again: nothing changes
    with pytest.raises(ValueError, match="registered twice"):
        register_model(dataclasses.replace(spec, num_classes=10))
    with pytest.raises(ValueError, match="clip_kwargs"):
        ModelSpec(**{**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}, "clip_kwargs": ("depth",)})


def test_unknown_names_suggest_the_closest():
    with pytest.raises(ValueError, match="did you mean r3d_18"):
        model_spec("r3d18")


def test_reading_the_records_imports_no_jax():
    code = ("import sys, v3d_flax.registry as r; specs = [r.model_spec(n) for n in r.list_models()]; "
            "assert not [m for m in ('jax', 'flax', 'numpy', 'torch') if m in sys.modules], sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_records_key_rules_rename_its_checkpoints(monkeypatch):
    """A family whose publisher names a layer differently says so in its record, not in the port layer."""
    from v3d_flax import registry
    from v3d_flax.port import rename_keys

    spec = model_spec("r3d_18")
    renamed = dataclasses.replace(spec, key_rules={"torchvision": ((r"head\.(weight|bias)", r"fc.\1"),
                                                                    (r"num_batches_seen", None))})
    monkeypatch.setitem(registry._SPECS, "r3d_18", renamed)
    assert rename_keys({"head.weight": 1, "num_batches_seen": 2, "stem.0.weight": 3}, "torchvision", "r3d_18") == {
        "fc.weight": 1, "stem.0.weight": 3}
    with pytest.raises(ValueError, match="not among its sources"):
        dataclasses.replace(spec, key_rules={"pytorchvideo": ()})
