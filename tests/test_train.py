"""train.py and v3d_flax.train: flags, an end-to-end tiny run, divergence, and the step's pieces."""

import json
import math

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from trainrun import TINY_DATASET, metrics, train
from v3d_flax.train import TrainConfig, TrainingDiverged, resolve, run
from v3d_flax.train.checkpointing import Checkpointer
from v3d_flax.train.remat import apply_remat, remat_blocks
from v3d_flax.train.state import (build_model, build_optimizer, decay_mask, init_state, is_key, lr_schedule,
                                  make_data_init, split_model)
from v3d_flax.train.steps import make_train_step, topk_correct


def _cli(argv):
    import importlib.util

    from trainrun import TRAIN

    spec = importlib.util.spec_from_file_location("train_cli", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


@pytest.mark.parametrize("argv, message", [
    (["--model", "nope"], "argument --model: unknown model 'nope'; available models: c2d_r50, c3d"),
    (["--model", "c3d", "--accelerator", "ipu"], "argument --accelerator: invalid choice"),
    (["--model", "c3d", "--batch-size", "0"], "argument --batch-size: expected a positive int"),
    (["--model", "c3d", "--lr", "-1"], "argument --lr: expected a positive float"),
    (["--model", "c3d", "--optimizer", "lamb"], "argument --optimizer: invalid choice"),
    (["--model", "c3d", "--precision", "fp16"], "argument --precision: invalid choice"),
    (["--model", "c3d", "--label-smoothing", "1.5"], "argument --label-smoothing: expected a number in [0, 1)"),
    (["--model", "c3d", "--eval-views", "10"], "argument --eval-views: expected CLIPSxCROPS"),
    (["--model", "c3d", "--eval-views", "2x2"], "with 1 crop (the centre) or 3"),
    (["--model", "c3d", "--checkpoint-minutes", "-1"], "argument --checkpoint-minutes: expected a non-negative"),
    (["--model", "c3d", "--batch-size", "6", "--grad-accum", "4"], "must be divisible by --grad-accum 4"),
    (["--model", "c3d", "--eval-only"], "--eval-only needs --workdir"),
    (["--steps", "3"], "the following arguments are required: --model"),
])
def test_bad_flags_exit_2_with_argparse_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _cli(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: train.py" in err and message in err


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        _cli(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    flags = ["--model", "--accelerator", "--dataset", "--data-dir", "--workdir", "--steps", "--batch-size",
             "--num-frames", "--crop-size", "--lr", "--optimizer", "--weight-decay", "--label-smoothing",
             "--warmup-steps", "--seed", "--precision", "--remat", "--grad-accum", "--log-every", "--eval-every",
             "--checkpoint-every", "--checkpoint-minutes", "--init-from", "--eval-only", "--eval-views", "--parallel",
             "--coordinator-address", "--num-processes", "--process-id"]
    for flag in flags:
        assert flag in out
    assert out.count("  --") >= len(flags)
    # The models whose CPU defaults differ say so, and Ctrl-C's behaviour is documented.
    assert "c3d: --steps 500, --optimizer adamw, --lr 0.0001" in " ".join(out.split())
    assert "Ctrl-C" in out and "runs/<model>-<dataset>" in " ".join(out.split())


def test_missing_accelerator_is_one_line_naming_the_devices(tmp_path):
    result = train(["--model", "r3d_18", "--accelerator", "gpu", "--workdir", str(tmp_path / "w")])
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "--accelerator gpu" in lines[0] and "devices found: cpu" in lines[0]
    assert not (tmp_path / "w").exists()


def _tiny_config(workdir, **kw):
    base = dict(model="r3d_18", dataset=TINY_DATASET, workdir=str(workdir), num_frames=4, crop_size=16,
                batch_size=8, eval_batch_size=16, log_every=2, lr=0.05, warmup_steps=2, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_end_to_end_tiny_run_writes_every_output(tmp_path):
    result = run(_tiny_config(tmp_path, steps=12, log_every=4, eval_every=6))
    records = metrics(tmp_path)
    train_rows = [r for r in records if r["split"] == "train"]
    eval_rows = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in train_rows] == [4, 8, 12]
    assert [r["step"] for r in eval_rows] == [6, 12]
    for r in train_rows:
        assert {"step", "split", "loss", "top1", "top5", "lr", "clips_per_sec"} <= set(r)
        assert all(isinstance(r[k], float) and math.isfinite(r[k]) for k in ("loss", "top1", "top5", "lr"))
    assert all(r["clips_per_sec"] > 0 for r in train_rows[1:])
    for r in eval_rows:
        assert {"step", "split", "loss", "top1", "top5", "clips_per_sec", "views", "video_top1"} <= set(r)
        assert r["views"] == "1x1"
    assert result["top1"] == eval_rows[-1]["top1"]
    # Every evaluation is preceded by a checkpoint, so a failing evaluation cannot lose training.
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [6, 12]
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "run.json").read_text())["model"] == "r3d_18"
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) in (["6"], ["12"])

    # The same command again finds the run complete: nothing is built, trained or evaluated.
    done = run(_tiny_config(tmp_path, steps=12, log_every=4, eval_every=6))
    assert done["complete"] and done["top1"] == eval_rows[-1]["top1"]
    assert metrics(tmp_path) == records

    # --eval-only on the finished workdir reproduces the last evaluation; other views are logged as such.
    again = run(_tiny_config(tmp_path, steps=12, eval_only=True))
    assert again["top1"] == pytest.approx(eval_rows[-1]["top1"])
    views = run(_tiny_config(tmp_path, steps=12, eval_only=True, eval_views=(2, 1)))
    assert views["views"] == "2x1" and views["num_clips"] == 2 * views["num_videos"]


def test_default_workdir_is_the_same_for_the_same_command():
    config = resolve(TrainConfig(model="c3d"))
    assert config.workdir == resolve(TrainConfig(model="c3d")).workdir == "runs/c3d-v3d_synthetic_motion"
    assert resolve(TrainConfig(model="r3d_18", dataset="ucf101/ucf101_1_256:2.0.0")).workdir == \
        "runs/r3d_18-ucf101_ucf101_1_256_2.0.0"


def test_a_failed_final_evaluation_loses_no_training(tmp_path, monkeypatch, capsys):
    from v3d_flax.train import evaluation
    from v3d_flax.train.checkpointing import WorkdirError

    def broken(self, state, *, step, should_stop=None):
        raise RuntimeError("evaluation failed")

    with monkeypatch.context() as patch:
        patch.setattr(evaluation.Evaluator, "__call__", broken)
        with pytest.raises(RuntimeError, match="evaluation failed"):
            run(_tiny_config(tmp_path, steps=2, log_every=1, checkpoint_minutes=1e-9))
    # --checkpoint-minutes saved after step 1; the final checkpoint was written before the evaluation.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]
    # Settings that fix the state or the input order cannot change under a saved run.
    with pytest.raises(WorkdirError, match=r"--batch-size 8 \(now 4\)"):
        run(_tiny_config(tmp_path, steps=2, batch_size=4))
    capsys.readouterr()
    result = run(_tiny_config(tmp_path, steps=2, log_every=1))  # the same command: only the evaluation runs
    assert "before its final evaluation; evaluating now" in capsys.readouterr().out
    assert result["step"] == 2 and [r["step"] for r in metrics(tmp_path) if r["split"] == "eval"] == [2]
    assert [r["step"] for r in metrics(tmp_path) if r["split"] == "train"] == [1, 2]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = _tiny_config(tmp_path, steps=6, log_every=1, checkpoint_every=1, lr=1e30, warmup_steps=1,
                          grad_clip=0.0, label_smoothing=0.0)
    with pytest.raises(TrainingDiverged, match="at step .*last good checkpoint"):
        run(config)
    ckpt = Checkpointer(str(tmp_path))
    steps = ckpt.latest.all_steps()
    ckpt.close()
    assert steps and max(steps) < 6
    # The kept checkpoints are finite.
    rows = [r for r in metrics(tmp_path) if r["split"] == "train"]
    assert all(isinstance(r["loss"], float) and math.isfinite(r["loss"]) for r in rows)


def test_lr_schedule_warmup_then_cosine_to_zero():
    s = lr_schedule(0.1, 10, 100)
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.05)
    assert float(s(10)) == pytest.approx(0.1)
    assert float(s(55)) == pytest.approx(0.05, rel=1e-5)
    assert float(s(100)) == pytest.approx(0.0, abs=1e-9)


def test_weight_decay_skips_batchnorm_and_biases():
    model = build_model("r3d_18", num_classes=3, num_frames=4, crop_size=16, seed=0)
    _, state = split_model(model)
    mask = decay_mask(state["params"])
    flat = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(mask)}
    assert flat["stem/0/kernel"] and flat["fc/kernel"]
    assert not flat["stem/1/scale"] and not flat["stem/1/bias"] and not flat["fc/bias"]
    assert not flat["layer1/0/conv1/1/scale"]


def _one_step(model_name, precision="fp32", remat=False, **build):
    model = build_model(model_name, num_classes=5, num_frames=build.get("t", 4), crop_size=build.get("s", 16),
                        seed=0, remat=remat)
    defs, mstate = split_model(model)
    config = resolve(TrainConfig(model=model_name, workdir="-", lr=0.1, steps=10, warmup_steps=0))
    tx, schedule = build_optimizer(config, 10)
    state = init_state(mstate, tx)
    step = jax.jit(make_train_step(defs, tx, schedule, num_classes=5, label_smoothing=0.1, precision=precision))
    rng = np.random.default_rng(0)
    batch = {"video": rng.normal(size=(4, build.get("t", 4), build.get("s", 16), build.get("s", 16), 3)).astype(np.float32),
             "label": np.array([0, 1, 2, 3], np.int32)}
    return step(state, batch), state


@pytest.mark.parametrize("model_name,blocks", [("slowfast_r50", 2 + 32 + 4 + 1),  # stems, blocks, fusions, head
                                               ("x3d_xs", 1 + 26 + 1), ("i3d", 4 + 9)])
def test_remat_finds_the_blocks_inside_pytorchvideo_stages(model_name, blocks):
    model = nnx.eval_shape(lambda: build_model(model_name, num_classes=5, num_frames=8, crop_size=32, seed=0))
    found = remat_blocks(model)
    assert len(found) == blocks
    assert all(type(b).__name__ not in ("List", "Sequential", "ResStage") for b in found)


def test_remat_changes_nothing_but_memory():
    model_name = "r3d_18"
    model = build_model(model_name, num_classes=5, num_frames=4, crop_size=16, seed=0)
    assert len(remat_blocks(model)) == 1 + 8 + 1  # stem, 8 residual blocks, fc
    plain_paths = [p for p, _ in nnx.to_flat_state(nnx.state(model))]
    apply_remat(model)
    assert [p for p, _ in nnx.to_flat_state(nnx.state(model))] == plain_paths
    (s1, m1), _ = _one_step(model_name)
    (s2, m2), _ = _one_step(model_name, remat=True)
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(s1["rest"]), jax.tree.leaves(s2["rest"])):  # BN statistics, RNG streams
        if not is_key(a):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_remat_cuts_the_activation_memory_xla_plans():
    """XLA's compiled plan for the train step: the memory added per clip (activations kept for the
    backward pass) shrinks by at least 1.5x with --remat. Measured at r3d_18 8x32x32, batch 32 -> 48:
    9.6 -> 5.6 MiB per clip (12.0 -> 5.5 before the conv backward's cotangent tie, v3d_flax.conv,
    shrank the plain plan). The batches are large enough for activations to dominate the plan: its
    other peak, the optimizer update of 33M parameters (~133 MiB), outweighs them below ~24 clips."""
    def planned_bytes(remat, batch):
        model = nnx.eval_shape(lambda: build_model("r3d_18", num_classes=5, num_frames=8, crop_size=32, seed=0,
                                                   remat=remat))  # shapes only: nothing runs
        defs, mstate = split_model(model)
        config = resolve(TrainConfig(model="r3d_18", workdir="-", lr=0.1, steps=10, warmup_steps=0))
        tx, schedule = build_optimizer(config, 10)
        state = jax.eval_shape(lambda m: init_state(m, tx), mstate)
        batch = {"video": jax.ShapeDtypeStruct((batch, 8, 32, 32, 3), jnp.float32),
                 "label": jax.ShapeDtypeStruct((batch,), jnp.int32)}
        step = jax.jit(make_train_step(defs, tx, schedule, num_classes=5, label_smoothing=0.1, precision="fp32"))
        return step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes

    per_clip = {remat: (planned_bytes(remat, 48) - planned_bytes(remat, 32)) / 16 for remat in (False, True)}
    assert per_clip[True] < per_clip[False] / 1.5, per_clip


def _precisions(step, state, batch) -> set:
    """The precision of every convolution and matrix product in the traced step."""
    found = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
                found.add(str(eqn.params["precision"]))
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(sub, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
                        walk(getattr(sub, "jaxpr", sub))

    walk(jax.make_jaxpr(step)(state, batch).jaxpr)
    return found


@pytest.mark.accelerator
def test_fp32_highest_asks_every_conv_and_matmul_for_full_float32():
    """--precision fp32-highest pins HIGHEST in the traced step (no TF32 on GPU, no bf16 passes on TPU);
    fp32 leaves the choice to the backend."""
    (_, m), state = _one_step("r3d_18", precision="fp32-highest")
    assert math.isfinite(float(m["loss"]))
    model = build_model("r3d_18", num_classes=5, num_frames=4, crop_size=16, seed=0)
    defs, _ = split_model(model)
    config = resolve(TrainConfig(model="r3d_18", workdir="-", lr=0.1, steps=10, warmup_steps=0))
    tx, schedule = build_optimizer(config, 10)
    batch = {"video": np.zeros((2, 4, 16, 16, 3), np.float32), "label": np.zeros(2, np.int32)}
    steps = {p: make_train_step(defs, tx, schedule, num_classes=5, label_smoothing=0.0, precision=p)
             for p in ("fp32", "fp32-highest")}
    assert _precisions(steps["fp32-highest"], state, batch) == {"(Precision.HIGHEST, Precision.HIGHEST)"}
    assert "None" in _precisions(steps["fp32"], state, batch)


@pytest.mark.accelerator
def test_bf16_computes_in_bfloat16_keeps_float32_state():
    (state, m), _ = _one_step("r3d_18", precision="bf16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state["params"]))
    stats = [x for x in jax.tree.leaves(state["rest"]) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert stats and all(x.dtype == jnp.float32 for x in stats)
    assert math.isfinite(float(m["loss"]))
    (_, m32), _ = _one_step("r3d_18")
    assert float(m["loss"]) != float(m32["loss"])  # really computed at another precision
    assert float(m["loss"]) == pytest.approx(float(m32["loss"]), rel=5e-2)


def test_dropout_rng_state_advances_and_is_part_of_the_state():
    model = build_model("c3d", num_classes=5, num_frames=16, crop_size=16, seed=0)
    _, mstate = split_model(model)
    keys = [x for x in jax.tree.leaves(mstate["rest"]) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)]
    assert keys, "C3D's dropout stream must live in the checkpointed state"


def test_cpu_defaults_per_model_and_flags_win():
    c3d, r3d = resolve(TrainConfig(model="c3d", workdir="-")), resolve(TrainConfig(model="r3d_18", workdir="-"))
    assert (c3d.optimizer, c3d.lr, c3d.dropout, c3d.label_smoothing, c3d.crop_size) == ("adamw", 1e-4, 0.0, 0.0, 16)
    assert (r3d.optimizer, r3d.lr, r3d.dropout, r3d.label_smoothing) == ("sgd", 0.02, None, 0.1)
    mine = resolve(TrainConfig(model="c3d", workdir="-", optimizer="sgd", lr=0.01, dropout=0.5, label_smoothing=0.2))
    assert (mine.optimizer, mine.lr, mine.dropout, mine.label_smoothing) == ("sgd", 0.01, 0.5, 0.2)
    gpu = resolve(TrainConfig(model="c3d", workdir="-", accelerator="gpu"))
    assert (gpu.optimizer, gpu.dropout, gpu.crop_size) == ("sgd", None, 112)
    assert build_model("c3d", num_classes=3, num_frames=16, crop_size=16, seed=0, dropout=0.0).dropout.rate == 0.0


def test_c3d_data_dependent_init_normalises_every_layer_on_the_batch():
    model = build_model("c3d", num_classes=5, num_frames=16, crop_size=16, seed=0)
    defs, mstate = split_model(model)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 16, 16, 16, 3)), jnp.float32)
    params = jax.jit(make_data_init(defs))(mstate["params"], mstate["rest"], x)
    model = nnx.merge(defs.eval, params, mstate["rest"])
    for pre in (model.conv1(x), model.fc7(model.forward_features(x, "fc6"))):
        axes = tuple(range(pre.ndim - 1))
        np.testing.assert_allclose(pre.mean(axes), 0.0, atol=1e-3)
        np.testing.assert_allclose(pre.std(axes), 1.0, atol=1e-3)
    np.testing.assert_array_equal(params["fc8"]["kernel"], mstate["params"]["fc8"]["kernel"])  # left as it was


def test_fresh_c3d_run_starts_from_the_data_dependent_init_and_a_resumed_one_does_not(tmp_path, capsys):
    config = TrainConfig(model="c3d", dataset=TINY_DATASET, workdir=str(tmp_path), steps=1, batch_size=4,
                         eval_batch_size=16, log_every=1, progress=False)
    run(config)
    assert "data-dependent init" in capsys.readouterr().out
    first = [r for r in metrics(tmp_path) if r["split"] == "train"]
    assert math.isfinite(first[0]["loss"]) and first[0]["loss"] < 4.0  # unit-variance fc7, small fc8: near ln 8
    run(config.replace(steps=2))
    out = capsys.readouterr().out
    assert "resuming from the checkpoint at step 1" in out and "data-dependent init" not in out


def test_topk_correct_counts_ties_and_small_class_counts():
    logits = jnp.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]])
    labels = jnp.array([1, 1])
    assert topk_correct(logits, labels, 1).tolist() == [1.0, 0.0]
    assert topk_correct(logits, labels, 5).tolist() == [1.0, 1.0]  # k above the class count


def test_grad_accum_matches_the_big_batch_for_a_model_without_batchnorm(tmp_path):
    # C3D has no BatchNorm; with dropout off, two micro-batches of 2 average to the batch of 4.
    def updated(grad_accum):
        model = build_model("c3d", num_classes=3, num_frames=16, crop_size=16, seed=0)
        model.dropout.rate = 0.0
        defs, mstate = split_model(model)
        config = resolve(TrainConfig(model="c3d", workdir="-", lr=0.1, steps=4, warmup_steps=0, batch_size=4,
                                     grad_accum=grad_accum, label_smoothing=0.0, optimizer="sgd"))
        tx, schedule = build_optimizer(config, 4)
        state = init_state(mstate, tx)
        step = jax.jit(make_train_step(defs, tx, schedule, num_classes=3, label_smoothing=0.0, precision="fp32",
                                       grad_accum=grad_accum))
        rng = np.random.default_rng(0)
        video = rng.normal(size=(4, 16, 16, 16, 3)).astype(np.float32)
        label = np.array([0, 1, 2, 0], np.int32)
        n = 4 // grad_accum
        for i in range(grad_accum):
            state, _ = step(state, {"video": video[i * n:(i + 1) * n], "label": label[i * n:(i + 1) * n]})
        return state["params"]

    with jax.default_matmul_precision("float32"):
        a, b = updated(1), updated(2)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def _torch_layout_file(path, model, *, change=None, seed=0):
    """A .safetensors state_dict of `model`'s torch twin, random values; `change` maps keys to new shapes."""
    from safetensors.numpy import save_file

    from v3d_flax.port import torch_shapes

    rng = np.random.default_rng(seed)
    shapes = {**torch_shapes(model), **(change or {})}
    tensors = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()
               if not k.endswith("num_batches_tracked")}
    save_file(tensors, str(path))
    return tensors


def test_init_from_a_file_resets_only_the_classifier_the_record_names(tmp_path):
    from v3d_flax.port import PortError
    from v3d_flax.registry import model_spec
    from v3d_flax.train.init_from import load_checkpoint_file

    classifier = model_spec("r3d_18").classifier
    other = nnx.eval_shape(lambda: build_model("r3d_18", num_classes=7, num_frames=4, crop_size=16, seed=0))
    tensors = _torch_layout_file(tmp_path / "seven.safetensors", other)  # a checkpoint of another head size
    model = build_model("r3d_18", num_classes=3, num_frames=4, crop_size=16, seed=0)
    fc_before = np.asarray(model.fc.kernel[...])
    fresh = load_checkpoint_file(model, str(tmp_path / "seven.safetensors"), source="v3d", classifier=classifier)
    assert fresh == ["fc.weight", "fc.bias"]
    np.testing.assert_array_equal(np.asarray(model.fc.kernel[...]), fc_before)  # fresh, as built
    np.testing.assert_array_equal(np.asarray(model.stem[0].kernel[...]),
                                  tensors["stem.0.weight"].transpose(2, 3, 4, 1, 0))  # the rest is loaded

    # A mis-shaped tensor outside the classifier is an error naming it, not a silently fresh layer.
    _torch_layout_file(tmp_path / "bad.safetensors", other, change={"layer1.0.conv1.0.weight": (64, 64, 1, 3, 3)})
    with pytest.raises(PortError, match=r"layer1\.0\.conv1\.0\.weight") as err:
        load_checkpoint_file(model, str(tmp_path / "bad.safetensors"), source="v3d", classifier=classifier)
    assert [m.split(" ")[0] for m in err.value.mismatched] == ["layer1.0.conv1.0.weight"]
    # ... raised by the run before anything is trained or written.
    with pytest.raises(PortError, match=r"layer1\.0\.conv1\.0\.weight"):
        run(_tiny_config(tmp_path / "w", steps=1, init_from=str(tmp_path / "bad.safetensors")))
    assert not (tmp_path / "w").exists()


def test_init_from_an_orbax_run_resets_only_the_classifier_the_record_names(tmp_path):
    import optax

    from v3d_flax.registry import model_spec
    from v3d_flax.train.init_from import load_orbax
    from v3d_flax.train.mesh import make_mesh, replicated

    classifier = model_spec("x3d_xs").classifier  # "blocks.5.proj": a nested path
    rep = replicated(make_mesh(jax.devices()))
    tx = optax.sgd(0.1)

    def state_of(num_classes, seed):
        _, mstate = split_model(build_model("x3d_xs", num_classes=num_classes, num_frames=4, crop_size=32, seed=seed))
        return jax.device_put(init_state(mstate, tx), rep)

    def save(workdir, state):
        ckpt = Checkpointer(str(workdir), async_save=False)
        ckpt.save(3, state, {"model": "x3d_xs", "step": 3})
        ckpt.close()

    saved = state_of(7, seed=1)
    save(tmp_path / "seven", saved)
    template = state_of(3, seed=0)
    loaded, fresh = load_orbax(str(tmp_path / "seven"), template, rep, classifier=classifier)
    assert fresh == ["params/blocks/5/proj/bias", "params/blocks/5/proj/kernel"]
    head = lambda s: np.asarray(s["params"]["blocks"][5]["proj"]["kernel"])  # noqa: E731
    stem = lambda s: np.asarray(s["params"]["blocks"][0]["conv"]["conv_t"]["kernel"])  # noqa: E731
    np.testing.assert_array_equal(head(loaded), head(template))
    np.testing.assert_array_equal(stem(loaded), stem(saved))

    # One mis-shaped array elsewhere: an error naming it.
    params = nnx.to_flat_state(saved["params"])
    bad_key = ("blocks", 0, "conv", "conv_t", "kernel")
    changed = [(p, jnp.zeros((1, 3, 3, 3, 7)) if p == bad_key else v) for p, v in params]
    save(tmp_path / "bad", {**saved, "params": nnx.from_flat_state(changed)})
    with pytest.raises(ValueError, match=r"params/blocks/0/conv/conv_t/kernel \(checkpoint \(1, 3, 3, 3, 7\)"):
        load_orbax(str(tmp_path / "bad"), template, rep, classifier=classifier)


def _console_scripts() -> dict[str, str]:
    import tomllib

    from trainrun import REPO

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("script", sorted(_console_scripts()))
def test_every_console_script_runs_help(script):
    import shutil
    import subprocess

    path = shutil.which(script)
    assert path, f"{script} is not installed; run `pip install -e .` after changing pyproject.toml"
    result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: ") and "--help" in result.stdout
