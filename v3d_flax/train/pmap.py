"""The pmap path (`--parallel pmap`): the training step under `jax.pmap` over one process's devices.

The state is held as one copy per device along a new leading axis; every local batch is split into
(devices, batch / devices, ...); gradients, the loss, the accuracies and BatchNorm's batch moments
are averaged explicitly over `PMAP_AXIS` (`jax.lax.pmean`, `BatchNorm(axis_name=...)`). It computes
what the sharded path (`v3d_flax.train.parallel.ShardedJit`) computes, behind the same interface.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from v3d_flax.train.mesh import make_mesh, replicated

PMAP_AXIS = "batch"


class Pmap:
    """`jax.pmap` over the local devices of the requested kind; a single process only."""

    axis_name = PMAP_AXIS

    def __init__(self, devices: list):
        if jax.process_count() > 1:
            raise ValueError("--parallel pmap runs in a single process; several processes use the default "
                             "sharded path")
        self.mesh = make_mesh(jax.local_devices(backend=devices[0].platform))
        # One copy per device along a new leading axis, laid out as pmap expects its inputs.
        self._stacked = NamedSharding(Mesh(self.mesh.devices, (PMAP_AXIS,)), PartitionSpec(PMAP_AXIS))

    def compile(self, step: Callable) -> Callable:
        return jax.pmap(step, axis_name=PMAP_AXIS, donate_argnums=(0,))

    def put_state(self, state: dict) -> dict:
        n = self.mesh.devices.size
        return jax.device_put(jax.tree.map(lambda x: jax.numpy.broadcast_to(x, (n, *x.shape)), state), self._stacked)

    def put_batch(self, local: dict) -> dict:
        n = self.mesh.devices.size
        return {k: np.asarray(v).reshape(n, -1, *np.shape(v)[1:]) for k, v in local.items()}

    def get_state(self, state: dict) -> dict:
        # Device 0's copy, read from its shard: indexing x[0] would be a cross-device gather.
        first = jax.tree.map(lambda x: x.addressable_shards[0].data.reshape(x.shape[1:]), state)
        return jax.device_put(first, replicated(self.mesh))

    def get_metrics(self, metrics: dict) -> dict[str, float]:
        return {k: float(np.asarray(v[0])) for k, v in jax.device_get(metrics).items()}
