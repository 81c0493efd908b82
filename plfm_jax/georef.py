"""The one rule for when two rasters share a grid, for every reader of georeferenced inputs."""

from __future__ import annotations

from typing import Any, NamedTuple

# Geotransforms equal to this fraction of a pixel are the same grid (exports of one grid by
# different tools differ in the last digits).
GRID_PRECISION = 1e-6


class Grid(NamedTuple):
  """A raster's grid, as rasterio datasets give it: what `same_grid` compares."""
  crs: Any
  transform: Any
  shape: tuple[int, int]


def same_grid(a, b) -> bool:
  """Whether rasterio datasets (or `Grid`s) `a` and `b` share a grid: the same CRS,
  geotransforms equal to GRID_PRECISION of a pixel and the same size."""
  return (a.crs == b.crs and tuple(a.shape) == tuple(b.shape)
          and a.transform.almost_equals(b.transform, precision=GRID_PRECISION))
