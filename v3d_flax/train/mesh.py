"""Devices, processes and the data-parallel mesh.

Training is data parallel: the global batch is sharded over a 1-D mesh ("data") of every device of
every process; parameters, optimizer state and BatchNorm statistics are replicated, so XLA's SPMD
partitioner inserts exactly the reductions data parallelism needs (gradients and batch moments).
"""

from __future__ import annotations

import numpy as np

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


class AcceleratorError(RuntimeError):
    """The requested accelerator is not available; the message names the devices JAX did find."""


def init_distributed(coordinator_address: str | None, num_processes: int | None,
                     process_id: int | None) -> None:
    """Start jax.distributed when asked to, or when a cluster environment announces several workers.

    Explicit flags take precedence; otherwise Cloud TPU pods, SLURM and Open MPI are detected by
    `jax.distributed.initialize()` itself. A single local process needs nothing.
    """
    given = [coordinator_address is not None, num_processes is not None, process_id is not None]
    if any(given):
        if not all(given):
            raise ValueError("--coordinator-address, --num-processes and --process-id go together")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process-id must be in [0, {num_processes}), got {process_id}")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        return
    if _cluster_environment():
        jax.distributed.initialize()


def _cluster_environment() -> bool:
    import os

    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    # Multi-host Cloud TPU slices list several worker hostnames.
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def select_devices(accelerator: str) -> list:
    """All devices of the requested kind across processes; AcceleratorError when there are none."""
    platform = {"cpu": "cpu", "gpu": "gpu", "tpu": "tpu"}[accelerator]
    try:
        devices = jax.devices(platform)
    except RuntimeError:
        devices = []
    if not devices:
        found = ", ".join(sorted({f"{d.platform}:{d.device_kind}" for d in jax.devices()})) or "none"
        raise AcceleratorError(f"--accelerator {accelerator} requested but JAX found no {accelerator.upper()} "
                               f"device; devices found: {found} ({jax.device_count()} in total)")
    return devices


def make_mesh(devices: list) -> Mesh:
    """A 1-D data-parallel mesh over `devices` (process-major order, as jax.devices() lists them)."""
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds a full copy."""
    return NamedSharding(mesh, P())


def check_batch_divides(global_batch: int, mesh: Mesh, what: str = "--batch-size") -> None:
    """ValueError unless `global_batch` splits evenly over the mesh's devices and the processes."""
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(f"{what} {global_batch} does not divide over {n} devices; use a multiple of {n}")
    if global_batch % jax.process_count():
        raise ValueError(f"{what} {global_batch} does not divide over {jax.process_count()} processes")


def to_global(local_batch: dict, mesh: Mesh) -> dict:
    """Assemble each process's contiguous shard of the global batch into global batch-sharded arrays."""
    sharding = batch_sharding(mesh)
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        global_shape = (value.shape[0] * jax.process_count(), *value.shape[1:])
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out
