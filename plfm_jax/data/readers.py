"""Reads the S1, RGB and CM TIFFs of a series and checks shape, bands, dtype and values."""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import tifffile
import tqdm

from plfm_jax.data import tiff_errors
from plfm_jax.data.layout import Scan, Series
from plfm_jax.errors import InputError


def _read_tiff(path: str | os.PathLike, bands: int, what: str,
               image_size: int | None) -> np.ndarray:
  """Decodes the first image of a TIFF as (H, W, bands), checking its declared shape first
  (image_size x image_size pixels; None: any size).

  The shape in the header is checked before any pixel is decoded: a damaged header can declare
  billions of pixels, whose allocation would exhaust the memory instead of naming the file.
  """
  shape_error = None
  with tiff_errors.captured_warnings() as warnings:
    try:
      with tifffile.TiffFile(path) as tif:
        if not tif.series:
          raise InputError(path, "not a readable TIFF (it holds no image)")
        declared = tif.series[0].shape
        planar = _is_planar(path, declared, bands, what, image_size)
        image = tif.series[0].asarray()
    except InputError as e:
      shape_error = e
    except Exception as e:  # pylint: disable=broad-except
      raise tiff_errors.unreadable(path, e) from e
  if warnings:
    # Damage also explains a declared shape that looks wrong.
    raise tiff_errors.damaged(path, warnings) from shape_error
  if shape_error is not None:
    raise shape_error
  if image.shape != declared:
    raise InputError(path, f"not a readable TIFF (declares shape {declared}, "
                     f"decodes to {image.shape})")
  if image.ndim == 2:
    return image[..., None]
  return np.moveaxis(image, 0, -1) if planar else image


def _is_planar(path: str | os.PathLike, shape: tuple[int, ...], bands: int, what: str,
               image_size: int | None) -> bool:
  """Whether an image of `shape` stores its bands first; raises unless it is one `what` image
  of `bands` bands and image_size x image_size pixels (None: any size)."""
  if len(shape) == 2:
    shape = (*shape, 1)
  elif len(shape) != 3:
    raise InputError(path, f"expected one {what} image, found an array of shape {tuple(shape)}")
  # Planar files (bands, H, W): the band axis is the short one.
  planar = shape[-1] != bands and shape[0] < shape[-1]
  if planar:
    shape = (*shape[1:], shape[0])
  if shape[-1] != bands:
    raise InputError(path, f"expected {bands} band(s) ({what}), found {shape[-1]}")
  if image_size is not None and shape[:2] != (image_size, image_size):
    raise InputError(path, f"expected {image_size} x {image_size} pixels, "
                     f"found {shape[0]} x {shape[1]}")
  return planar


def _check_uint16(path: str | os.PathLike, image: np.ndarray, what: str) -> None:
  if image.dtype != np.uint16:
    raise InputError(path, f"expected {what} of dtype uint16, found {image.dtype}")


def read_rgb(path: str | os.PathLike, image_size: int | None = None) -> np.ndarray:
  """Reads a Sentinel-2 RGB image (B4, B3, B2) as (H, W, 3) uint16; planar files are transposed."""
  image = _read_tiff(path, 3, "R, G, B", image_size)
  _check_uint16(path, image, "RGB reflectance x 10000")
  return image


def read_cm(path: str | os.PathLike, image_size: int | None = None) -> np.ndarray:
  """Reads a Sentinel-2 QA60 cloud mask as (H, W) uint16."""
  image = _read_tiff(path, 1, "QA60 cloud mask", image_size)
  _check_uint16(path, image, "QA60 cloud mask")
  return image[..., 0]


def read_s1(path: str | os.PathLike, image_size: int | None = None) -> np.ndarray:
  """Reads a Sentinel-1 VV backscatter image in dB as (H, W) float32; it must be all finite."""
  image = _read_tiff(path, 1, "VV backscatter in dB", image_size)
  if not np.issubdtype(image.dtype, np.floating):
    raise InputError(path, f"expected VV backscatter in dB as floating point, found {image.dtype}")
  # Checked after the cast so that float64 values beyond the float32 range are caught too.
  with np.errstate(over="ignore"):
    image = image[..., 0].astype(np.float32)
  bad = image.size - int(np.count_nonzero(np.isfinite(image)))
  if bad:
    raise InputError(path, f"{bad} non-finite value(s) (NaN or inf) in VV backscatter")
  return image


def raw_patch_size(scan: Scan) -> int:
  """The side of the dataset's square patches: that of its first readable RGB image.

  Every reader then checks each file against it. With no readable RGB image, raises the first
  one's error.
  """
  first_error = None
  for path in (p for series in scan.all_series() for p in series.rgb):
    try:
      image = read_rgb(path, None)
    except InputError as e:
      first_error = first_error or e
      continue
    if image.shape[0] != image.shape[1]:
      raise InputError(path, f"patches must be square, found {image.shape[0]} x {image.shape[1]} "
                       "pixels")
    return image.shape[0]
  if first_error is not None:
    raise first_error
  raise InputError(scan.root, "no series found")


def read_series(series: Series, image_size: int) -> dict[str, np.ndarray]:
  """Reads every month of `series`; every image must have image_size x image_size pixels.

  Returns s2 (T, H, W, 3) uint16, s1 (T, H, W, 1) float32 dB and cm (T, H, W) uint16.
  """
  return {
      "s2": np.stack([read_rgb(p, image_size) for p in series.rgb]),
      "s1": np.stack([read_s1(p, image_size) for p in series.s1])[..., None],
      "cm": np.stack([read_cm(p, image_size) for p in series.cm]),
  }


def validate_scan(scan: Scan, image_size: int, *, skip_invalid: bool = False,
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
