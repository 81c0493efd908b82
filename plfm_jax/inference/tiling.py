"""Sliding windows over a scene and feathered blending of per-window predictions.

A scene of any size is covered by square windows of the model's size that overlap by at least
`overlap` pixels; windows at the right and bottom edges are moved back so that none leaves the
scene (a scene smaller than a window gets one window, which the caller pads). Every window's
prediction is weighted by a feather that falls off linearly over `overlap` pixels towards the
window's edges and the weighted predictions are normalised by the summed weights, so each output
pixel is a convex combination of the windows covering it: constant inputs stay exactly constant,
and a difference between neighbouring windows fades over the overlap instead of showing as a seam.

Blending works on a stream of windows in row-major order and hands out rows as soon as no later
window can touch them, so memory holds one row of windows (window height x scene width), not
the scene.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Iterator

import numpy as np


def window_starts(length: int, tile: int, overlap: int) -> np.ndarray:
  """Start offsets of windows of `tile` pixels covering [0, length) with >= `overlap` overlap.

  The first window starts at 0 and the last ends at `length`; the ones between are spread evenly,
  so the overlaps differ by at most one pixel. `length <= tile` gives the single start 0.
  """
  if tile < 1 or not 0 <= overlap < tile:
    raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile {tile}, overlap {overlap}")
  if length < 1:
    raise ValueError(f"length must be positive, got {length}")
  if length <= tile:
    return np.zeros(1, np.int64)
  count = math.ceil((length - tile) / (tile - overlap)) + 1
  return np.round(np.linspace(0, length - tile, count)).astype(np.int64)


def own_parts(starts: np.ndarray, tile: int, length: int) -> list[tuple[int, int]]:
  """For each window of `tile` px at `starts` along an axis of `length`, the [low, high) offsets
  inside it of the pixels nearer its centre than any other window's: together the windows' own
  parts cover the axis once."""
  centres = [int(s) + tile / 2 for s in starts]
  bounds = [0] + [int((a + b) // 2) for a, b in zip(centres, centres[1:])] + [length]
  return [(bounds[k] - int(s), min(bounds[k + 1], length) - int(s))
          for k, s in enumerate(starts)]


def feather(tile: int, overlap: int) -> np.ndarray:
  """1-D window weights (tile,) float32: a linear ramp over `overlap` pixels at both ends.

  Strictly positive, so pixels that only one window covers (scene borders) keep its value.
  """
  position = np.arange(tile, dtype=np.float32)
  ramp = np.float32(overlap + 1)
  return np.minimum(1.0, np.minimum(position + 1, tile - position) / ramp).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class TileGrid:
  """The windows of a `height` x `width` scene: squares of `tile` px overlapping by `overlap`."""
  height: int
  width: int
  tile: int
  overlap: int

  @property
  def row_starts(self) -> np.ndarray:
    return window_starts(self.height, self.tile, self.overlap)

  @property
  def col_starts(self) -> np.ndarray:
    return window_starts(self.width, self.tile, self.overlap)

  def __len__(self) -> int:
    return len(self.row_starts) * len(self.col_starts)


def blend(grid: TileGrid, tiles: Iterable[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
  """Blends per-window predictions into scene rows.

  Args:
    grid: the windows.
    tiles: one (tile, tile, C) array per window, in row-major order (every `grid.col_starts`
      of the first of `grid.row_starts`, then of the next). Parts of a window beyond the scene
      (a scene smaller than a window) are ignored.

  Yields:
    (first_row, rows): float32 (n, width, C) blocks of finished output rows, top to bottom,
    together covering the scene once. A block is yielded as soon as the last window touching it
    has been added.
  """
  weights_1d = feather(grid.tile, grid.overlap)
  weights = np.outer(weights_1d, weights_1d)[..., None]
  row_starts = [int(r) for r in grid.row_starts]
  tiles = iter(tiles)
  # Weighted sums and summed weights of scene rows [base, base + len(total)).
  total = weight_sum = None
  base = 0
  for k, top in enumerate(row_starts):
    bottom = min(top + grid.tile, grid.height)
    for left in grid.col_starts:
      tile = next(tiles, None)
      if tile is None:
        raise ValueError(f"blend got fewer tiles than the {len(grid)} windows of the grid")
      tile = np.asarray(tile, np.float32)
      if total is None:
        total = np.zeros((0, grid.width, tile.shape[-1]), np.float32)
        weight_sum = np.zeros((0, grid.width, 1), np.float32)
      if base != top or len(total) < bottom - top:
        # A new window row: rows above it are finished and gone; rows the previous window row
        # left unfinished are the top of this one.
        total = _keep_rows(total, top - base, bottom - top)
        weight_sum = _keep_rows(weight_sum, top - base, bottom - top)
        base = top
      right = min(left + grid.tile, grid.width)
      part = (slice(0, bottom - top), slice(0, right - left))
      total[:, left:right] += tile[part] * weights[part]
      weight_sum[:, left:right] += weights[part]
    finished = (row_starts[k + 1] if k + 1 < len(row_starts) else grid.height) - top
    yield top, total[:finished] / weight_sum[:finished]
  if next(tiles, None) is not None:
    raise ValueError(f"blend got more tiles than the {len(grid)} windows of the grid")


def _keep_rows(array: np.ndarray, first: int, rows: int) -> np.ndarray:
  """`rows` rows starting at row `first` of `array`, zero-filled where `array` ends."""
  kept = np.zeros((rows, *array.shape[1:]), array.dtype)
  carried = array[first:first + rows]
  kept[:len(carried)] = carried
  return kept
