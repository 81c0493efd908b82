"""Builds and opens the `plfm_series` TFDS dataset from Python, without TensorFlow.

The dataset is written as array_record files (the only format TFDS writes and reads without
TensorFlow) and read back through `tfds.data_source`, a random-access source for grain.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

import tensorflow_datasets as tfds

from plfm_jax.errors import InputError
from tfds_builders.plfm_series import Builder

FILE_FORMAT = "array_record"


def _builder(data_dir: str | os.PathLike | None, skip_invalid: bool = False) -> Builder:
  # An empty data_dir (the config default) means TFDS's own default: $TFDS_DATA_DIR or
  # ~/tensorflow_datasets.
  return Builder(data_dir=os.fspath(data_dir) if data_dir else None, skip_invalid=skip_invalid)


def _name(builder: Builder) -> str:
  return f"{builder.name} {builder.version}"


def is_built(data_dir: str | os.PathLike | None) -> bool:
  """Whether `plfm_series` is already built in `data_dir`."""
  return _builder(data_dir).is_prepared()


def patch_size(data_dir: str | os.PathLike | None) -> int:
  """The side in pixels of the square patches of the dataset built in `data_dir`."""
  return int(_builder(data_dir).info.metadata["patch_size"])


def ensure_built(data_dir: str | os.PathLike | None, *,
                 manual_dir: str | os.PathLike | None = None,
                 skip_invalid: bool = False) -> Builder:
  """Returns the `plfm_series` builder, built from `manual_dir` first if needed.

  Run it in one process only (e.g. before launching a multi-host job): concurrent builds of the
  same data_dir race. An existing build is reused as is, whatever `manual_dir` holds. The patch
  size comes from the data (`patch_size`).

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
  builder = _builder(data_dir, skip_invalid)
  if builder.is_prepared():
    return builder
  if not manual_dir:
    raise InputError(builder.data_dir, f"dataset {_name(builder)} is not built here and no raw "
                     "dataset (manual_dir) was given to build it from")
  manual_dir = pathlib.Path(manual_dir).expanduser()
  # TFDS itself would stop with an AssertionError and a page of instructions.
  if not manual_dir.is_dir() or not any(manual_dir.iterdir()):
    raise InputError(manual_dir, "raw dataset folder does not exist or is empty")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)),
      file_format=FILE_FORMAT)
  return builder


def data_source(data_dir: str | os.PathLike | None, split: str) -> Sequence[dict[str, Any]]:
  """Random-access source of the built `plfm_series` records of `split`.

  `split` is a split name or a TFDS slice such as `train[:80%]`. Records are dicts of NumPy
  arrays as in docs/architecture.md (`zone` as bytes, `patch` as int).

  Raises:
    InputError: the dataset is not built in `data_dir`, was built in another file format,
      lacks `split`, or `split` selects no records.
  """
  builder = _builder(data_dir)
  if not builder.is_prepared():
    raise InputError(builder.data_dir, f"dataset {_name(builder)} is not built here; build it "
                     "with plfm_jax.data.tfds_data.ensure_built or `tfds build "
                     "tfds_builders/plfm_series --file_format=array_record`")
  # Datasets that record no format were written by TFDS's default, tfrecord.
  formats = {f.value for f in builder.info.available_file_formats()} or {"tfrecord"}
  if FILE_FORMAT not in formats:
    raise InputError(builder.data_dir, f"dataset {_name(builder)} was built as "
                     f"{', '.join(formats)}; rebuild it with --file_format={FILE_FORMAT} "
                     "(readable without TensorFlow)")
  try:
    records = builder.info.splits[split].num_examples
  except (KeyError, ValueError) as e:
    raise InputError(builder.data_dir, f"dataset {_name(builder)} has no split {split!r} "
                     f"(it has: {', '.join(builder.info.splits)})") from e
  # TFDS would fail deep in array_record with "Paths sequence can not be of 0 length".
  if not records:
    raise InputError(builder.data_dir, f"split {split!r} of dataset {_name(builder)} selects "
                     "no records")
  return builder.as_data_source(split=split, file_format=FILE_FORMAT)
