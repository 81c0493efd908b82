"""The per-pixel maps and window statistics the image metrics are made of.

`metrics` (the literature's metrics) and `shifted` (PLFM's shifted protocol) share them. Images
are channels-first here, (B, C, H, W), so that the sliding-window filters run along contiguous
memory. Several constructs below look roundabout but are there because XLA:CPU ran the plain
version 2x to 60x slower; each says so where it stands.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Local variances come from E[x^2] - E[x]^2 in float32, whose rounding error is a few ulps of
# E[x^2]. Windows whose summed variance is below this fraction of their summed E[x^2] count as flat:
# there a variance is rounding noise, which Q's contrast term (no C2 to damp it) would amplify.
_FLAT_VARIANCE = 1e-6


def _gaussian_taps(sigma: float, truncate: float = 3.5) -> np.ndarray:
  """Normalised 1-D Gaussian as scipy.ndimage builds it (radius int(truncate * sigma + 0.5))."""
  radius = int(truncate * sigma + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  taps = np.exp(-0.5 * (x / sigma)**2)
  return taps / taps.sum()


def filter_valid(x: jax.Array, taps: np.ndarray) -> jax.Array:
  """Separable weighted window over the last two axes, only where the window fits ('valid').

  Cropping the window radius from a 'reflect'-padded result, as skimage does before averaging the
  SSIM map, leaves exactly these positions, so no padding is needed. Written as a sum of shifted
  slices: XLA:CPU fuses it into one loop, an order of magnitude faster than lax.conv here.
  """
  n = len(taps)
  rows = x.shape[-2] - n + 1
  x = sum(float(w) * x[..., k:k + rows, :] for k, w in enumerate(taps))
  cols = x.shape[-1] - n + 1
  return sum(float(w) * x[..., k:k + cols] for k, w in enumerate(taps))


def region_mean(values: jax.Array, region: jax.Array | None) -> jax.Array:
  """(B, H, W) per-pixel values -> (B,) means over `region` (bool (B, H, W)); NaN where empty."""
  if region is None:
    return values.mean(axis=(-2, -1))
  count = region.sum(axis=(-2, -1))
  total = jnp.where(region, values, 0.0).sum(axis=(-2, -1))
  return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


def _safe_ratio(num: jax.Array, den: jax.Array, floor: jax.Array | float) -> jax.Array:
  """num / den, and 1 where den <= floor (both sides flat or dark: nothing to disagree on)."""
  ok = den > floor
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 1.0)


class Window(NamedTuple):
  """A sliding-window similarity (SSIM, or Q with c1 = c2 = 0) and its constants."""
  taps: np.ndarray
  c1: float
  c2: float

  def crop(self, region: jax.Array | None) -> jax.Array | None:
    """Crops a (B, H, W) region to the window centres of the valid map (centre tap n // 2)."""
    if region is None:
      return None
    n = len(self.taps)
    lo, hi = (n - 1) // 2, n // 2
    return region[..., lo:region.shape[-2] - hi, lo:region.shape[-1] - hi]


# 11 x 11 Gaussian, sigma 1.5 (skimage's window for gaussian_weights=True, sigma=1.5).
SSIM = Window(_gaussian_taps(1.5), 0.01**2, 0.03**2)
# Wang & Bovik's universal quality index: 8 x 8 box window, no stabilising constants (qindex.m).
UQI = Window(np.full(8, 1.0 / 8), 0.0, 0.0)


def channel_sum(x: jax.Array) -> jax.Array:
  """(..., C, H, W) -> (..., H, W), a sum of slices: XLA:CPU reduces a non-minor axis 7x slower."""
  return sum(x[..., c, :, :] for c in range(x.shape[-3]))


def similarity_map(window: Window, centre: jax.Array, mx: jax.Array, my: jax.Array,
                   exx: jax.Array, eyy: jax.Array, exy: jax.Array) -> jax.Array:
  """Channel-mean similarity map (B, H', W') from window means of x, y, x^2, y^2, xy (B, C, H', W').

  The images behind the means are centred: `centre` (B, C, 1, 1) was subtracted from both, which
  leaves variances and covariance unchanged but shrinks E[x^2] and so the float32 cancellation in
  E[x^2] - E[x]^2 (100x for an image within 0.45..0.55). With c1 = c2 = 0 this is Wang & Bovik's Q
  with their rules for zero denominators: the luminance term where both windows are flat, 1 where
  both are also black.
  """
  mean_x, mean_y = mx + centre, my + centre
  luminance = _safe_ratio(2 * mean_x * mean_y + window.c1,
                          mean_x * mean_x + mean_y * mean_y + window.c1, 0.0)
  contrast = _safe_ratio(2 * (exy - mx * my) + window.c2,
                         (exx - mx * mx) + (eyy - my * my) + window.c2,
                         _FLAT_VARIANCE * (exx + eyy))
  return channel_sum(luminance * contrast) / mx.shape[-3]


def window_means(window: Window, *images: jax.Array) -> jax.Array:
  """Window means of each (B, C, H, W) image, stacked: (len(images), B, C, H', W').

  One stacked array on purpose: filtered one by one, XLA:CPU fuses both filter passes into the
  similarity formula and recomputes them for every use there, 60x slower.
  """
  return filter_valid(jnp.stack(images), window.taps)


def band_means(target: jax.Array) -> jax.Array:
  """(B, C, 1, 1) per-band means, subtracted before taking window moments (`similarity_map`)."""
  return target.mean(axis=(-2, -1), keepdims=True)


def squared_error_map(pred: jax.Array, target: jax.Array) -> jax.Array:
  """(B, H, W) squared error averaged over channels."""
  return channel_sum((pred - target)**2) / pred.shape[-3]


def abs_error_map(pred: jax.Array, target: jax.Array) -> jax.Array:
  """(B, H, W) absolute error averaged over channels."""
  return channel_sum(jnp.abs(pred - target)) / pred.shape[-3]


def psnr_from_mse(mse: jax.Array) -> jax.Array:
  """PSNR for data range 1; +inf for a perfect match, as skimage returns."""
  return -10.0 * jnp.log10(mse)


def unit_spectra(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(B, C, H, W) spectra scaled to unit length, and (B, H, W) where they are non-zero."""
  norm = jnp.sqrt(channel_sum(x * x))
  return x / jnp.where(norm > 0, norm, 1.0)[..., None, :, :], norm > 0


def _arcsin(x: jax.Array) -> jax.Array:
  """arcsin on [0, 1] to float32 accuracy (Cephes asinf: max relative error ~3e-7).

  XLA:CPU evaluates jnp.arcsin one element at a time, 60x slower than this polynomial, and the
  shifted protocol needs 49 angle maps per image.
  """
  big = x > 0.5
  z = jnp.where(big, 0.5 * (1.0 - x), x * x)
  s = jnp.where(big, jnp.sqrt(z), x)
  poly = (((4.2163199048e-2 * z + 2.4181311049e-2) * z + 4.5470025998e-2) * z
          + 7.4953002686e-2) * z + 1.6666752422e-1
  y = s + s * z * poly
  return jnp.where(big, 0.5 * math.pi - 2.0 * y, y)


def angle_map(pred_unit: jax.Array, target_unit: jax.Array) -> jax.Array:
  """(B, H, W) angles in degrees between unit spectra (`unit_spectra`).

  2 arcsin(|u - v| / 2): arccos of the cosine loses all precision near 0 degrees in float32, while
  the chord stays accurate at every angle. The angle to a zero spectrum is undefined; callers leave
  those pixels out rather than count them as 0 or 90 degrees.
  """
  chord = jnp.sqrt(channel_sum((pred_unit - target_unit)**2))
  return jnp.degrees(2.0 * _arcsin(jnp.minimum(0.5 * chord, 1.0)))


def _channels_first(images: jax.Array, name: str) -> jax.Array:
  """(B, H, W, C) -> float32 (B, C, H, W), checking the rank."""
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"{name} must be (B, H, W, C), got shape {images.shape}")
  return jnp.moveaxis(images.astype(jnp.float32), -1, 1)


def checked_inputs(pred: jax.Array, target: jax.Array, region: jax.Array | None = None,
                   min_size: int = 1) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """Validated (B, C, H, W) prediction and target, and the region as bool (B, H, W) or None."""
  p = _channels_first(pred, "pred")
  t = _channels_first(target, "target")
  if p.shape != t.shape:
    raise ValueError(f"pred {jnp.shape(pred)} and target {jnp.shape(target)} differ in shape")
  b, _, h, w = t.shape
  if min(h, w) < min_size:
    raise ValueError(f"images of {h} x {w} pixels are smaller than the {min_size}-pixel window")
  if region is None:
    return p, t, None
  region = jnp.asarray(region)
  if region.ndim == 4 and region.shape[-1] == 1:
    region = region[..., 0]
  if region.shape != (b, h, w):
    raise ValueError(f"region must be (B, H, W) or (B, H, W, 1) = {(b, h, w)}, got "
                     f"{jnp.shape(region)}")
  return p, t, region > 0.5
