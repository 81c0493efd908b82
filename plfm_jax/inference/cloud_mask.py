"""Which pixels of the cloudy date to restore: the QA60 band when given, else a heuristic.

The heuristic flags pixels that are both bright and white in the visible bands, the two basic
cloud tests of Fmask (Zhu and Woodcock 2012) that need only R, G and B:
  brightness = mean(R, G, B) reflectance > threshold (default 0.25), and
  whiteness  = sum(|band - brightness|) / brightness < 0.7 (grey: clouds reflect all bands alike).
Bright white ground (snow, white roofs, salt flats) is flagged too; cloud shadows, haze and thin
cirrus are missed. A QA60 band (or any better mask in that format) should be preferred.
"""

from __future__ import annotations

import numpy as np

from plfm_jax.data.normalize import qa60_cloud_mask, s2_reflectance

DEFAULT_BRIGHTNESS = 0.25
MAX_WHITENESS = 0.7


def heuristic_mask(rgb: np.ndarray, brightness: float = DEFAULT_BRIGHTNESS) -> np.ndarray:
  """Bool (..., H, W): bright and white pixels of S2 (..., H, W, 3) reflectance x 10000."""
  reflectance = s2_reflectance(rgb)
  mean = reflectance.mean(axis=-1)
  spread = np.abs(reflectance - mean[..., None]).sum(axis=-1)
  # Dark pixels cannot pass the brightness test; the floor only avoids dividing by zero.
  whiteness = spread / np.maximum(mean, np.float32(1e-6))
  return (mean > brightness) & (whiteness < MAX_WHITENESS)


def cloud_mask(rgb: np.ndarray, qa60: np.ndarray | None = None, *,
               brightness: float = DEFAULT_BRIGHTNESS,
               nodata: float | None = None) -> np.ndarray:
  """Bool (..., H, W): True where the cloudy image should be replaced by the prediction.

  Args:
    rgb: the cloudy date, (..., H, W, 3) reflectance x 10000.
    qa60: its QA60 bitmask (..., H, W); when given it decides alone.
    brightness: threshold of the heuristic (mean R, G, B reflectance).
    nodata: pixels whose three bands all equal this value are never cloud.
  """
  mask = qa60_cloud_mask(qa60) if qa60 is not None else heuristic_mask(rgb, brightness)
  if nodata is not None:
    mask &= ~np.all(rgb == nodata, axis=-1)
  return mask
