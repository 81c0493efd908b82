"""Scene rasters through rasterio: inputs opened and checked, windows read, outputs written.

Reading takes windows of any size (a window reaching past the scene comes back mirrored, its
pixels marked invalid); GDAL decodes only the blocks a window touches, so memory follows the
window, not the file. Writing takes row blocks from a generator into a tiled, compressed GeoTIFF
under a temporary name, renamed into place when complete; optionally a Cloud-Optimised GeoTIFF
with overviews. Outputs keep the cloudy input's CRS, geotransform and nodata.

One grid rule holds everywhere (`plfm_jax.georef.same_grid`): `align` reprojects inputs on
another grid and `check_same_grid` refuses what cannot be.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import warnings
from typing import Callable, Iterable, Iterator

import numpy as np
import rasterio
from rasterio import shutil as rio_shutil
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from plfm_jax import georef
from plfm_jax.errors import InputError

# Tiles of the written files (a multiple of 16, as TIFF requires; GDAL's default).
OUTPUT_TILE = 256
COMPRESSIONS = ("deflate", "none")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
  """Within the block, rasterio does not warn of plain TIFFs: they are fine on a grid of their
  own (dataset patches, some exports); the grid checks deal with them."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", NotGeoreferencedWarning)
    yield


@dataclasses.dataclass
class Raster:
  """An opened input: its dataset, what it holds and how to read windows of it."""
  path: pathlib.Path
  dataset: rasterio.io.DatasetReader

  @property
  def height(self) -> int:
    return self.dataset.height

  @property
  def width(self) -> int:
    return self.dataset.width

  @property
  def nodata(self) -> float | None:
    return self.dataset.nodata

  def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
    """(height, width, bands) pixels of the window at (top, left); the part beyond the scene
    mirrors the part inside (`valid` tells them apart).

    Raises:
      InputError: the file cannot be decoded there (damaged).
    """
    rows = min(height, self.height - top)
    cols = min(width, self.width - left)
    try:
      data = self.dataset.read(window=Window(left, top, cols, rows))
    except RasterioError as e:
      raise InputError(self.path, f"damaged: reading rows {top}-{top + rows} failed ({e})") from e
    data = np.moveaxis(data, 0, -1)
    if rows < height or cols < width:
      data = np.pad(data, ((0, height - rows), (0, width - cols), (0, 0)), mode="symmetric")
    return data


def valid(top: int, left: int, height: int, width: int, scene_height: int,
          scene_width: int) -> np.ndarray:
  """(height, width) bool: the pixels of a window that lie inside the scene."""
  inside = np.zeros((height, width), bool)
  inside[:max(scene_height - top, 0), :max(scene_width - left, 0)] = True
  return inside


def _check_complete(dataset: rasterio.io.DatasetReader, path: pathlib.Path) -> None:
  """Refuses a file cut short: the last block of every band must lie within the file."""
  size = path.stat().st_size
  rows = -(-dataset.height // dataset.block_shapes[0][0])
  cols = -(-dataset.width // dataset.block_shapes[0][1])
  for band in range(1, dataset.count + 1):
    offset = dataset.get_tag_item(f"BLOCK_OFFSET_{cols - 1}_{rows - 1}", "TIFF", bidx=band)
    length = dataset.get_tag_item(f"BLOCK_SIZE_{cols - 1}_{rows - 1}", "TIFF", bidx=band)
    if offset is not None and length is not None and int(offset) + int(length) > size:
      raise InputError(path, f"truncated: its last block ends at byte {int(offset) + int(length)}"
                       f", the file has {size}")


def open_raster(path: pathlib.Path, stack: contextlib.ExitStack, *, what: str,
                bands: int | tuple[int, ...], dtype_ok: Callable[[np.dtype], bool],
                dtype_wanted: str) -> Raster:
  """Opens and checks one input GeoTIFF.

  Raises:
    InputError: missing, not a readable raster, truncated, or with the wrong band count or type.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise InputError(path, f"no such file (expected {what})")
  try:
    with quiet():
      dataset = stack.enter_context(rasterio.open(path))
  except RasterioError as e:
    raise InputError(path, f"not a readable GeoTIFF ({e})") from e
  if dataset.driver == "GTiff":
    _check_complete(dataset, path)
  allowed = (bands,) if isinstance(bands, int) else bands
  if dataset.count not in allowed:
    raise InputError(path, f"has {dataset.count} band(s); {what} needs "
                     f"{' or '.join(map(str, allowed))}")
  dtype = np.dtype(dataset.dtypes[0])
  if not dtype_ok(dtype):
    raise InputError(path, f"has {dtype} pixels; {what} needs {dtype_wanted}")
  return Raster(path=path, dataset=dataset)


def check_same_grid(reference: Raster, others: Iterable[Raster]) -> None:
  """Raises InputError naming both files when an input does not share the reference's grid."""
  for other in others:
    if other.dataset.shape != reference.dataset.shape:
      raise InputError(other.path, f"size {other.width} x {other.height} differs from "
                       f"{reference.path} ({reference.width} x {reference.height}) and it cannot "
                       "be reprojected (no georeference)")
    if not georef.same_grid(reference.dataset, other.dataset):
      raise InputError(other.path, f"not on the grid of {reference.path} (CRS or geotransform "
                       "differ) and it cannot be reprojected")


class Output:
  """A GeoTIFF on a reference raster's grid, written in row blocks top to bottom under a
  temporary name and renamed into place by `commit` (`discard` drops it); as a context manager
  it commits on success and discards on an exception.

  Args:
    path: the output file.
    reference: the raster whose CRS, geotransform and size it takes.
    bands, dtype, nodata: what it holds.
    compression: "deflate" (with the horizontal predictor) or "none".
    cog: a Cloud-Optimised GeoTIFF with overviews (GDAL's COG driver) instead of a plain tiled
      one.
  """

  def __init__(self, path: pathlib.Path, *, reference: Raster, bands: int, dtype: np.dtype,
               nodata: float | None, compression: str = "deflate", cog: bool = False):
    if compression not in COMPRESSIONS:
      raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    source = reference.dataset
    self.path, self.width, self.dtype, self.cog = path, source.width, np.dtype(dtype), cog
    self.compression = compression
    profile = dict(driver="GTiff", width=source.width, height=source.height, count=bands,
                   dtype=self.dtype.name, crs=source.crs, transform=source.transform,
                   nodata=nodata, tiled=True, blockxsize=OUTPUT_TILE, blockysize=OUTPUT_TILE,
                   interleave="pixel", BIGTIFF="IF_SAFER")
    if compression == "deflate":
      profile.update(compress="deflate", predictor=2)
    if bands == 3 and source.photometric is not None:
      profile["photometric"] = source.photometric.name
    self._partial = path.with_name(f".{path.name}.partial")
    with quiet():
      self._dataset = rasterio.open(self._partial, "w", **profile)

  def write(self, first: int, rows: np.ndarray) -> None:
    """Rows [first, first + len(rows)) as (rows, width, bands)."""
    self._dataset.write(np.moveaxis(np.asarray(rows, self.dtype), -1, 0),
                        window=Window(0, first, self.width, len(rows)))

  def commit(self) -> None:
    self._dataset.close()
    if self.cog:
      converted = self.path.with_name(f".{self.path.name}.cog.partial")
      options = {"compress": "deflate", "predictor": 2} if self.compression == "deflate" else {}
      try:
        with quiet():
          rio_shutil.copy(self._partial, converted, driver="COG", blocksize=OUTPUT_TILE,
                          overview_resampling="average", **options)
        os.replace(converted, self.path)
      finally:
        converted.unlink(missing_ok=True)
        self._partial.unlink(missing_ok=True)
    else:
      os.replace(self._partial, self.path)

  def discard(self) -> None:
    self._dataset.close()
    self._partial.unlink(missing_ok=True)

  def __enter__(self) -> Output:
    return self

  def __exit__(self, kind, value, traceback) -> None:
    if kind is None:
      self.commit()
    else:
      self.discard()


def row_bands(raster: Raster, rows: int = OUTPUT_TILE) -> Iterator[tuple[int, int]]:
  """(first, stop) of bands of `rows` rows covering the raster."""
  for first in range(0, raster.height, rows):
    yield first, min(first + rows, raster.height)
