"""Value scaling of S2 reflectance and S1 backscatter, and the QA60 cloud bits (pure NumPy)."""

from __future__ import annotations

import numpy as np

S1_DB_RANGE = (-25.0, 10.0)
REFLECTANCE_SCALE = 10000.0
S2_NORMALIZATIONS = ("minmax", "reflectance")
# QA60 bits: 10 opaque clouds, 11 cirrus.
QA60_CLOUD_BITS = (1 << 10) | (1 << 11)


def s2_minmax(s2: np.ndarray) -> np.ndarray:
  """Scales each image to [0, 1] by its min and max over H, W and bands (the last 3 axes).

  Works on a single (H, W, C) image or any batch (..., H, W, C). A constant image becomes zeros.
  """
  x = np.asarray(s2, dtype=np.float32)
  if x.ndim < 3:
    raise ValueError(f"expected (..., H, W, C) images, got shape {x.shape}")
  low = x.min(axis=(-3, -2, -1), keepdims=True)
  span = x.max(axis=(-3, -2, -1), keepdims=True) - low
  # Dividing by 1 where the span is 0 keeps constant images at 0 without a division warning.
  return (x - low) / np.where(span > 0, span, 1).astype(np.float32)


def s2_reflectance(s2: np.ndarray) -> np.ndarray:
  """Converts digital numbers (reflectance x 10000) to reflectance clipped to [0, 1]."""
  return np.clip(np.asarray(s2, dtype=np.float32) / np.float32(REFLECTANCE_SCALE), 0, 1)


def normalize_s2(s2: np.ndarray, method: str) -> np.ndarray:
  """Applies the S2 normalisation named `method`: "minmax" or "reflectance"."""
  if method == "minmax":
    return s2_minmax(s2)
  if method == "reflectance":
    return s2_reflectance(s2)
  raise ValueError(f"unknown S2 normalisation {method!r}; "
                   f"choose one of {', '.join(S2_NORMALIZATIONS)}")


def s2_scale(s2: np.ndarray, method: str) -> np.ndarray:
  """(..., 2) float32 (low, span) per image (..., H, W, C): `normalize_s2(s2, method)` is
  (s2 - low) / span, clipped to [0, 1] for "reflectance", so x * span + low undoes it."""
  x = np.asarray(s2, dtype=np.float32)
  if method == "reflectance":
    low = np.zeros(x.shape[:-3], np.float32)
    span = np.full(x.shape[:-3], REFLECTANCE_SCALE, np.float32)
  else:
    normalize_s2(x[..., :1, :1, :], method)  # Refuses an unknown method or a bad shape.
    low = x.min(axis=(-3, -2, -1))
    span = x.max(axis=(-3, -2, -1)) - low
    span = np.where(span > 0, span, 1).astype(np.float32)
  return np.stack([low, span], axis=-1)


def s1_db_to_unit(db: np.ndarray) -> np.ndarray:
  """Clips VV backscatter to S1_DB_RANGE (dB) and maps that range linearly to [0, 1]."""
  low, high = S1_DB_RANGE
  x = np.clip(np.asarray(db, dtype=np.float32), low, high)
  return ((x - np.float32(low)) / np.float32(high - low)).astype(np.float32)


def qa60_cloud_mask(cm: np.ndarray) -> np.ndarray:
  """True where a QA60 bitmask flags an opaque cloud (bit 10) or cirrus (bit 11)."""
  return (np.asarray(cm) & QA60_CLOUD_BITS) != 0
