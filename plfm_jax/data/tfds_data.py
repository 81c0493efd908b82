"""Opens the built `plfm_series` TFDS dataset from Python, without TensorFlow or the builder.

The dataset is written as array_record files (the only format TFDS writes and reads without
TensorFlow) by its builder (`tfds_builders/plfm_series`, which reads the raw data with this
package) and read back here from its files alone, through TFDS's read-only builder and
`as_data_source`, a random-access source for grain: reading needs no builder code, so this
package never imports the builder.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

import tensorflow_datasets as tfds

from plfm_jax.errors import InputError

NAME = "plfm_series"
# The version the builder writes and the only one read here (another version's files are not).
VERSION = "2.0.0"
FILE_FORMAT = "array_record"
_LABEL = f"{NAME} {VERSION}"


def dataset_dir(data_dir: str | os.PathLike | None) -> pathlib.Path:
  """Where TFDS keeps `plfm_series` of this version in `data_dir`.

  An empty data_dir (the config default) means TFDS's own default: $TFDS_DATA_DIR or
  ~/tensorflow_datasets.
  """
  root = data_dir or tfds.core.constants.get_default_data_dir()
  return pathlib.Path(root).expanduser() / NAME / VERSION


def is_built(data_dir: str | os.PathLike | None) -> bool:
  """Whether `plfm_series` is already built in `data_dir`."""
  # TFDS writes the dataset's info last, after renaming the finished files into place.
  return (dataset_dir(data_dir) / "dataset_info.json").is_file()


def _built(data_dir: str | os.PathLike | None) -> tfds.core.DatasetBuilder:
  """TFDS's read-only builder of the dataset built in `data_dir`."""
  if not is_built(data_dir):
    raise InputError(dataset_dir(data_dir), f"dataset {_LABEL} is not built here; build it "
                     "with tfds_builders.plfm_series.build.ensure_built or `tfds build "
                     "tfds_builders/plfm_series --file_format=array_record`")
  return tfds.builder_from_directory(dataset_dir(data_dir))


def patch_size(data_dir: str | os.PathLike | None) -> int:
  """The side in pixels of the square patches of the dataset built in `data_dir`."""
  return int(_built(data_dir).info.metadata["patch_size"])


def data_source(data_dir: str | os.PathLike | None, split: str) -> Sequence[dict[str, Any]]:
  """Random-access source of the built `plfm_series` records of `split`.

  `split` is a split name or a TFDS slice such as `train[:80%]`. Records are dicts of NumPy
  arrays as in docs/architecture.md (`zone` as bytes, `patch` as int).

  Raises:
    InputError: the dataset is not built in `data_dir`, was built in another file format,
      lacks `split`, or `split` selects no records.
  """
  builder = _built(data_dir)
  where = dataset_dir(data_dir)
  # Datasets that record no format were written by TFDS's default, tfrecord.
  formats = {f.value for f in builder.info.available_file_formats()} or {"tfrecord"}
  if FILE_FORMAT not in formats:
    raise InputError(where, f"dataset {_LABEL} was built as {', '.join(formats)}; rebuild it "
                     f"with --file_format={FILE_FORMAT} (readable without TensorFlow)")
  try:
    records = builder.info.splits[split].num_examples
  except (KeyError, ValueError) as e:
    raise InputError(where, f"dataset {_LABEL} has no split {split!r} "
                     f"(it has: {', '.join(builder.info.splits)})") from e
  # TFDS would fail deep in array_record with "Paths sequence can not be of 0 length".
  if not records:
    raise InputError(where, f"split {split!r} of dataset {_LABEL} selects no records")
  return builder.as_data_source(split=split, file_format=FILE_FORMAT)
