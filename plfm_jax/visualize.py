"""Image panels for people: rows of samples, columns of named images, written as PNG."""

from __future__ import annotations

import os
import pathlib
from typing import Callable, Mapping

import numpy as np
from PIL import Image, ImageDraw

_LABEL_HEIGHT = 14
_GAP = 2


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
  """(H, W, C) values in [0, 1] -> (H, W, 3) uint8; one channel becomes grey, more than 3 keep RGB."""
  image = np.asarray(image, np.float32)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return (np.clip(image[..., :3], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def stretch_like(reference: np.ndarray, low: float = 2.0,
                 high: float = 98.0) -> Callable[[np.ndarray], np.ndarray]:
  """The percentile stretch of each sample of `reference` (B, H, W, C), as a function applying
  it to other images of the same samples (B, H, W, C'), so that they share one contrast."""
  lo, hi = np.percentile(np.asarray(reference, np.float32), [low, high], axis=(1, 2, 3),
                         keepdims=True)
  span = np.maximum(hi - lo, 1e-6)
  return lambda image: np.clip((np.asarray(image, np.float32) - lo) / span, 0.0, 1.0)


def panel(columns: Mapping[str, np.ndarray], max_rows: int = 4) -> np.ndarray:
  """Tiles `columns` (name -> (B, H, W, C) in [0, 1]) into one labelled uint8 image, a row per sample."""
  names = list(columns)
  arrays = [np.asarray(columns[n]) for n in names]
  rows = min(max_rows, *(a.shape[0] for a in arrays))
  h, w = arrays[0].shape[1:3]
  canvas = Image.new("RGB", (len(names) * (w + _GAP) - _GAP,
                             _LABEL_HEIGHT + rows * (h + _GAP) - _GAP), "white")
  draw = ImageDraw.Draw(canvas)
  for col, (name, array) in enumerate(zip(names, arrays)):
    x = col * (w + _GAP)
    draw.text((x + 2, 1), name, fill="black")
    for row in range(rows):
      tile = Image.fromarray(to_uint8_rgb(array[row]))
      canvas.paste(tile, (x, _LABEL_HEIGHT + row * (h + _GAP)))
  return np.asarray(canvas)


def save_png(path: str | os.PathLike, image: np.ndarray) -> pathlib.Path:
  """Writes a uint8 image atomically (temporary name, then rename)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  Image.fromarray(image).save(tmp, format="PNG")
  os.replace(tmp, path)
  return path
