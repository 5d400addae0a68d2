"""The training loop: `run(config)` trains (or evaluates) one model and writes the workdir.

data -> the data-parallel layout's batch (`v3d_flax.train.parallel`) -> compiled pure step (state
donated) -> metrics, checkpoints. Resumption is exact: a checkpoint holds the model state (BatchNorm
statistics and dropout RNG streams included), the optimizer state, the step, the input position (the
batch at step k depends only on the seed and k) and the metrics of the unfinished logging window, so
a run killed at any point and restarted logs the same losses as one that was never interrupted.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import optax

from v3d_flax import two_stream
from v3d_flax.preprocessing import Normalization
from v3d_flax.registry import model_spec
from v3d_flax.train import checkpointing, evaluation, init_from
from v3d_flax.train.config import TrainConfig, resolve
from v3d_flax.train.mesh import check_batch_divides, init_distributed, replicated, select_devices, to_global
from v3d_flax.train.metrics import MetricsLogger, format_summary, read_metrics, stream_figures
from v3d_flax.train.parallel import DataParallel, data_parallel
from v3d_flax.train.plotting import plot_curves
from v3d_flax.train.signals import StopRequests
from v3d_flax.train.state import (ModelDefs, build_model, build_optimizer, count_params, init_state, make_data_init,
                                  split_model)
from v3d_flax.train.steps import make_train_step

METRIC_KEYS = ("loss", "top1", "top5", "grad_norm", "lr")  # logged per window


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


@dataclass(frozen=True)
class Trainer:
    """What the training loop works with, built once by `run_resolved`."""

    config: TrainConfig  # resolved
    normalization: Normalization  # the model record's, for the input pipeline
    defs: ModelDefs
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    parallel: DataParallel
    info: Any  # the dataset's v3d_flax.data.DatasetInfo
    ckpt: checkpointing.Checkpointer
    logger: MetricsLogger
    evaluator: evaluation.Evaluator
    input_fn: Any = None  # the model's input from a batch's clips (v3d_flax.two_stream.input_function)


def run(config: TrainConfig) -> dict:
    """Train (or with `eval_only`, evaluate) as `config` says, after `resolve` fills its defaults;
    returns the final metrics.

    Raises AcceleratorError, WorkdirError, ValueError (bad settings, a checkpoint that does not fit)
    and TrainingDiverged.
    """
    return run_resolved(resolve(config))


def run_resolved(config: TrainConfig) -> dict:
    """`run` for a config that `resolve` already returned (the command line resolves it to check the
    flags before any device work)."""
    architecture = init_from.architecture_of(config.model, config.init_from, config.modality)  # before any work
    init_distributed(config.coordinator_address, config.num_processes, config.process_id)
    parallel = data_parallel(config.parallel, select_devices(config.accelerator))
    checkpointing.check_workdir(config.workdir, config.model)  # before anything is written
    saved_step = checkpointing.latest_saved_step(config.workdir)
    if saved_step is not None and not config.eval_only:
        _check_resumable(config, saved_step)
        finished = _finished_run(config, saved_step)
        if finished is not None:
            return finished

    from v3d_flax import data

    spec = model_spec(config.model)  # the one look-up: what the record says goes down as arguments
    info = data.dataset_info(config.dataset, data_dir=config.data_dir)
    two_stream.check_dataset(config.modality, info.modality)  # precomputed flow trains --modality flow only
    mesh = parallel.mesh
    check_batch_divides(config.batch_size // config.grad_accum, mesh, "--batch-size / --grad-accum")
    check_batch_divides(config.eval_batch_size, mesh, "the evaluation batch size")

    model = build_model(config.model, num_classes=info.num_classes, num_frames=config.num_frames,
                        crop_size=config.crop_size, seed=config.seed, remat=config.remat,
                        bn_axis_name=parallel.axis_name, dropout=config.dropout, conv_impl=config.conv_impl,
                        modality=config.modality, fusion=config.fusion, **architecture)
    if config.modality == "flow":
        architecture = {**architecture, "in_channels": 2}  # recorded, so predict and convert rebuild it
    fresh: list[str] = []  # the classifier's tensors that --init-from leaves freshly initialised
    from_orbax = config.init_from is not None and os.path.isdir(config.init_from)  # else a checkpoint file
    if config.init_from is not None and not from_orbax:
        path, source = init_from.checkpoint_of(config.model, config.init_from, config.init_source)
        fresh = init_from.load_checkpoint_file(model, path, source=source, classifier=spec.classifier)
    defs, model_state = split_model(model)
    tx, schedule = build_optimizer(config, config.steps)
    rep = replicated(mesh)
    state = jax.device_put(init_state(model_state, tx), rep)
    if from_orbax:
        state, fresh = init_from.load_orbax(config.init_from, state, rep, classifier=spec.classifier)

    checkpointing.write_run_info(config.workdir, {"model": config.model, "model_kwargs": architecture,
                                                  "dataset": config.dataset,
                                                  "num_classes": info.num_classes,
                                                  "class_names": list(info.class_names), "config": config.to_json()})
    ckpt = checkpointing.Checkpointer(config.workdir, keep=config.keep_checkpoints)
    logger = MetricsLogger(config.workdir, progress=config.progress)
    if fresh:
        logger.print(f"--init-from: the classifier {spec.classifier} starts fresh for {info.num_classes} classes "
                     f"(the checkpoint's is another size: {', '.join(fresh)})")
    start_step, window = 0, []
    restored = ckpt.restore_latest(state, rep)
    if restored is not None:
        start_step, state, meta = restored
        window = meta.get("window", [])
        logger.print(f"resuming from the checkpoint at step {start_step} in {ckpt.dir}")
    logger.truncate_after(start_step)
    # A fresh run of a model without normalisation layers (C3D) first rescales its layers on the
    # first training batch; a resumed or --init-from run keeps the weights it loaded.
    data_init = restored is None and not config.init_from and hasattr(model, "data_dependent_init")
    logger.print(f"{config.model}: {count_params(state['params']):,} parameters, {info.num_classes} classes, "
                 f"{len(mesh.devices.flat)} device(s) x {jax.process_count()} process(es), "
                 f"clip {config.num_frames}x{config.crop_size}x{config.crop_size}, global batch {config.batch_size}")

    # flow is computed per device under the sharded jit (a pmap step already runs per device)
    input_fn = two_stream.input_function(config.modality, spec.normalization,
                                         mesh=mesh if parallel.axis_name is None else None,
                                         dataset_modality=info.modality)
    evaluator = evaluation.Evaluator(defs, config, mesh, info, spec.normalization, input_fn)
    trainer = Trainer(config, spec.normalization, defs, tx, schedule, parallel, info, ckpt, logger, evaluator,
                      input_fn)
    t_start = time.time()
    try:
        if config.eval_only:
            result = evaluator(state, step=start_step)
            logger.log(result)
            logger.print(f"eval top1 {result['top1']:.4f} top5 {result['top5']:.4f} "
                         f"video top1 {result['video_top1']:.4f} ({result['views']} views{stream_figures(result)})")
            return result
        result = _train(trainer, state, start_step, window, data_init=data_init)
    finally:
        ckpt.close()
        logger.close()
    if jax.process_index() == 0 and os.path.isfile(logger.path):
        records = read_metrics(logger.path)
        plot_curves(records, os.path.join(config.workdir, "curves.png"), title=config.model)
        logger.print(format_summary(records, model=config.model, workdir=config.workdir,
                                    seconds=time.time() - t_start))
    if jax.process_count() > 1:
        # The first process plots and summarises alone; without this the others reach
        # jax.distributed's shutdown barrier early and can time out on a loaded machine.
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("v3d_run_end")
    return result


def _check_resumable(config: TrainConfig, saved_step: int) -> None:
    """WorkdirError when the workdir's checkpoints were written with settings this run cannot continue."""
    from v3d_flax.train.config import resume_conflicts

    info = checkpointing.read_run_info(config.workdir) or {}
    conflicts = resume_conflicts(info.get("config", {}), config)
    if conflicts:
        raise checkpointing.WorkdirError(
            f"workdir {config.workdir!r} holds a run at step {saved_step} trained with other settings: "
            f"{', '.join(conflicts)}. Rerun with its settings to resume it, or pass another --workdir to start a "
            f"new run (nothing was changed)")


def _finished_run(config: TrainConfig, saved_step: int) -> dict | None:
    """The final eval record when the workdir's run already trained every step and was evaluated
    (printing that it is complete and its summary); None when there is work left."""
    path = os.path.join(config.workdir, "metrics.jsonl")
    if saved_step < config.steps or not os.path.isfile(path):
        return None
    records = read_metrics(path)
    final = [r for r in records if r["split"] == "eval" and r["step"] == saved_step]
    if not final:
        return None  # trained to the end, but the final evaluation never finished: resume runs it
    if jax.process_index() == 0:
        print(f"the run in {config.workdir} is complete: it trained {saved_step} steps (--steps {config.steps}). "
              f"Pass a larger --steps to train on, or another --workdir to start a new run.", flush=True)
        print(format_summary(records, model=config.model, workdir=config.workdir, seconds=0.0, timed=False),
              flush=True)
    return {**final[-1], "complete": True}


def _train(trainer: Trainer, state: dict, start_step: int, window: list, *, data_init: bool = False) -> dict:
    """Train from `start_step` (with the logging `window` a checkpoint restored) to `config.steps`,
    then evaluate; returns the final eval record (or the stop record after SIGTERM / Ctrl-C)."""
    from v3d_flax import data

    config, parallel, ckpt, logger, evaluator = (trainer.config, trainer.parallel, trainer.ckpt, trainer.logger,
                                                 trainer.evaluator)
    mesh = parallel.mesh
    micro_batch = config.batch_size // config.grad_accum
    batches = data.train_batches(
        config.dataset, data_dir=config.data_dir, global_batch_size=micro_batch,
        num_frames=two_stream.clip_frames(config.modality, config.num_frames, trainer.info.modality),
        crop_size=config.crop_size, seed=config.seed,
        normalization=two_stream.pipeline_normalization(config.modality, trainer.normalization, trainer.info.modality),
        start_step=start_step * config.grad_accum, stop_step=max(start_step, config.steps) * config.grad_accum,
        process_index=jax.process_index(),
        process_count=jax.process_count())
    if data_init:
        first = next(batches)
        batches = itertools.chain([first], batches)
        init = jax.jit(make_data_init(trainer.defs, trainer.input_fn), out_shardings=replicated(mesh))
        state = {**state, "params": init(state["params"], state["rest"], to_global(first, mesh)["video"])}
        logger.print("data-dependent init: every layer rescaled to unit-variance outputs on the first batch")
    train_step = parallel.compile(make_train_step(
        trainer.defs, trainer.tx, trainer.schedule, num_classes=trainer.info.num_classes,
        label_smoothing=config.label_smoothing, precision=config.precision, grad_accum=config.grad_accum,
        axis_name=parallel.axis_name, input_fn=trainer.input_fn))
    state = parallel.put_state(state)

    stop = StopRequests()
    pending = []  # device metrics of steps not yet fetched
    last_good = ckpt.latest_step()
    last_saved_at = time.monotonic()
    last_eval = None
    bar = logger.bar(config.steps, initial=start_step)
    timer, clips = None, 0
    run_timer, run_clips = None, 0  # for the ETA of the plain-text progress lines

    def fetch() -> None:
        """Move pending device metrics into the window; stop on a non-finite loss."""
        nonlocal pending
        for k, m in pending:
            m = parallel.get_metrics(m)
            if not (np.isfinite(m["loss"]) and np.isfinite(m["update_norm"])):
                what = f"the loss became {m['loss']}" if not np.isfinite(m["loss"]) else "the update became non-finite"
                raise TrainingDiverged(
                    f"{what} at step {k}; stopping. The last good checkpoint "
                    f"({'step ' + str(last_good) if last_good is not None else 'none'}) is kept in {ckpt.dir}; "
                    f"lower --lr, raise --warmup-steps or use --precision fp32")
            window.append(m)
        pending = []

    def save(step: int) -> None:
        nonlocal last_good, last_saved_at
        fetch()
        ckpt.save(step, parallel.get_state(state), {"model": config.model, "step": step,
                                                    "data_step": step * config.grad_accum, "window": window,
                                                    "config": config.to_json()})
        last_good, last_saved_at = step, time.monotonic()

    def evaluate(step: int) -> dict | None:
        replicated_state = parallel.get_state(state)
        result = evaluator(replicated_state, step=step, should_stop=lambda: stop.requested)
        if result is None:  # a stop request cut the evaluation short; the state was saved before it
            return None
        logger.log(result)
        ckpt.save_best(step, replicated_state, {"model": config.model, "step": step}, result["top1"])
        if not logger.progress:
            logger.print(f"eval step {step}: loss {result['loss']:.4f} top1 {result['top1']:.3f} "
                         f"top5 {result['top5']:.3f} video top1 {result['video_top1']:.3f} "
                         f"({result['views']} views{stream_figures(result)})")
        return result

    def time_to_save(logged: bool) -> bool:
        """--checkpoint-minutes elapsed since the last save; with several processes decided by the first
        at logging steps only, so that every process saves at the same step."""
        if not config.checkpoint_minutes:
            return False
        due = time.monotonic() - last_saved_at >= 60 * config.checkpoint_minutes
        if jax.process_count() == 1:
            return due
        if not logged:
            return False
        from jax.experimental import multihost_utils

        return bool(multihost_utils.broadcast_one_to_all(np.asarray(due)))

    stop.install()
    try:
        for step in range(start_step, config.steps):
            for _ in range(config.grad_accum):
                state, metrics = train_step(state, parallel.put_batch(next(batches)))
            done = step + 1
            pending.append((done, metrics))
            if timer is None:  # the first step compiles: time from its end
                jax.block_until_ready(metrics)
                timer, clips = time.perf_counter(), 0
                run_timer, run_clips = timer, 0
            else:
                clips += config.batch_size
                run_clips += config.batch_size
            bar.update(1)
            logged = done % config.log_every == 0 or done == config.steps
            if logged:
                fetch()
                elapsed = time.perf_counter() - timer
                record = {"step": done, "split": "train",
                          **{k: float(np.mean([m[k] for m in window])) for k in METRIC_KEYS if k != "lr"},
                          "lr": window[-1]["lr"], "clips_per_sec": clips / elapsed if clips and elapsed > 0 else 0.0}
                logger.log(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", top1=f"{record['top1']:.2f}")
                if not logger.progress:  # no bar (not a terminal, or --no-progress): a plain line instead
                    logger.print(_progress_line(record, config.steps, run_clips, time.perf_counter() - run_timer,
                                                config.batch_size))
                window.clear()
                timer, clips = time.perf_counter(), 0
            if done == config.steps:
                break  # the final checkpoint and evaluation follow the loop
            stopping = stop.requested or ckpt.reached_preemption(done)
            if config.eval_every and done % config.eval_every == 0 and not stopping:
                save(done)  # an evaluation that fails must not lose the training before it
                last_eval = evaluate(done) or last_eval
                timer, clips = time.perf_counter(), 0
                stopping = stop.requested
            if (config.checkpoint_every and done % config.checkpoint_every == 0) or time_to_save(logged) or stopping:
                save(done)
            if stopping:
                return _stopped(stop, ckpt, bar, logger, done)
        bar.close()
        final = max(start_step, config.steps)  # a resumed run may hold more steps than --steps asks for
        if start_step < config.steps:
            save(final)
        ckpt.wait()  # the final checkpoint is on disk before the final evaluation can fail
        if start_step >= config.steps:
            logger.print(f"training finished at step {final} before its final evaluation; evaluating now")
        last_eval = None if stop.requested else evaluate(final)
        if last_eval is None:
            return _stopped(stop, ckpt, bar, logger, final, evaluated=False)
    finally:
        stop.uninstall()
        bar.close()
    ckpt.wait()
    return last_eval


def _stopped(stop: StopRequests, ckpt, bar, logger, step: int, *, evaluated: bool = True) -> dict:
    """Finish the save that a SIGTERM or Ctrl-C asked for and say how to go on."""
    ckpt.wait()
    bar.close()
    if stop.interrupted:
        logger.print(f"interrupted: saved the checkpoint at step {step} in {ckpt.dir}; rerun the same command to "
                     f"resume" + ("" if evaluated else " (it will run the final evaluation)"))
        return {"step": step, "interrupted": True}
    logger.print(f"preemption notice: saved the checkpoint at step {step}; exiting")
    return {"step": step, "preempted": True}


def _progress_line(record: dict, total_steps: int, clips: int, seconds: float, batch_size: int) -> str:
    """'step 20/150  loss 2.0794  top1 0.125  11.0 clips/s  ETA 3m09s' for logs without a progress bar."""
    rate = clips / seconds if clips and seconds > 0 else 0.0
    line = (f"step {record['step']}/{total_steps}  loss {record['loss']:.4f}  top1 {record['top1']:.3f}  "
            f"{record['clips_per_sec']:.1f} clips/s")
    if rate:
        eta = int(round((total_steps - record["step"]) * batch_size / rate))
        line += f"  ETA {eta // 3600}h{eta % 3600 // 60:02d}m" if eta >= 3600 else f"  ETA {eta // 60}m{eta % 60:02d}s"
    return line
