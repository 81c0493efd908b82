"""Brings a scene's inputs onto the cloudy date's grid before `predict_scene` reads them.

Real exports rarely share one grid: the authors' downloader writes each date as a folder of
per-band GeoTIFFs, and its Sentinel-1 image lies in another UTM zone on a slightly different
grid. Here, date folders become R, G, B stacks (`plfm_jax.data.stack`), a folder's QA60 band
becomes the cloud mask unless one is given, and every input whose size, geotransform or CRS
differs from the cloudy date's is reprojected onto its grid with rasterio: bilinear for
reflectance and dB, nearest for QA60. What lies outside an input's footprint becomes nodata
(0 for Sentinel-2, NaN for Sentinel-1, read as -25 dB), and an input that covers less than
MIN_COVERAGE of the cloudy date is refused. The cloudy date's own grid and georeference are never
touched: the output keeps them exactly.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import rasterio
from rasterio import warp

from plfm_jax.data import stack
from plfm_jax.errors import InputError

# Least share of the cloudy date's pixels an input must cover once on its grid.
MIN_COVERAGE = 0.5


def align_inputs(inputs, scratch: pathlib.Path):
  """(inputs on the cloudy date's grid, one note per change made); new files go to `scratch`.

  `inputs` is a `scene.SceneInputs`; its `cloudy` and `history` may be date folders.

  Raises:
    InputError: a date folder lacks a band, or an input covers too little of the cloudy date.
  """
  notes = []
  scratch = pathlib.Path(scratch)

  def as_stack(path: pathlib.Path, name: str) -> pathlib.Path:
    if not path.is_dir():
      return path
    notes.append(f"{path}: bands {', '.join(stack.RGB_BANDS)} stacked as R, G, B")
    return stack.stack_rgb(path, scratch / f"{name}.tif")

  qa60 = inputs.qa60
  if qa60 is None and inputs.cloudy.is_dir():
    qa60 = stack.band_files(inputs.cloudy).get(stack.QA60)
    if qa60 is not None:
      notes.append(f"{qa60}: used as the cloud mask")
  cloudy = as_stack(inputs.cloudy, "cloudy")
  history = tuple(as_stack(p, f"history_{i}") for i, p in enumerate(inputs.history))
  with rasterio.open(cloudy) as reference:
    grid = (reference.crs, reference.transform, reference.height, reference.width)

  def on_grid(path: pathlib.Path, name: str, resampling: warp.Resampling) -> pathlib.Path:
    with rasterio.open(path) as src:
      if (src.crs is None or grid[0] is None
          or (src.crs == grid[0] and src.transform.almost_equals(grid[1])
              and src.shape == grid[2:])):
        # The same grid, or one that cannot be reprojected: the readers check it.
        return path
      out = scratch / f"{name}.tif"
      _reproject(src, out, grid, resampling)
    notes.append(f"{path}: reprojected from {src.crs} onto the cloudy date's grid "
                 f"({grid[0]}, {grid[3]} x {grid[2]} px), {resampling.name}")
    return out

  history = tuple(on_grid(p, f"history_{i}_aligned", warp.Resampling.bilinear)
                  for i, p in enumerate(history))
  sar = on_grid(inputs.sar, "sar_aligned", warp.Resampling.bilinear)
  if qa60 is not None:
    qa60 = on_grid(qa60, "qa60_aligned", warp.Resampling.nearest)
  return dataclasses.replace(inputs, cloudy=cloudy, history=history, sar=sar, qa60=qa60), notes


def _reproject(src, out: pathlib.Path, grid, resampling: warp.Resampling) -> None:
  """Writes `src` reprojected onto `grid` (crs, transform, height, width) as `out`; refuses it
  when it covers less than MIN_COVERAGE of the grid."""
  crs, transform, height, width = grid
  floating = np.issubdtype(np.dtype(src.dtypes[0]), np.floating)
  dtype = np.float32 if floating else np.dtype(src.dtypes[0])
  nodata = np.nan if floating else (src.nodata if src.nodata is not None else 0)
  source = src.read(masked=False).astype(dtype)
  destination = np.full((src.count, height, width), nodata, dtype)
  # Pixels whose value comes from the source: 1 reprojected the same way, 0 outside.
  covered = np.zeros((height, width), np.float32)
  warp.reproject(source, destination, src_transform=src.transform, src_crs=src.crs,
                 src_nodata=nodata, dst_transform=transform,
                 dst_crs=crs, dst_nodata=nodata, resampling=resampling)
  warp.reproject(np.ones(src.shape, np.float32), covered, src_transform=src.transform,
                 src_crs=src.crs, dst_transform=transform, dst_crs=crs, dst_nodata=0,
                 resampling=warp.Resampling.nearest)
  coverage = float(covered.mean())
  if coverage < MIN_COVERAGE:
    raise InputError(src.name, f"covers only {coverage:.0%} of the cloudy date's footprint once "
                     f"reprojected onto its grid; at least {MIN_COVERAGE:.0%} is needed")
  profile = dict(driver="GTiff", count=src.count, dtype=dtype, crs=crs, transform=transform,
                 height=height, width=width, nodata=nodata, interleave="pixel")
  with rasterio.open(out, "w", **profile) as dst:
    dst.write(destination)
