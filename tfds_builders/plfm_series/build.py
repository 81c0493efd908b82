"""Builds the `plfm_series` TFDS dataset from Python, without TensorFlow.

What `tfds build tfds_builders/plfm_series --file_format=array_record` does, with one-line input
errors; `plfm_jax.data.tfds_data` reads the result.
"""

from __future__ import annotations

import os
import pathlib

import tensorflow_datasets as tfds

from plfm_jax.data.tfds_data import FILE_FORMAT
from plfm_jax.errors import InputError
from tfds_builders.plfm_series import Builder


def ensure_built(data_dir: str | os.PathLike | None, *,
                 manual_dir: str | os.PathLike | None = None,
                 skip_invalid: bool = False) -> Builder:
  """Returns the `plfm_series` builder, built from `manual_dir` first if needed.

  Run it in one process only (e.g. before launching a multi-host job): concurrent builds of the
  same data_dir race. An existing build is reused as is, whatever `manual_dir` holds. The patch
  size comes from the data (`tfds_data.patch_size`).

  Args:
    data_dir: TFDS data directory holding or receiving the dataset (empty: the TFDS default).
    manual_dir: raw dataset in the authors' layout (split folders training/, validation/, test/
      with sen1/ and sen2/, or sen1/ and sen2/ directly for a single train split).
    skip_invalid: leave out series with invalid files (each is logged) instead of stopping at
      the first.

  Raises:
    InputError: the dataset is not built and `manual_dir` is not given, does not exist, is empty
      or holds invalid data.
  """
  # An empty data_dir (the config default) means TFDS's own default: $TFDS_DATA_DIR or
  # ~/tensorflow_datasets.
  builder = Builder(data_dir=os.fspath(data_dir) if data_dir else None, skip_invalid=skip_invalid)
  if builder.is_prepared():
    return builder
  if not manual_dir:
    raise InputError(builder.data_dir, f"dataset {builder.name} {builder.version} is not built "
                     "here and no raw dataset (manual_dir) was given to build it from")
  manual_dir = pathlib.Path(manual_dir).expanduser()
  # TFDS itself would stop with an AssertionError and a page of instructions.
  if not manual_dir.is_dir() or not any(manual_dir.iterdir()):
    raise InputError(manual_dir, "raw dataset folder does not exist or is empty")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)),
      file_format=FILE_FORMAT)
  return builder
