"""Device mesh, shardings, multi-process set-up and lock-step batches (jax.jit, no pmap)."""

from __future__ import annotations

import math
import os
from typing import Any, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from plfm_jax.errors import InputError

DATA_AXIS = "data"

# Environment variables that announce a multi-process launch (SLURM, Cloud TPU pods, explicit).
_MULTIPROCESS_MARKERS = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES",
                         "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize_distributed() -> None:
  """Calls jax.distributed.initialize() when launched as one of several processes.

  A single process (a laptop, one GPU box) needs nothing; on pods and under SLURM JAX finds the
  coordinator and process ids from the environment. An explicit launch sets
  JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID on every process.

  Raises:
    InputError: JAX_COORDINATOR_ADDRESS is set without the other two, or they are not numbers.
  """
  if os.environ.get("SLURM_NTASKS", "1") == "1" and not any(
      os.environ.get(m) for m in _MULTIPROCESS_MARKERS if m != "SLURM_NTASKS"):
    return
  if jax.distributed.is_initialized():
    return
  explicit = {}
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    try:
      explicit = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                      process_id=int(os.environ["JAX_PROCESS_ID"]))
    except (KeyError, ValueError) as e:
      raise InputError("JAX_COORDINATOR_ADDRESS", "an explicit multi-process launch also needs "
                       "JAX_NUM_PROCESSES and JAX_PROCESS_ID set to numbers on every process "
                       f"({type(e).__name__}: {e})") from None
  jax.distributed.initialize(**explicit)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D data-parallel mesh over `devices` (default: every device of every process)."""
  devices = list(jax.devices() if devices is None else devices)
  # Auto axes: XLA propagates shardings from the inputs (Explicit, the default here, would make
  # every op spell out its output sharding).
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


def config_mesh(config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh of a run: over `devices`, else the first `train.num_devices` of every process's
  devices (-1: all), checked to split `config.batch_size` evenly."""
  if devices is None and config.train.num_devices > 0:
    devices = jax.devices()[:config.train.num_devices]
  mesh = make_mesh(devices)
  check_batch_size(config.batch_size, mesh)
  return mesh


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


def _pad(local: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """A short last batch padded to `size` rows by repeating its last sample."""
  n = len(next(iter(local.values())))
  if n == size:
    return dict(local)
  return {k: np.concatenate([v, np.repeat(v[-1:], size - n, axis=0)]) for k, v in local.items()}


def lockstep_batches(local_batches: Iterator[Mapping[str, np.ndarray]], *, num_samples: int,
                     global_batch_size: int, mesh: Mesh, max_batches: int | None = None
                     ) -> Iterator[tuple[dict[str, jax.Array], np.ndarray]]:
  """(global batch, (B,) index of each row in the split, -1 for padding) over a split read once.

  `local_batches` is this process's evaluation iterator: process p reads samples p, p + P,
  p + 2P, ... (`pipeline.make_iterator` with train=False); its rows of a global batch follow
  those of processes 0..p-1. Every process runs as many batches as the longest shard needs
  (or `max_batches`), padding short and missing ones, so that jitted steps over the global
  batch run in lockstep on every host. Rows with index -1 must not count.
  """
  processes = jax.process_count()
  if num_samples < processes:
    raise ValueError(f"{num_samples} samples are fewer than the {processes} processes")
  local_size = global_batch_size // processes
  num_batches = math.ceil(math.ceil(num_samples / processes) / local_size)
  if max_batches is not None:
    num_batches = min(num_batches, max_batches)
  first = None
  for j in range(num_batches):
    local = next(local_batches, None)
    # A shard shorter than the longest repeats its first batch; those rows are padding.
    local = first if local is None else _pad(local, local_size)
    first = local if first is None else first
    positions = j * local_size + np.arange(local_size)
    indices = (np.arange(processes)[:, None] + processes * positions[None, :]).ravel()
    indices[indices >= num_samples] = -1
    yield global_batch(local, mesh), indices


def valid_rows(indices: np.ndarray, mesh: Mesh) -> jax.Array:
  """The (B,) float32 global array, 1 for the real rows of a `lockstep_batches` batch and 0 for
  its padding, from the batch's global `indices` (each process contributes its own rows)."""
  rows = len(indices) // jax.process_count()
  mine = indices[jax.process_index() * rows:(jax.process_index() + 1) * rows]
  return global_batch({"valid": (mine >= 0).astype(np.float32)}, mesh)["valid"]


def process_local(batch: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
  """This process's rows of a global batch (its addressable shards, in row order), as NumPy."""
  def local(x: jax.Array) -> np.ndarray:
    shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}
    return np.concatenate([np.asarray(shards[start]) for start in sorted(shards)])
  return {k: local(v) for k, v in batch.items()}
