"""Image-quality metrics of the literature for cloud removal (UnCRtainTS, DSen2-CR).

Images are float arrays in [0, 1] of shape (B, H, W, C); every metric returns one value per sample,
shape (B,), and is jit-compiled: `rmse`, `psnr`, `mae`, `sam`, `ssim`, all through
`standard_metrics`. Each takes an optional `region` (B, H, W) or (B, H, W, 1) in {0, 1} and then
averages over the pixels where it is 1 only; `standard_metrics(..., mask=cloud_mask)` adds
`<name>_cloud` (mask 1) and `<name>_clear` (mask 0). A sample whose region is empty gets NaN;
`average` then leaves it out. PLFM's own protocol is `shifted`; FID is `fid`.
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from plfm_jax.evaluation.metric_maps import (SSIM, abs_error_map, angle_map, band_means,
                                             checked_inputs, psnr_from_mse, region_mean,
                                             similarity_map, squared_error_map, unit_spectra,
                                             window_means)


@jax.jit
def mse(pred: jax.Array, target: jax.Array, region: jax.Array | None = None) -> jax.Array:
  """(B,) mean squared error over channels and (region) pixels."""
  p, t, r = checked_inputs(pred, target, region)
  return region_mean(squared_error_map(p, t), r)


@jax.jit
def rmse(pred: jax.Array, target: jax.Array, region: jax.Array | None = None) -> jax.Array:
  """(B,) root mean squared error over channels and (region) pixels."""
  return jnp.sqrt(mse(pred, target, region))


@jax.jit
def psnr(pred: jax.Array, target: jax.Array, region: jax.Array | None = None) -> jax.Array:
  """(B,) PSNR in dB for data range 1: 20 log10(1 / RMSE); +inf where RMSE is 0 (as skimage)."""
  return psnr_from_mse(mse(pred, target, region))


@jax.jit
def mae(pred: jax.Array, target: jax.Array, region: jax.Array | None = None) -> jax.Array:
  """(B,) mean absolute error over channels and (region) pixels."""
  p, t, r = checked_inputs(pred, target, region)
  return region_mean(abs_error_map(p, t), r)


@jax.jit
def sam(pred: jax.Array, target: jax.Array, region: jax.Array | None = None) -> jax.Array:
  """(B,) spectral angle mapper in degrees: mean over (region) pixels of the angle between spectra.

  Pixels where either spectrum is all zero have no angle and are left out; NaN if none is left.
  """
  p, t, r = checked_inputs(pred, target, region)
  (u, u_ok), (v, v_ok) = unit_spectra(p), unit_spectra(t)
  valid = u_ok & v_ok
  return region_mean(angle_map(u, v), valid if r is None else valid & r)


@jax.jit
def ssim(pred: jax.Array, target: jax.Array, region: jax.Array | None = None) -> jax.Array:
  """(B,) SSIM: 11 x 11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, data range 1, per channel.

  Equals skimage's structural_similarity(target, pred, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=-1): the map exists where the window
  fits (5 pixels in from each edge) and is averaged over channels and those pixels. With a
  region, the average runs over the region's pixels inside that area.
  """
  p, t, r = checked_inputs(pred, target, region, min_size=len(SSIM.taps))
  centre = band_means(t)
  p, t = p - centre, t - centre
  similarity = similarity_map(SSIM, centre, *window_means(SSIM, p, t, p * p, t * t, p * t))
  return region_mean(similarity, SSIM.crop(r))


_STANDARD = {"psnr": psnr, "ssim": ssim, "sam": sam, "rmse": rmse, "mae": mae}


@jax.jit
def standard_metrics(pred: jax.Array, target: jax.Array,
                     mask: jax.Array | None = None) -> dict[str, jax.Array]:
  """Literature-standard metrics, (B,) each: psnr, ssim, sam (degrees), rmse, mae.

  With a cloud mask ((B, H, W) or (B, H, W, 1), 1 = cloud), also `<name>_cloud` over the masked
  pixels and `<name>_clear` over the rest; NaN for samples without such pixels.
  """
  out = {name: fn(pred, target) for name, fn in _STANDARD.items()}
  if mask is not None:
    mask = jnp.asarray(mask, jnp.float32)
    for name, fn in _STANDARD.items():
      out[f"{name}_cloud"] = fn(pred, target, mask)
      out[f"{name}_clear"] = fn(pred, target, 1.0 - mask)
  return out


def average(per_sample: Mapping[str, jax.Array | np.ndarray]) -> dict[str, float]:
  """Dataset means of per-sample metrics, leaving out NaN (empty regions, undefined values).

  A metric with no defined sample averages to NaN; an infinite PSNR (a perfect sample) keeps the
  mean infinite, as a mean of skimage PSNRs would.
  """
  out = {}
  for name, values in per_sample.items():
    values = np.asarray(values, np.float64).ravel()
    defined = values[~np.isnan(values)]
    out[name] = float(defined.mean()) if defined.size else math.nan
  return out
