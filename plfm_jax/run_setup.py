"""What training and evaluation set up alike before their first step: the mesh and the dataset."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

import jax
import ml_collections

from plfm_jax import sharding
from plfm_jax.prepare import prepare_dataset


@dataclasses.dataclass(frozen=True)
class RunSetup:
  """The device mesh of a run and the dataset it reads.

  Attributes:
    mesh: `sharding.config_mesh` of the config, checked to split its batch size.
    data_config: the config's `data` section with `tfds_dir` set to the built dataset.
    splits: examples per split of that dataset.
  """
  mesh: jax.sharding.Mesh
  data_config: ml_collections.ConfigDict
  splits: dict[str, int]


def setup_run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
              devices: Sequence[jax.Device] | None = None) -> RunSetup:
  """The mesh (over `devices`, default as `sharding.config_mesh`) and the dataset, built first
  where needed (`prepare_dataset`: into `workdir` unless `data.tfds_dir` names one)."""
  # The mesh first: a batch size it cannot split is refused before a dataset is built.
  mesh = sharding.config_mesh(config, devices)
  tfds_dir, splits = prepare_dataset(config, pathlib.Path(workdir))
  data_config = config.data.copy_and_resolve_references()
  data_config.tfds_dir = tfds_dir
  return RunSetup(mesh=mesh, data_config=data_config, splits=splits)
