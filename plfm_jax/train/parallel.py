"""Device mesh, shardings and multi-process set-up (jax.jit with shardings, no pmap)."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"

# Environment variables that announce a multi-process launch (SLURM, Cloud TPU pods, explicit).
_MULTIPROCESS_MARKERS = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES",
                         "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize_distributed() -> None:
  """Calls jax.distributed.initialize() when launched as one of several processes.

  A single process (a laptop, one GPU box) needs nothing; on pods and under SLURM JAX finds the
  coordinator and process ids from the environment.
  """
  if os.environ.get("SLURM_NTASKS", "1") == "1" and not any(
      os.environ.get(m) for m in _MULTIPROCESS_MARKERS if m != "SLURM_NTASKS"):
    return
  if jax.distributed.is_initialized():
    return
  jax.distributed.initialize()


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D data-parallel mesh over `devices` (default: every device of every process)."""
  devices = list(jax.devices() if devices is None else devices)
  # Auto axes: XLA propagates shardings from the inputs (Explicit, the default here, would make
  # every op spell out its output sharding).
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  """The global batch must split evenly over processes and devices."""
  if global_batch_size % mesh.size:
    raise ValueError(f"batch_size {global_batch_size} is not divisible by the {mesh.size} devices "
                     "of the mesh; choose a multiple")
  if global_batch_size % jax.process_count():
    raise ValueError(f"batch_size {global_batch_size} is not divisible by the "
                     f"{jax.process_count()} processes")


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into global arrays sharded over the mesh."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Copies a pytree (parameters, optimizer state) onto every device of the mesh.

  Always a copy: train steps donate their state, which must not delete the caller's arrays.
  `may_alias=False` alone is not enough: onto several devices, the shard on the source device
  still shares the caller's buffer, so each leaf is copied first.
  """
  return jax.device_put(jax.tree.map(lambda x: jnp.array(x, copy=True), tree),
                        replicated(mesh), may_alias=False)
