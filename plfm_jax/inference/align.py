"""Brings a scene's inputs onto the cloudy date's grid before `predict_scene` reads them.

Real exports rarely share one grid: the authors' downloader writes each date as a folder of
per-band GeoTIFFs, and its Sentinel-1 image lies in another UTM zone on a slightly different
grid. Here, date folders become R, G, B stacks (`plfm_jax.data.stack`), each folder's QA60 band
becomes that date's given mask (the cloudy date's unless another mask is given), and every input
not on the cloudy date's grid (`plfm_jax.georef.same_grid`) is reprojected onto it with
rasterio: bilinear for reflectance and dB, nearest for masks. What lies outside an input's footprint becomes nodata
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

from plfm_jax import georef
from plfm_jax.data import stack
from plfm_jax.errors import InputError
from plfm_jax.inference import rasters

# Least share of the cloudy date's pixels an input must cover once on its grid.
MIN_COVERAGE = 0.5


def align_inputs(inputs, scratch: pathlib.Path):
  """(inputs on the cloudy date's grid, one note per change made); new files go to `scratch`.

  `inputs` is a `scene.SceneInputs`; its `cloudy` and `history` may be date folders, whose QA60
  bands fill `cloud_mask` (when not given) and `history_masks`.

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

  def folder_qa60(path: pathlib.Path) -> pathlib.Path | None:
    qa60 = stack.band_files(path).get(stack.QA60) if path.is_dir() else None
    if qa60 is not None:
      notes.append(f"{qa60}: used as the cloud mask of its date (QA60)")
    return qa60

  cloud_mask, mask_format = inputs.cloud_mask, inputs.mask_format
  if cloud_mask is None:
    cloud_mask = folder_qa60(inputs.cloudy)
    mask_format = "qa60" if cloud_mask is not None else mask_format
  history_masks = tuple(folder_qa60(p) for p in inputs.history)
  cloudy = as_stack(inputs.cloudy, "cloudy")
  history = tuple(as_stack(p, f"history_{i}") for i, p in enumerate(inputs.history))
  if not cloudy.exists():
    raise InputError(cloudy, "no such file (expected Sentinel-2 R, G, B of the cloudy date)")
  with rasters.quiet(), rasterio.open(cloudy) as reference:
    grid = georef.Grid(reference.crs, reference.transform, reference.shape)

  def on_grid(path: pathlib.Path | None, name: str,
              resampling: warp.Resampling) -> pathlib.Path | None:
    if path is None or not path.exists():
      return path  # The readers name a missing file.
    with rasters.quiet(), rasterio.open(path) as src:
      if src.crs is None or grid.crs is None or georef.same_grid(src, grid):
        # The same grid, or one that cannot be reprojected: the readers check it.
        return path
      out = scratch / f"{name}.tif"
      _reproject(src, out, grid, resampling)
    notes.append(f"{path}: reprojected from {src.crs} onto the cloudy date's grid "
                 f"({grid.crs}, {grid.shape[1]} x {grid.shape[0]} px), {resampling.name}")
    return out

  return dataclasses.replace(
      inputs, cloudy=cloudy,
      history=tuple(on_grid(p, f"history_{i}_aligned", warp.Resampling.bilinear)
                    for i, p in enumerate(history)),
      sar=on_grid(inputs.sar, "sar_aligned", warp.Resampling.bilinear),
      cloud_mask=on_grid(cloud_mask, "cloud_mask_aligned", warp.Resampling.nearest),
      mask_format=mask_format,
      history_masks=tuple(on_grid(m, f"history_mask_{i}_aligned", warp.Resampling.nearest)
                          for i, m in enumerate(history_masks))), notes


def _reproject(src, out: pathlib.Path, grid, resampling: warp.Resampling) -> None:
  """Writes `src` reprojected onto `grid` (crs, transform, height, width) as `out`; refuses it
  when it covers less than MIN_COVERAGE of the grid."""
  crs, transform, (height, width) = grid
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
