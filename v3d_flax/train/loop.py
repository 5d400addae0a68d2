"""The training loop: `run(config)` trains (or evaluates) one model and writes the workdir.

data -> global batch-sharded arrays -> jitted pure step (state donated) -> metrics, checkpoints.
Resumption is exact: a checkpoint holds the model state (BatchNorm statistics and dropout RNG
streams included), the optimizer state, the step, the input position (the batch at step k depends
only on the seed and k) and the metrics of the unfinished logging window, so a run killed at any
point and restarted logs the same losses as one that was never interrupted.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time

import jax
import numpy as np

from v3d_flax.train import checkpointing, evaluation
from v3d_flax.train.config import TrainConfig, resolve
from v3d_flax.train.mesh import (check_batch_divides, init_distributed, make_mesh, replicated, select_devices,
                                 to_global)
from v3d_flax.train.metrics import MetricsLogger, format_summary, read_metrics
from v3d_flax.train.plotting import plot_curves
from v3d_flax.train.state import (PMAP_AXIS, build_model, build_optimizer, count_params, init_state,
                                  make_data_init, split_model)
from v3d_flax.train.steps import (jit_train_step, make_train_step, pmap_train_step)

METRIC_KEYS = ("loss", "top1", "top5", "grad_norm", "lr")  # logged per window


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


class _Preemption:
    """SIGTERM (Cloud's preemption notice) sets a flag the loop checks between steps."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def install(self) -> None:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def run(config: TrainConfig) -> dict:
    """Train (or with `eval_only`, evaluate) as `config` says; returns the final metrics.

    Raises AcceleratorError, WorkdirError, ValueError (bad settings) and TrainingDiverged.
    """
    init_distributed(config.coordinator_address, config.num_processes, config.process_id)
    devices = select_devices(config.accelerator)
    config = resolve(config)
    if config.parallel == "pmap" and jax.process_count() > 1:
        raise ValueError("--parallel pmap runs in a single process; several processes use the default sharded path")
    checkpointing.check_workdir(config.workdir, config.model)  # before anything is written

    from v3d_flax import data

    info = data.dataset_info(config.dataset, data_dir=config.data_dir)
    mesh = make_mesh(devices if config.parallel == "jit" else jax.local_devices(backend=devices[0].platform))
    micro_batch = config.batch_size // config.grad_accum
    check_batch_divides(micro_batch, mesh, "--batch-size / --grad-accum")
    check_batch_divides(config.eval_batch_size, mesh, "the evaluation batch size")

    model = build_model(config.model, num_classes=info.num_classes, num_frames=config.num_frames,
                        crop_size=config.crop_size, seed=config.seed, remat=config.remat,
                        bn_axis_name=PMAP_AXIS if config.parallel == "pmap" else None, dropout=config.dropout)
    if config.init_from and os.path.isfile(config.init_from):
        _init_from_torch(model, config)
    defs, model_state = split_model(model)
    tx, schedule = build_optimizer(config, config.steps)
    rep = replicated(mesh)
    state = jax.device_put(init_state(model_state, tx), rep)
    if config.init_from and not os.path.isfile(config.init_from):
        loaded = checkpointing.load_orbax_params(config.init_from, state, rep)
        state = {**state, **loaded}

    checkpointing.write_run_info(config.workdir, {"model": config.model, "dataset": config.dataset,
                                                  "num_classes": info.num_classes, "config": config.to_json()})
    ckpt = checkpointing.Checkpointer(config.workdir, keep=config.keep_checkpoints)
    logger = MetricsLogger(config.workdir, progress=config.progress)
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

    evaluator = evaluation.Evaluator(defs, config, mesh, info)
    t_start = time.time()
    try:
        if config.eval_only:
            result = evaluator(state, step=start_step)
            logger.log(result)
            logger.print(f"eval top1 {result['top1']:.4f} top5 {result['top5']:.4f} "
                         f"video top1 {result['video_top1']:.4f} ({result['views']} views)")
            return result
        result = _train(config, defs, tx, schedule, state, start_step, window, mesh, info, ckpt, logger, evaluator,
                        data_init=data_init)
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


def _init_from_torch(model, config: TrainConfig) -> None:
    """Load a PyTorch checkpoint through v3d_flax.port; a classifier of another size stays fresh."""
    from v3d_flax.port import PortError, from_torch, load_torch_checkpoint

    report = from_torch(model, load_torch_checkpoint(config.init_from), source=config.init_source, strict=False)
    if report.missing or report.unexpected:
        raise PortError(f"--init-from {config.init_from} does not fit {config.model}: {report.describe()}")
    if report.mismatched and jax.process_index() == 0:
        print(f"--init-from: kept fresh weights for differently shaped tensors: {', '.join(report.mismatched)}")


def _train(config, defs, tx, schedule, state, start_step, window, mesh, info, ckpt, logger, evaluator, *,
           data_init: bool = False) -> dict:
    from v3d_flax import data

    micro_batch = config.batch_size // config.grad_accum
    batches = data.train_batches(
        config.dataset, data_dir=config.data_dir, global_batch_size=micro_batch, num_frames=config.num_frames,
        crop_size=config.crop_size, model_name=config.model, seed=config.seed,
        start_step=start_step * config.grad_accum, stop_step=config.steps * config.grad_accum,
        process_index=jax.process_index(),
        process_count=jax.process_count())
    if data_init:
        first = next(batches)
        batches = itertools.chain([first], batches)
        video = first["video"] if config.parallel == "pmap" else to_global(first, mesh)["video"]
        init = jax.jit(make_data_init(defs), out_shardings=replicated(mesh))
        state = {**state, "params": init(state["params"], state["rest"], video)}
        logger.print("data-dependent init: every layer rescaled to unit-variance outputs on the first batch")
    step_fn = make_train_step(defs, tx, schedule, num_classes=info.num_classes,
                              label_smoothing=config.label_smoothing, precision=config.precision,
                              grad_accum=config.grad_accum,
                              axis_name=PMAP_AXIS if config.parallel == "pmap" else None)
    pmap = config.parallel == "pmap"
    if pmap:
        train_step = pmap_train_step(step_fn, PMAP_AXIS)
        n = mesh.devices.size
        # One copy per local device along a new leading axis, laid out as pmap expects its inputs.
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        stacked = NamedSharding(Mesh(mesh.devices, (PMAP_AXIS,)), PartitionSpec(PMAP_AXIS))
        state = jax.device_put(jax.tree.map(lambda x: jax.numpy.broadcast_to(x, (n, *x.shape)), state), stacked)
    else:
        train_step = jit_train_step(step_fn, mesh)

    def host_state():
        if not pmap:
            return state
        # Device 0's copy, read from its shard: indexing x[0] would be a cross-device gather.
        first = jax.tree.map(lambda x: x.addressable_shards[0].data.reshape(x.shape[1:]), state)
        return jax.device_put(first, replicated(mesh))

    preemption = _Preemption()
    preemption.install()
    pending = []  # device metrics of steps not yet fetched
    last_good = ckpt.latest_step()
    last_eval = None
    bar = logger.bar(config.steps, initial=start_step)
    timer, clips = None, 0

    def fetch() -> None:
        """Move pending device metrics into the window; stop on a non-finite loss."""
        nonlocal pending
        for k, m in pending:
            m = {key: float(np.asarray(v if not pmap else v[0])) for key, v in jax.device_get(m).items()}
            if not (np.isfinite(m["loss"]) and np.isfinite(m["update_norm"])):
                what = f"the loss became {m['loss']}" if not np.isfinite(m["loss"]) else "the update became non-finite"
                raise TrainingDiverged(
                    f"{what} at step {k}; stopping. The last good checkpoint "
                    f"({'step ' + str(last_good) if last_good is not None else 'none'}) is kept in {ckpt.dir}; "
                    f"lower --lr, raise --warmup-steps or use --precision fp32")
            window.append(m)
        pending = []

    def save(step: int) -> None:
        nonlocal last_good
        fetch()
        ckpt.save(step, host_state(), {"model": config.model, "step": step, "data_step": step * config.grad_accum,
                                       "window": window, "config": config.to_json()})
        last_good = step

    try:
        for step in range(start_step, config.steps):
            for _ in range(config.grad_accum):
                local = next(batches)
                batch = _pmap_batch(local, len(mesh.devices.flat)) if pmap else to_global(local, mesh)
                state, metrics = train_step(state, batch)
            done = step + 1
            pending.append((done, metrics))
            if timer is None:  # the first step compiles: time from its end
                jax.block_until_ready(metrics)
                timer, clips = time.perf_counter(), 0
            else:
                clips += config.batch_size
            bar.update(1)
            if done % config.log_every == 0 or done == config.steps:
                fetch()
                elapsed = time.perf_counter() - timer
                record = {"step": done, "split": "train",
                          **{k: float(np.mean([m[k] for m in window])) for k in METRIC_KEYS if k != "lr"},
                          "lr": window[-1]["lr"], "clips_per_sec": clips / elapsed if clips and elapsed > 0 else 0.0}
                logger.log(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", top1=f"{record['top1']:.2f}")
                window.clear()
                timer, clips = time.perf_counter(), 0
            if config.eval_every and done % config.eval_every == 0 or done == config.steps:
                fetch()
                last_eval = evaluator(host_state(), step=done)
                logger.log(last_eval)
                ckpt.save_best(done, host_state(), {"model": config.model, "step": done}, last_eval["top1"])
                timer, clips = time.perf_counter(), 0
            if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == config.steps:
                save(done)
            if preemption.requested or ckpt.reached_preemption(done):
                save(done)
                ckpt.wait()
                bar.close()
                logger.print(f"preemption notice: saved the checkpoint at step {done}; exiting")
                return {"step": done, "preempted": True}
    finally:
        preemption.uninstall()
        bar.close()
    ckpt.wait()
    return last_eval if last_eval is not None else {"step": config.steps}


def _pmap_batch(local: dict, n: int) -> dict:
    """(B, ...) host arrays -> (n, B / n, ...) for pmap."""
    return {k: np.asarray(v).reshape(n, -1, *np.shape(v)[1:]) for k, v in local.items()}
