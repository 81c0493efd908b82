"""`plfm_series`: PLFM series of 4 monthly Sentinel-2 RGB, cloud mask and Sentinel-1 VV dates.

Built from the authors' dataset layout in `manual_dir` (see MANUAL_DOWNLOAD_INSTRUCTIONS):

    tfds build tfds_builders/plfm_series --manual_dir=RAW --data_dir=TFDS \\
        --file_format=array_record [--config=64px]

or from Python, without TensorFlow (see `plfm_jax.data.tfds_data.ensure_built`). Records follow
docs/architecture.md: s2 (4, H, W, 3) uint16, s1 (4, H, W, 1) float32 dB, cm (4, H, W) uint16,
zone, patch, months (4,) int32 1..12.

Series with unreadable or invalid files stop the build unless skipping is enabled, by the
environment variable PLFM_SKIP_INVALID=1 (the CLI's way) or `Builder(skip_invalid=True)`; every
file or folder that made series be skipped is then logged with its problem.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from plfm_jax.data.layout import MONTHS, Series, scan_dataset
from plfm_jax.data.readers import read_series, validate_scan
from plfm_jax.diskspace import check_free_space
from plfm_jax.errors import InputError

# Dates per series (docs/architecture.md: T = 4): three inputs and the target.
SERIES_LENGTH = 4
SKIP_INVALID_ENV = "PLFM_SKIP_INVALID"

_log = logging.getLogger(__name__)
# What was skipped must reach the user even where library logs are silenced (train.py sets the
# root logger to ERROR unless --debug).
_log.setLevel(logging.WARNING)


@dataclasses.dataclass(eq=False)
class PlfmSeriesConfig(tfds.core.BuilderConfig):
  """A `plfm_series` config: the stored patch size in pixels (patches must have exactly it)."""
  image_size: int = 256


def config_for_size(image_size: int) -> PlfmSeriesConfig:
  """The config named `<image_size>px`: a predefined one or a custom one for another size."""
  for config in Builder.BUILDER_CONFIGS:
    if config.image_size == image_size:
      return config
  if image_size < 1:
    raise ValueError(f"image_size must be positive, got {image_size}")
  return PlfmSeriesConfig(name=f"{image_size}px", image_size=image_size,
                          description=f"{image_size} x {image_size} px patches.")


def _env_skip_invalid() -> bool:
  value = os.environ.get(SKIP_INVALID_ENV, "").strip().lower()
  if value in ("", "0", "false", "no"):
    return False
  if value in ("1", "true", "yes"):
    return True
  raise InputError(SKIP_INVALID_ENV, f"environment variable must be 1 or 0, got {value!r}")


class Builder(tfds.core.GeneratorBasedBuilder):
  """PLFM Sentinel-1/Sentinel-2 series from the authors' layout (manual download)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: s2, s1, cm, zone, patch, months per 4-date series.",
  }
  BUILDER_CONFIGS = [
      PlfmSeriesConfig(name="256px", image_size=256,
                       description="256 x 256 px patches: the authors' dataset."),
      PlfmSeriesConfig(name="64px", image_size=64,
                       description="64 x 64 px patches: synthetic demo and test data."),
  ]
  DEFAULT_CONFIG_NAME = "256px"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the PLFM dataset from the authors' Google Drive (the links are in the README of
  https://github.com/alessandrosebastianelli/PLFM-Clouds-Removal). It holds three folders,
  `training/`, `validation/` and `test/`, each with `sen1/` and `sen2/`. Put them into
  `manual_dir`:

      manual_dir/training/{sen1,sen2}/<zone>/image_*.tif
      manual_dir/validation/{sen1,sen2}/...
      manual_dir/test/{sen1,sen2}/...

  Only the split folders present are built. A `manual_dir` holding `sen1/` and `sen2/` directly
  gives a single `train` split. Set PLFM_SKIP_INVALID=1 to leave out series with invalid files.
  """

  def __init__(self, *, skip_invalid: bool | None = None, **kwargs):
    """`skip_invalid`: leave out series with invalid files; None reads PLFM_SKIP_INVALID."""
    self._skip_invalid = _env_skip_invalid() if skip_invalid is None else skip_invalid
    # TFDS refuses a config object that merely equals a predefined one, which is what unpickling
    # (grain worker processes) produces; the predefined one is then named instead.
    config = kwargs.get("config")
    if isinstance(config, PlfmSeriesConfig) and any(
        c.name == config.name and c.image_size == config.image_size for c in self.BUILDER_CONFIGS):
      kwargs["config"] = config.name
    super().__init__(**kwargs)
    # TFDS re-creates builders from this state when it pickles them.
    self._original_state["skip_invalid"] = skip_invalid

  @property
  def skip_invalid(self) -> bool:
    """Whether series with invalid files are left out (and logged) rather than stop the build."""
    return self._skip_invalid

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    frames = (SERIES_LENGTH, size, size)
    # Raw bytes: ~10x faster to write and read than TFDS's default of one protobuf number per
    # pixel, and no larger on disk (array_record compresses its chunks).
    encoding = tfds.features.Encoding.BYTES
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "s2": tfds.features.Tensor(shape=(*frames, 3), dtype=np.uint16, encoding=encoding),
            "s1": tfds.features.Tensor(shape=(*frames, 1), dtype=np.float32, encoding=encoding),
            "cm": tfds.features.Tensor(shape=frames, dtype=np.uint16, encoding=encoding),
            "zone": tfds.features.Text(),
            "patch": tfds.features.Scalar(dtype=np.int32),
            "months": tfds.features.Tensor(shape=(SERIES_LENGTH,), dtype=np.int32),
        }),
        homepage="https://github.com/alessandrosebastianelli/PLFM-Clouds-Removal",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    size = self.builder_config.image_size
    scan = scan_dataset(dl_manager.manual_dir, series_length=SERIES_LENGTH,
                        skip_invalid=self._skip_invalid)
    self._check_free_space([len(series) for series in scan.splits.values()])
    if self._skip_invalid:
      # Checking every file up front (they are read again to write them) lets a split that loses
      # all its series be left out: TFDS cannot write an empty split.
      scan = validate_scan(scan, size, skip_invalid=True)
    for problem in scan.problems:
      _log.warning("plfm_series: skipped: %s", problem)
    splits = {split: series for split, series in scan.splits.items() if series}
    for split in scan.splits.keys() - splits.keys():
      _log.warning("plfm_series: split %s has no complete series; not built", split)
    if not splits:
      raise InputError(dl_manager.manual_dir, f"no complete series of {SERIES_LENGTH} months found")
    return {split: self._generate_examples(series) for split, series in splits.items()}

  def _check_free_space(self, series_per_split: list[int]) -> None:
    """Stops if the dataset will not fit, before any file is written (or validated, which reads
    them all)."""
    size = self.builder_config.image_size
    # Uncompressed records: s2 3 x uint16, s1 float32, cm uint16 per pixel and date.
    record = SERIES_LENGTH * size * size * (3 * 2 + 4 + 2)
    # TFDS's shuffler spills a split of over 1 GB to temporary files before writing its shards:
    # up to twice the largest split is on disk at once.
    needed = record * (sum(series_per_split) + max(series_per_split, default=0))
    check_free_space(self.data_dir_root, needed,
                     f"building {self.name}/{self.builder_config.name}")

  def _generate_examples(self, series_list: list[Series]
                         ) -> Iterator[tuple[str, dict[str, np.ndarray | str | int]]]:
    for series in series_list:
      yield series.key, {
          **read_series(series, self.builder_config.image_size),
          "zone": series.zone,
          "patch": series.patch,
          "months": np.array([MONTHS.index(m) + 1 for m in series.months], np.int32),
      }
