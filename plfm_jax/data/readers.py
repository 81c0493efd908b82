"""Reads the S1, RGB and CM TIFFs of a series and checks shape, bands, dtype and values."""

from __future__ import annotations

import dataclasses
import os
import sys
import numpy as np
import tifffile
import tqdm

from plfm_jax.data.layout import Scan, Series
from plfm_jax.errors import InputError


def _read_tiff(path: str | os.PathLike) -> np.ndarray:
  try:
    with tifffile.TiffFile(path) as tif:
      return tif.asarray()
  except Exception as e:  # pylint: disable=broad-except
    # tifffile reports damaged files through many types (TiffFileError, ValueError, zlib.error,
    # struct.error, OSError, ...); each one means the same thing to a user: this file is unusable.
    raise InputError(path, f"not a readable TIFF ({type(e).__name__}: {e})") from e


def _channels_last(path: str | os.PathLike, image: np.ndarray, bands: int, what: str,
                   image_size: int) -> np.ndarray:
  """Returns `image` as (H, W, bands) after checking its band count and size."""
  if image.ndim == 2:
    image = image[..., None]
  elif image.ndim == 3 and image.shape[-1] != bands and image.shape[0] < image.shape[-1]:
    # Planar files (bands, H, W): the band axis is the short one.
    image = np.moveaxis(image, 0, -1)
  elif image.ndim != 3:
    raise InputError(path, f"expected a {what} image of {image_size} x {image_size} pixels, "
                     f"found an array of shape {image.shape}")
  if image.shape[-1] != bands:
    raise InputError(path, f"expected {bands} band(s) ({what}), found {image.shape[-1]}")
  if image.shape[:2] != (image_size, image_size):
    raise InputError(path, f"expected {image_size} x {image_size} pixels, "
                     f"found {image.shape[0]} x {image.shape[1]}")
  return image


def _check_uint16(path: str | os.PathLike, image: np.ndarray, what: str) -> None:
  if image.dtype != np.uint16:
    raise InputError(path, f"expected {what} of dtype uint16, found {image.dtype}")


def read_rgb(path: str | os.PathLike, image_size: int = 256) -> np.ndarray:
  """Reads a Sentinel-2 RGB image (B4, B3, B2) as (H, W, 3) uint16; planar files are transposed."""
  image = _channels_last(path, _read_tiff(path), 3, "R, G, B", image_size)
  _check_uint16(path, image, "RGB reflectance x 10000")
  return image


def read_cm(path: str | os.PathLike, image_size: int = 256) -> np.ndarray:
  """Reads a Sentinel-2 QA60 cloud mask as (H, W) uint16."""
  image = _channels_last(path, _read_tiff(path), 1, "QA60 cloud mask", image_size)
  _check_uint16(path, image, "QA60 cloud mask")
  return image[..., 0]


def read_s1(path: str | os.PathLike, image_size: int = 256) -> np.ndarray:
  """Reads a Sentinel-1 VV backscatter image in dB as (H, W) float32; it must be all finite."""
  image = _channels_last(path, _read_tiff(path), 1, "VV backscatter in dB", image_size)
  if not np.issubdtype(image.dtype, np.floating):
    raise InputError(path, f"expected VV backscatter in dB as floating point, found {image.dtype}")
  # Checked after the cast so that float64 values beyond the float32 range are caught too.
  with np.errstate(over="ignore"):
    image = image[..., 0].astype(np.float32)
  bad = image.size - int(np.count_nonzero(np.isfinite(image)))
  if bad:
    raise InputError(path, f"{bad} non-finite value(s) (NaN or inf) in VV backscatter")
  return image


def read_series(series: Series, image_size: int = 256) -> dict[str, np.ndarray]:
  """Reads every month of `series`.

  Returns s2 (T, H, W, 3) uint16, s1 (T, H, W, 1) float32 dB and cm (T, H, W) uint16.
  """
  return {
      "s2": np.stack([read_rgb(p, image_size) for p in series.rgb]),
      "s1": np.stack([read_s1(p, image_size) for p in series.s1])[..., None],
      "cm": np.stack([read_cm(p, image_size) for p in series.cm]),
  }


def validate_scan(scan: Scan, image_size: int = 256, *, skip_invalid: bool = False,
                  progress: bool = True) -> Scan:
  """Reads every file of every series once and checks its pixels.

  Strict by default: the first bad file raises its InputError. With `skip_invalid`, returns a copy
  of `scan` without the series that use a bad file, each bad file adding one line to `problems`.
  """
  # Overlapping windows share files: each file is read once and its verdict reused.
  verdicts: dict[os.PathLike, str | None] = {}
  problems = list(scan.problems)
  splits = {split: [] for split in scan.splits}
  bar = tqdm.tqdm(total=len(scan.all_series()), unit="series",
                  desc="validating", file=sys.stderr, disable=not progress)
  with bar:
    for split, series_list in scan.splits.items():
      for series in series_list:
        ok = True
        for reader, paths in ((read_s1, series.s1), (read_rgb, series.rgb), (read_cm, series.cm)):
          for path in paths:
            if path not in verdicts:
              try:
                reader(path, image_size)
                verdicts[path] = None
              except InputError as e:
                if not skip_invalid:
                  raise
                verdicts[path] = str(e)
                problems.append(str(e))
            ok = ok and verdicts[path] is None
        if ok:
          splits[split].append(series)
        bar.update()
  return dataclasses.replace(scan, splits=splits, problems=problems)
