"""plfm_jax.inference.tiling: windows covering a scene and feathered blending."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from plfm_jax.inference import tiling


def windows_of(image: np.ndarray, grid: tiling.TileGrid) -> list[np.ndarray]:
  """The windows of `grid` cut from `image` (H, W, C), padded with NaN beyond the scene, in the
  row-major order `blend` expects."""
  tiles = []
  for top, left in itertools.product(grid.row_starts, grid.col_starts):
    tile = np.full((grid.tile, grid.tile, image.shape[-1]), np.nan, np.float32)
    part = image[top:top + grid.tile, left:left + grid.tile]
    tile[:part.shape[0], :part.shape[1]] = part
    tiles.append(tile)
  return tiles


def blend_all(grid: tiling.TileGrid, tiles) -> np.ndarray:
  blocks = list(tiling.blend(grid, tiles))
  firsts = [first for first, _ in blocks]
  assert firsts == sorted(firsts) and firsts[0] == 0
  for (first, rows), (following, _) in zip(blocks, blocks[1:]):
    assert first + len(rows) == following
  return np.concatenate([rows for _, rows in blocks])


@pytest.mark.parametrize("length,tile,overlap", [
    (1, 32, 8), (31, 32, 8), (32, 32, 8), (33, 32, 8), (700, 64, 16), (913, 64, 16),
    (913, 256, 64), (100, 10, 0), (10980, 256, 64)])
def test_window_starts_cover_the_axis(length, tile, overlap):
  starts = tiling.window_starts(length, tile, overlap)
  assert starts[0] == 0
  if length <= tile:
    assert list(starts) == [0]
    return
  assert starts[-1] + tile == length
  gaps = np.diff(starts)
  assert np.all(gaps >= 1) and np.all(gaps <= tile - overlap)
  # Evenly spread: overlaps differ by at most a pixel.
  assert gaps.max() - gaps.min() <= 1


def test_window_starts_rejects_bad_overlap():
  with pytest.raises(ValueError):
    tiling.window_starts(100, 32, 32)


def test_feather_positive_and_symmetric():
  weights = tiling.feather(64, 16)
  assert weights.min() > 0 and weights.max() == 1
  np.testing.assert_array_equal(weights, weights[::-1])
  assert np.all(weights[16:48] == 1)


@pytest.mark.parametrize("height,width,tile,overlap", [
    (700, 913, 64, 16), (37, 91, 32, 8), (20, 45, 32, 8), (64, 64, 64, 16)])
def test_blend_of_the_windows_reproduces_the_image(height, width, tile, overlap):
  image = np.random.default_rng(0).uniform(0, 10000, (height, width, 3)).astype(np.float32)
  grid = tiling.TileGrid(height, width, tile, overlap)
  blended = blend_all(grid, windows_of(image, grid))
  assert blended.shape == image.shape
  np.testing.assert_allclose(blended, image, rtol=1e-6)


def test_weights_sum_to_one_everywhere():
  grid = tiling.TileGrid(123, 157, 32, 12)
  ones = [np.ones((32, 32, 1), np.float32)] * len(grid)
  np.testing.assert_allclose(blend_all(grid, ones), 1.0, rtol=1e-6)


def test_blocks_are_at_most_a_window_high():
  grid = tiling.TileGrid(700, 913, 64, 16)
  heights = [len(rows) for _, rows in tiling.blend(grid, windows_of(
      np.zeros((700, 913, 1), np.float32), grid))]
  assert max(heights) <= 64 and sum(heights) == 700


def test_no_seams_between_windows_with_different_offsets():
  """A smooth ramp whose windows come back with different offsets stays smooth."""
  height, width, tile, overlap = 300, 413, 64, 16
  rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
  ramp = (0.3 * rows / height + 0.7 * cols / width)[..., None]
  ramp_step = max(np.abs(np.diff(ramp, axis=0)).max(), np.abs(np.diff(ramp, axis=1)).max())
  grid = tiling.TileGrid(height, width, tile, overlap)
  offset = 0.05
  offsets = np.random.default_rng(1).uniform(0, offset, len(grid)).astype(np.float32)
  tiles = [t + o for t, o in zip(windows_of(ramp, grid), offsets)]
  blended = blend_all(grid, tiles)
  jump = max(np.abs(np.diff(blended, axis=0)).max(), np.abs(np.diff(blended, axis=1)).max())
  # The offsets change by at most `offset` between windows; feathering spreads that over the
  # overlap instead of one pixel (a seam would be a jump of up to `offset`).
  assert jump <= ramp_step + 2 * offset / (overlap + 1)
  assert 2 * offset / (overlap + 1) < offset / 4
  # Without overlap the same windows do show seams: the test can fail.
  hard = tiling.TileGrid(height, width, tile, 0)
  hard_offsets = np.random.default_rng(1).uniform(0, offset, len(hard)).astype(np.float32)
  seamed = blend_all(hard, [t + o for t, o in zip(windows_of(ramp, hard), hard_offsets)])
  seam = max(np.abs(np.diff(seamed, axis=0)).max(), np.abs(np.diff(seamed, axis=1)).max())
  assert seam > ramp_step + 2 * offset / (overlap + 1)


def test_blend_checks_the_tile_count():
  grid = tiling.TileGrid(50, 50, 32, 8)
  tiles = [np.zeros((32, 32, 1), np.float32)] * len(grid)
  with pytest.raises(ValueError, match="fewer"):
    list(tiling.blend(grid, tiles[:-1]))
  with pytest.raises(ValueError, match="more"):
    list(tiling.blend(grid, tiles + tiles[:1]))
