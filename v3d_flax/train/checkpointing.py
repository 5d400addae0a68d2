"""Orbax checkpoints in the workdir: the latest N, the best by validation top-1, resumption.

Layout:
  <workdir>/run.json             model, dataset and classes of the run that owns the workdir
  <workdir>/checkpoints/<step>/  latest N: {"state": params, other model state (BatchNorm statistics,
                                 RNG streams), optimizer state; "meta": step, data position, config}
  <workdir>/best/<step>/         the single best checkpoint by validation top-1
Saves are asynchronous (the device-to-host copy is synchronous, the writes are not). A checkpoint
that cannot be read is moved to <workdir>/corrupt/ with a warning and the previous one is used.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings

import jax
import orbax.checkpoint as ocp

from v3d_flax.checkpoints import atomic_write, read_run_info, saved_steps, step_directory
from v3d_flax.train.state import is_key


class WorkdirError(RuntimeError):
    """The workdir belongs to another run (another model) and must not be touched."""


def check_workdir(workdir: str, model: str) -> None:
    """WorkdirError if `workdir` holds another model's run; reads only, writes nothing."""
    info = read_run_info(workdir)
    if info is None:
        ckpt = os.path.join(workdir, "checkpoints")
        for step in saved_steps(ckpt):
            meta = os.path.join(ckpt, str(step), "meta", "metadata")
            if os.path.isfile(meta):
                with open(meta) as f:
                    info = json.load(f)
                break
    if info is not None and info.get("model") != model:
        raise WorkdirError(f"workdir {workdir!r} holds checkpoints of model {info.get('model')!r}, not {model!r}; "
                           f"choose another --workdir (nothing was changed)")


def latest_saved_step(workdir: str) -> int | None:
    """The newest complete checkpoint's step in `workdir`, read without creating anything; None if none."""
    ckpt = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt):
        return None
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # orbax warns about each option a read-only manager ignores
    try:
        manager = ocp.CheckpointManager(os.path.abspath(ckpt), options=ocp.CheckpointManagerOptions(read_only=True))
        try:
            return manager.latest_step()
        finally:
            manager.close()
    finally:
        absl_logger.setLevel(level)


def write_run_info(workdir: str, info: dict) -> None:
    """Record which run owns the workdir (first process only)."""
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)

        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(info, f, indent=1)

        atomic_write(os.path.join(workdir, "run.json"), write)


def _keys_to_data(tree):
    """Typed PRNG keys -> their uint32 key data (orbax stores plain arrays)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)


def _abstract(template, sharding):
    """ShapeDtypeStructs of `template` (keys as key data) placed with `sharding` (the new mesh)."""
    def one(x):
        if is_key(x):
            data = jax.eval_shape(jax.random.key_data, x)
            return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    return jax.tree.map(one, template)


def _data_to_keys(restored, template):
    return jax.tree.map(lambda r, t: jax.random.wrap_key_data(r, impl=jax.random.key_impl(t)) if is_key(t) else r,
                        restored, template)


class Checkpointer:
    """Latest-N and best-by-top-1 orbax checkpoints of the pure training state."""

    def __init__(self, workdir: str, *, keep: int = 2, async_save: bool = True):
        self.workdir = workdir
        self.dir = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=True, create=True)
        self.latest = ocp.CheckpointManager(self.dir, options=options)
        best_options = ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda m: m["top1"], best_mode="max", keep_checkpoints_without_metrics=False,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True)
        self.best = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "best")), options=best_options)

    def save(self, step: int, state: dict, meta: dict, *, force: bool = True) -> None:
        """Start saving `state` (replicated arrays) and `meta` (JSON) as checkpoint `step`."""
        if step in self.latest.all_steps():
            return
        args = ocp.args.Composite(state=ocp.args.StandardSave(_keys_to_data(state)), meta=ocp.args.JsonSave(meta))
        self._finish_other(self.best)
        self.latest.save(step, args=args, force=force)

    def save_best(self, step: int, state: dict, meta: dict, top1: float) -> None:
        """Offer `state` as the best checkpoint; orbax keeps it only if its top-1 is the highest."""
        if step in self.best.all_steps():
            return
        args = ocp.args.Composite(state=ocp.args.StandardSave(_keys_to_data(state)), meta=ocp.args.JsonSave(meta))
        self._finish_other(self.latest)
        self.best.save(step, args=args, metrics={"top1": float(top1)}, force=True)

    @staticmethod
    def _finish_other(manager) -> None:
        """With several processes, let the other manager's asynchronous save commit first: two
        managers' background commits each synchronise all processes, and a run saving the best and
        the latest checkpoint at the same step once hung with both processes waiting (step 4 of
        tests/test_parallel.py's 2-process run)."""
        if jax.process_count() > 1:
            manager.wait_until_finished()

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self.latest.latest_step()

    def restore_latest(self, template: dict, sharding) -> tuple[int, dict, dict] | None:
        """(step, state, meta) of the newest readable checkpoint, None when there is none.

        An unreadable checkpoint is moved to <workdir>/corrupt/ with a warning and the previous
        one is tried; `template` gives the structure, `sharding` the placement on the current mesh.
        """
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                return (step, *self._restore(self.latest, step, template, sharding))
            except Exception as e:  # orbax raises many types for missing or damaged files
                warnings.warn(f"checkpoint at step {step} in {self.dir} could not be read ({type(e).__name__}: "
                              f"{str(e)[:300]}); moving it to {os.path.join(self.workdir, 'corrupt')} and "
                              f"falling back to the previous one", RuntimeWarning, stacklevel=2)
                self._quarantine(step)
        return None

    @staticmethod
    def _restore(manager, step, template, sharding):
        args = ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(template, sharding)),
                                  meta=ocp.args.JsonRestore())
        restored = manager.restore(step, args=args)
        return _data_to_keys(restored.state, template), restored.meta

    def _quarantine(self, step: int) -> None:
        if jax.process_index() == 0:
            dest = os.path.join(self.workdir, "corrupt", str(step))
            if os.path.exists(dest):
                shutil.rmtree(dest)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.move(os.path.join(self.dir, str(step)), dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"v3d_quarantine_{step}")
        self.latest.reload()

    def reached_preemption(self, step: int) -> bool:
        """True at orbax's preemption sync point (multi-host Cloud TPU maintenance events)."""
        try:
            return self.latest.reached_preemption(step)
        except Exception:  # no preemption notifier without jax.distributed
            return False

    def wait(self) -> None:
        """Block until every asynchronous save has been written."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the managers."""
        self.latest.close()
        self.best.close()


def load_orbax_params(path: str, template: dict, sharding) -> dict:
    """{"params", "rest"} from an orbax checkpoint directory written by this trainer: a workdir (its best
    checkpoint, else its newest), its checkpoints/ or best/ directory, or one step directory
    (`checkpoints.step_directory`; for --init-from)."""
    step_dir = step_directory(path)
    if step_dir is None or not os.path.basename(step_dir).isdigit():
        raise FileNotFoundError(f"no orbax checkpoint of this trainer under {os.path.abspath(path)!r}")
    manager = ocp.CheckpointManager(os.path.dirname(step_dir), options=ocp.CheckpointManagerOptions(read_only=True))
    step = int(os.path.basename(step_dir))
    # Restore only the model part; the optimizer state of another run is irrelevant here.
    sub = {"params": template["params"], "rest": template["rest"]}
    args = ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=_abstract(sub, sharding), restore_args=jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), sub),
        partial_restore=True))
    restored = manager.restore(step, args=args)
    return _data_to_keys(restored.state, sub)
