"""`plfm_series`: PLFM series of 4 monthly Sentinel-2 RGB, cloud mask and Sentinel-1 VV dates.

Built from the authors' dataset layout in `manual_dir` (see MANUAL_DOWNLOAD_INSTRUCTIONS):

    tfds build tfds_builders/plfm_series --manual_dir=RAW --data_dir=TFDS \\
        --file_format=array_record

or from Python, without TensorFlow (`tfds_builders.plfm_series.build.ensure_built`), and read
by `plfm_jax.data.tfds_data` from the files alone (the name and version come from there, so that
both agree). Records follow docs/architecture.md: s2 (4, H, W, 3) uint16, s1 (4, H, W, 1)
float32 dB, cm (4, H, W) uint16, zone, patch, months (4,) int32 1..12. The patch size H = W
comes from the data (every file must have the size of the first RGB image) and is recorded in
the dataset's metadata, `patch_size`.

Series with unreadable or invalid files stop the build unless the builder is made with
`skip_invalid=True` (under `tfds build`, which makes the builder itself: PLFM_SKIP_INVALID=1);
every file or folder that made series be skipped is then logged with its problem. Under the
`tfds build` command line, a bad input ends the command with its one-line error and exit code 2.
"""

from __future__ import annotations

import logging
import sys
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from plfm_jax.data.layout import MONTHS, SERIES_LENGTH, Series, scan_dataset, \
    skip_invalid_requested
from plfm_jax.data import tfds_data
from plfm_jax.data.readers import raw_patch_size, read_series, validate_scan
from plfm_jax.diskspace import check_free_space
from plfm_jax.errors import InputError

# The module the `tfds build` command line runs in; only that command turns input errors into a
# one-line message and an exit (from Python they are raised).
_TFDS_CLI_MODULE = "tensorflow_datasets.scripts.cli.build"

_log = logging.getLogger(__name__)


class Builder(tfds.core.GeneratorBasedBuilder):
  """PLFM Sentinel-1/Sentinel-2 series from the authors' layout (manual download)."""

  name = tfds_data.NAME
  VERSION = tfds.core.Version(tfds_data.VERSION)
  RELEASE_NOTES = {
      "1.0.0": "Initial release: s2, s1, cm, zone, patch, months per 4-date series.",
      "2.0.0": "One dataset for every patch size (taken from the files, metadata `patch_size`) "
               "instead of one builder config per size.",
  }
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
    """`skip_invalid`: leave out series with invalid files instead of stopping at the first.

    None reads PLFM_SKIP_INVALID: `tfds build` and `tfds.builder` make the builder themselves and
    have no other way to say it. Other arguments are TFDS's (`data_dir`, `file_format`, ...).
    """
    super().__init__(**kwargs)
    self.skip_invalid = skip_invalid_requested() if skip_invalid is None else skip_invalid

  def _info(self) -> tfds.core.DatasetInfo:
    frames = (SERIES_LENGTH, None, None)
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
        metadata=tfds.core.MetadataDict(),
        homepage="https://github.com/alessandrosebastianelli/PLFM-Clouds-Removal",
    )

  def _download_and_prepare(self, dl_manager, download_config):
    try:
      return super()._download_and_prepare(dl_manager, download_config)
    except InputError as e:
      if _TFDS_CLI_MODULE not in sys.modules:
        raise
      # The command line would print a page of traceback around the one line that matters.
      print(f"error: {e}", file=sys.stderr)
      raise SystemExit(2) from None

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    scan = scan_dataset(dl_manager.manual_dir, skip_invalid=self.skip_invalid)
    size = raw_patch_size(scan)
    self.info.metadata["patch_size"] = size
    _log.info("plfm_series: %d px patches", size)
    self._check_free_space(size, [len(series) for series in scan.splits.values()])
    if self.skip_invalid:
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
    return {split: self._generate_examples(series, size) for split, series in splits.items()}

  def _check_free_space(self, size: int, series_per_split: list[int]) -> None:
    """Stops if the dataset will not fit, before any file is written (or validated, which reads
    them all)."""
    # Uncompressed records: s2 3 x uint16, s1 float32, cm uint16 per pixel and date.
    record = SERIES_LENGTH * size * size * (3 * 2 + 4 + 2)
    # TFDS's shuffler spills a split of over 1 GB to temporary files before writing its shards:
    # up to twice the largest split is on disk at once.
    needed = record * (sum(series_per_split) + max(series_per_split, default=0))
    check_free_space(self.data_dir_root, needed,
                     f"building {self.name} of {size} px patches")

  def _generate_examples(self, series_list: list[Series], size: int
                         ) -> Iterator[tuple[str, dict[str, np.ndarray | str | int]]]:
    for series in series_list:
      yield series.key, {
          **read_series(series, size),
          "zone": series.zone,
          "patch": series.patch,
          "months": np.array([MONTHS.index(m) + 1 for m in series.months], np.int32),
      }
