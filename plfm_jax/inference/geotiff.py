"""GeoTIFF access for whole scenes: row bands in, tiles out, georeference tags carried over.

Reading decodes only the strips or tiles that a band of rows touches (any layout tifffile
decodes without extra codecs: uncompressed, Deflate, LZW, PackBits, contiguous or planar samples),
so memory follows the band, not the file. Writing takes row blocks from a generator and stores a
tiled GeoTIFF under a temporary name, renamed into place only when complete.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import tifffile

from plfm_jax import tiff_errors
from plfm_jax.errors import InputError

# The georeference of a GeoTIFF: tag code -> name.
GEO_TAGS = {
    33550: "ModelPixelScale",
    33922: "ModelTiepoint",
    34264: "ModelTransformation",
    34735: "GeoKeyDirectory",
    34736: "GeoDoubleParams",
    34737: "GeoAsciiParams",
    42113: "GDAL_NODATA",
}
NODATA_TAG = 42113
# GeoKeys naming the coordinate reference system: model type, geographic CRS, projected CRS.
_CRS_KEYS = (1024, 2048, 3072)
# Tiles of the written files (a multiple of 16, as TIFF requires; GDAL's default).
OUTPUT_TILE = 256
COMPRESSIONS = ("zlib", "none")
# Geotransforms agreeing to this relative precision describe the same grid (exports of one grid
# by different tools differ in the last digits).
_GRID_RTOL = 1e-9


@dataclasses.dataclass(frozen=True)
class GeoTag:
  """One TIFF tag as stored: code, TIFF data type, value count and value."""
  code: int
  dtype: int
  count: int
  value: Any

  def extratag(self) -> tuple[int, int, int | None, Any, bool]:
    """The tag in the form of tifffile's `extratags`; ASCII counts are recomputed on writing."""
    return (self.code, self.dtype, None if self.dtype == 2 else self.count, self.value, True)


def geotransform(tags: dict[int, GeoTag]) -> tuple[float, ...] | None:
  """GDAL-style affine (x0, dx/dcol, dx/drow, y0, dy/dcol, dy/drow) from the tags, or None.

  From ModelTransformation, or from ModelPixelScale and the first ModelTiepoint (the usual
  north-up case). None when neither describes an affine grid.
  """
  if 34264 in tags:
    m = [float(v) for v in tags[34264].value]
    return (m[3], m[0], m[1], m[7], m[4], m[5])
  if 33550 in tags and 33922 in tags:
    sx, sy = (float(v) for v in tags[33550].value[:2])
    i, j, _, x, y, _ = (float(v) for v in tags[33922].value[:6])
    return (x - i * sx, sx, 0.0, y + j * sy, 0.0, -sy)
  return None


def crs_keys(tags: dict[int, GeoTag]) -> dict[int, int]:
  """The GeoKeys naming the CRS (model type, EPSG codes) stored inline in GeoKeyDirectory."""
  if 34735 not in tags:
    return {}
  keys = [int(v) for v in tags[34735].value]
  entries = (keys[i:i + 4] for i in range(4, 4 + 4 * keys[3], 4))
  return {key: value for key, location, _, value in entries if location == 0 and key in _CRS_KEYS}


class Raster:
  """An open single-image TIFF read by bands of rows; use `open_raster`, close when done."""

  def __init__(self, path: pathlib.Path, tif: tifffile.TiffFile):
    self.path = path
    self._tif = tif
    page = tif.pages[0]
    self._page = page
    self.height = int(page.imagelength)
    self.width = int(page.imagewidth)
    self.bands = int(page.samplesperpixel)
    self.dtype = np.dtype(page.dtype)
    self.photometric = page.photometric
    self.tags = {code: GeoTag(code, int(tag.dtype), int(tag.count), tag.value)
                 for code in GEO_TAGS if (tag := page.tags.get(code)) is not None}
    self._planes = self.bands if page.planarconfig == 2 else 1
    if page.is_tiled:
      self._segment_rows = int(page.tilelength)
      self._segment_cols = -(-self.width // int(page.tilewidth))
    else:
      self._segment_rows = min(int(page.rowsperstrip) or self.height, self.height)
      self._segment_cols = 1
    self._segment_grid_rows = -(-self.height // self._segment_rows)
    # Byte order and type of the stored samples when they can be read without decoding.
    plain = (page.compression == 1 and page.fillorder == 1 and
             page.bitspersample == self.dtype.itemsize * 8)
    self._raw_dtype = self.dtype.newbyteorder(tif.byteorder) if plain else None

  @property
  def nodata(self) -> float | None:
    """The GDAL_NODATA value, or None."""
    tag = self.tags.get(NODATA_TAG)
    if tag is None:
      return None
    try:
      return float(str(tag.value).strip("\x00 "))
    except ValueError:
      return None

  @property
  def geotransform(self) -> tuple[float, ...] | None:
    return geotransform(self.tags)

  def check(self) -> None:
    """Checks that every strip or tile lies inside the file and that the first one decodes."""
    page = self._page
    size = self._tif.filehandle.size
    ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n]
    if not ends:
      raise InputError(self.path, "holds no image data")
    if max(ends) > size:
      raise InputError(self.path, f"truncated: image data runs to byte {max(ends)}, "
                       f"the file has {size} bytes")
    self._decode(0)

  def _decode(self, index: int) -> tuple[np.ndarray | None, tuple[int, ...], tuple[int, ...]]:
    page = self._page
    offset, count = page.dataoffsets[index], page.databytecounts[index]
    data = None
    if count:
      self._tif.filehandle.seek(offset)
      data = self._tif.filehandle.read(count)
    try:
      return page.decode(data, index, jpegtables=page.jpegtables)
    except Exception as e:  # pylint: disable=broad-except
      # Decoders report damage and unsupported codecs through many types; to a user each means
      # the same: this file cannot be read here.
      raise InputError(self.path, f"cannot decode its image data ({type(e).__name__}: {e}); "
                       "write it uncompressed or with Deflate/LZW") from e

  def _segment_rows_of(self, index: int, start: int,
                       stop: int) -> tuple[np.ndarray | None, int, int, int]:
    """(pixels, sample, top, left) of the rows of segment `index` within [start, stop).

    Uncompressed segments are read row-wise from the file, so a file stored as one strip is
    not read whole for every band of rows; others are decoded whole and cut.
    """
    page = self._page
    _, (sample, _, top, left, _), shape = page.decode(None, index)
    first, last = max(start, top), min(stop, top + shape[1])
    if self._raw_dtype is not None and page.databytecounts[index]:
      row_bytes = shape[2] * shape[3] * self._raw_dtype.itemsize
      self._tif.filehandle.seek(page.dataoffsets[index] + (first - top) * row_bytes)
      data = self._tif.filehandle.read((last - first) * row_bytes)
      if len(data) < (last - first) * row_bytes:
        raise InputError(self.path, "truncated: image data ends early")
      rows = np.frombuffer(data, self._raw_dtype).reshape(last - first, shape[2], shape[3])
      return rows, sample, first, left
    segment, _, _ = self._decode(index)
    if segment is None:
      return None, sample, first, left
    return segment[0, first - top:last - top], sample, first, left

  def read_rows(self, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) as (stop - start, width, bands), reading only the segments needed."""
    if not 0 <= start < stop <= self.height:
      raise ValueError(f"rows [{start}, {stop}) outside [0, {self.height})")
    out = np.zeros((stop - start, self.width, self.bands), self.dtype)
    first, last = start // self._segment_rows, (stop - 1) // self._segment_rows
    per_plane = self._segment_grid_rows * self._segment_cols
    for plane in range(self._planes):
      for grid_row in range(first, last + 1):
        for grid_col in range(self._segment_cols):
          index = plane * per_plane + grid_row * self._segment_cols + grid_col
          rows, sample, top, left = self._segment_rows_of(index, start, stop)
          if rows is None:
            continue
          # Tiles are padded beyond the image's right edge.
          cols = min(self.width - left, rows.shape[1])
          out[top - start:top - start + len(rows), left:left + cols,
              sample:sample + rows.shape[-1]] = rows[:, :cols]
    return out

  def row_bands(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first_row, band) for consecutive bands of `rows` rows (the last may be shorter)."""
    for start in range(0, self.height, rows):
      yield start, self.read_rows(start, min(start + rows, self.height))

  def close(self) -> None:
    self._tif.close()

  def __enter__(self) -> Raster:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def open_raster(path: str | os.PathLike, *, what: str, bands: int,
                dtype_ok: Callable[[np.dtype], bool], dtype_wanted: str) -> Raster:
  """Opens a single-image TIFF and checks its band count, dtype and data layout.

  Args:
    path: the file.
    what: what it should hold, for messages ("Sentinel-2 R, G, B").
    bands: the number of samples per pixel it must have.
    dtype_ok: accepts the file's dtype.
    dtype_wanted: what `dtype_ok` accepts, for messages ("uint16").

  Raises:
    InputError: missing, not a TIFF, several samples per image depth, wrong bands or dtype,
      truncated, damaged (tifffile logs a warning reading it), or undecodable.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise InputError(path, "no such file")
  with tiff_errors.captured_warnings() as warnings:
    try:
      tif = tifffile.TiffFile(path)
    except Exception as e:  # pylint: disable=broad-except
      raise tiff_errors.unreadable(path, e) from e
    try:
      if not tif.pages or tif.pages[0].imagedepth != 1:
        raise InputError(path, "expected a 2-D image (no pages or a volume)")
      if tif.pages[0].dtype is None:
        raise InputError(path, "unsupported sample format or bit depth")
      raster = Raster(path, tif)
      if raster.bands != bands:
        raise InputError(path, f"expected {bands} band(s) ({what}), found {raster.bands}")
      if not dtype_ok(raster.dtype):
        raise InputError(path, f"expected {what} of dtype {dtype_wanted}, found {raster.dtype}")
      raster.check()
      if warnings:
        raise tiff_errors.damaged(path, warnings)
    except Exception:
      tif.close()
      raise
  return raster


def check_same_grid(reference: Raster, others: Sequence[Raster]) -> None:
  """Checks that `others` share `reference`'s size, geotransform and CRS.

  Raises:
    InputError: on the first file that differs, naming both files.
  """
  ref_transform = reference.geotransform
  ref_crs = crs_keys(reference.tags)
  for other in others:
    def mismatch(problem: str) -> InputError:
      return InputError(other.path, f"{problem} (compared with {reference.path})")
    if (other.height, other.width) != (reference.height, reference.width):
      raise mismatch(f"size {other.height} x {other.width} differs from "
                     f"{reference.height} x {reference.width}")
    transform = other.geotransform
    if (transform is None) != (ref_transform is None):
      raise mismatch("one file is georeferenced and the other is not, so they cannot be checked "
                     "to share a grid")
    if transform is not None and not np.allclose(
        transform, ref_transform, rtol=_GRID_RTOL,
        atol=_GRID_RTOL * max(abs(v) for v in ref_transform)):
      raise mismatch(f"geotransform {transform} differs from {ref_transform}")
    crs = crs_keys(other.tags)
    differing = {k for k in crs.keys() & ref_crs.keys() if crs[k] != ref_crs[k]}
    if differing:
      raise mismatch(f"coordinate reference system GeoKeys "
                     f"{ {k: crs[k] for k in sorted(differing)} } differ from "
                     f"{ {k: ref_crs[k] for k in sorted(differing)} }")


def _tiles(blocks: Iterable[tuple[int, np.ndarray]], height: int, width: int,
           tile: int) -> Iterator[np.ndarray]:
  """Row blocks (first_row, (n, width, bands)), top to bottom, cut into row-major tiles."""
  pending: list[np.ndarray] = []
  buffered = expected = 0
  for first, block in blocks:
    if first != expected:
      raise ValueError(f"row blocks must be consecutive: expected row {expected}, got {first}")
    expected += len(block)
    pending.append(block)
    buffered += len(block)
    while buffered >= tile or (expected == height and buffered):
      rows = np.concatenate(pending) if len(pending) > 1 else pending[0]
      band, rest = rows[:tile], rows[tile:]
      for left in range(0, width, tile):
        yield np.ascontiguousarray(band[:, left:left + tile])
      pending, buffered = ([rest], len(rest)) if len(rest) else ([], 0)
  if expected != height:
    raise ValueError(f"row blocks cover {expected} rows, the image has {height}")


def write_geotiff(path: str | os.PathLike, blocks: Iterable[tuple[int, np.ndarray]], *,
                  height: int, width: int, bands: int, dtype: np.dtype,
                  tags: dict[int, GeoTag], photometric: Any = "minisblack",
                  compression: str = "zlib") -> None:
  """Writes a tiled GeoTIFF from consecutive row blocks, atomically.

  Args:
    path: destination; written under a temporary name in the same folder and renamed when
      complete (replacing an existing file), removed again if anything fails.
    blocks: (first_row, (n, width, bands) array) from top to bottom; consumed lazily, so at most
      OUTPUT_TILE rows plus one block are in memory.
    height, width, bands, dtype: the image.
    tags: georeference tags to store, e.g. an input's `Raster.tags`.
    photometric: TIFF photometric interpretation ("rgb" or "minisblack").
    compression: "zlib" (Deflate) or "none".
  """
  if compression not in COMPRESSIONS:
    raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
  path = pathlib.Path(path)
  temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
  try:
    tifffile.imwrite(
        temporary, _tiles(blocks, height, width, OUTPUT_TILE),
        shape=(height, width, bands) if bands > 1 else (height, width), dtype=dtype,
        tile=(OUTPUT_TILE, OUTPUT_TILE), photometric=photometric,
        planarconfig="contig" if bands > 1 else None,
        compression=None if compression == "none" else compression,
        extratags=[tags[code].extratag() for code in sorted(tags)], metadata=None)
    os.replace(temporary, path)
  finally:
    temporary.unlink(missing_ok=True)
