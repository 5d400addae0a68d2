"""How the training step runs over the devices: one interface, two data-parallel paths.

`data_parallel(kind, devices)` returns a `DataParallel`:
- "jit" (`ShardedJit`, the default): the global batch sharded over a mesh of every device of every
  process, the state replicated; XLA's SPMD partitioner inserts the gradient and BatchNorm reductions.
- "pmap" (`v3d_flax.train.pmap.Pmap`): the same step under `jax.pmap` over one process's devices, with
  explicit cross-replica reductions.
The loop sees only this interface; evaluation and checkpoints always work on the replicated state
that `get_state` returns, so both paths share them.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import jax
import numpy as np
from jax.sharding import Mesh

from v3d_flax.train.mesh import batch_sharding, make_mesh, replicated, to_global

PARALLEL_KINDS = ("jit", "pmap")


class DataParallel(Protocol):
    """A data-parallel layout of the training step."""

    mesh: Mesh  # the devices a batch is split over (evaluation uses the same mesh)
    axis_name: str | None  # the axis BatchNorm and the step reduce over; None where XLA inserts reductions

    def compile(self, step: Callable) -> Callable:
        """`step(state, batch) -> (state, metrics)` compiled for this layout, the state donated."""
        ...

    def put_state(self, state: dict) -> Any:
        """The replicated training state laid out as the compiled step takes it."""
        ...

    def put_batch(self, local: dict) -> Any:
        """This process's part of a global batch (host arrays) laid out as the compiled step takes it."""
        ...

    def get_state(self, state: Any) -> dict:
        """The compiled step's state as one replicated copy on the mesh (to save or evaluate)."""
        ...

    def get_metrics(self, metrics: dict) -> dict[str, float]:
        """The compiled step's metrics as host floats."""
        ...


class ShardedJit:
    """The batch sharded over a 1-D mesh of every device of every process; state replicated."""

    axis_name = None

    def __init__(self, devices: list):
        self.mesh = make_mesh(devices)

    def compile(self, step: Callable) -> Callable:
        rep, data = replicated(self.mesh), batch_sharding(self.mesh)
        return jax.jit(step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=(0,))

    def put_state(self, state: dict) -> dict:
        return state

    def put_batch(self, local: dict) -> dict:
        return to_global(local, self.mesh)

    def get_state(self, state: dict) -> dict:
        return state

    def get_metrics(self, metrics: dict) -> dict[str, float]:
        return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}


def data_parallel(kind: str, devices: list) -> DataParallel:
    """The layout `kind` ("jit" or "pmap", see the module docstring) over `devices` (every process's)."""
    if kind == "jit":
        return ShardedJit(devices)
    if kind == "pmap":
        from v3d_flax.train.pmap import Pmap

        return Pmap(devices)
    raise ValueError(f"--parallel must be one of {', '.join(PARALLEL_KINDS)}, got {kind!r}")
