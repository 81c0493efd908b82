"""PLFM's evaluation protocol: each metric at the best small integer shift of the prediction.

PSNR, SSIM, RMSE, SAM, UQI, DD, CC and MSE of the prediction against the target after cropping a
border, each at the best of all small integer shifts of the prediction (`shifted_metrics`).
Where the reference code's own metric functions are defective or ambiguous, these follow the
published definitions instead, so its numbers are not reproduced digit for digit. Images are
(B, H, W, C) in [0, 1], as for `metrics`, whose definitions these share (`metric_maps`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from plfm_jax.evaluation.metric_maps import (SSIM, UQI, abs_error_map, angle_map, band_means,
                                             checked_inputs, filter_valid, psnr_from_mse,
                                             region_mean, similarity_map, squared_error_map,
                                             unit_spectra, window_means)


def _crop_at(x: jax.Array, offset: tuple[jax.Array | int, jax.Array | int],
             shape: tuple[int, ...]) -> jax.Array:
  """The `shape` crop of x whose top-left corner is at `offset` on the last two axes."""
  return lax.dynamic_slice(x, (0,) * (x.ndim - 2) + tuple(offset), shape)


def _cc(pred: jax.Array, target: jax.Array) -> jax.Array:
  """(B,) Pearson correlation per band over the image, averaged over the bands where it exists.

  A constant band has no correlation; it is left out of the band mean (NaN if all bands are).
  Centred before multiplying: E[xy] - E[x]E[y] over 60k pixels cancels badly in float32.
  """
  pc = pred - pred.mean(axis=(-2, -1), keepdims=True)
  tc = target - target.mean(axis=(-2, -1), keepdims=True)
  den = jnp.sqrt((pc * pc).sum(axis=(-2, -1)) * (tc * tc).sum(axis=(-2, -1)))
  r = jnp.where(den > 0, (pc * tc).sum(axis=(-2, -1)) / jnp.where(den > 0, den, 1.0), jnp.nan)
  return jnp.nanmean(r, axis=-1)


# Metrics of the shifted protocol that improve upwards; the others improve downwards.
_HIGHER_IS_BETTER = ("ssim", "uqi", "cc")


@functools.partial(jax.jit, static_argnames=("border", "max_shift"))
def shifted_metrics(pred: jax.Array, target: jax.Array, *, border: int = 5,
                    max_shift: int = 3) -> dict[str, jax.Array]:
  """PLFM's evaluation protocol: each metric at the best integer shift of the prediction, (B,) each.

  The target is cropped by `border` on every side; for every (dy, dx) in
  {-max_shift..max_shift}^2 the prediction is cropped to the same size with its window moved by
  (dy, dx), i.e. prediction pixel (i + dy, j + dx) faces target pixel (i, j): a prediction
  displaced by (dy, dx) from the target matches it at that shift. Since max_shift <= border, the
  moved window stays inside the image (as in the reference, whose zero fill never reaches the
  cropped area). Each metric keeps its own best shift: the maximum for psnr, ssim, uqi, cc, the
  minimum for rmse, sam, dd, mse (psnr, rmse and mse always agree on it).

  Definitions, and where they depart from the reference code (which scored with skimage and
  sewar; its "CSC-PSNR" is the shifted `mse` here):
  - psnr, rmse, mse, dd (= mean absolute difference): over all pixels and channels, data range 1.
  - ssim: the standard `metrics.ssim` (11 x 11 Gaussian). The reference called skimage's default
    7 x 7 uniform window with sample covariance, whose data range for float input was 2 in the
    skimage of its time and is an error in current skimage.
  - sam: per-pixel spectral angle in degrees, as `metrics.sam`. sewar's `sam` used by the
    reference measures angles between whole bands (one per channel) in radians.
  - uqi: Wang & Bovik's Q on an 8 x 8 sliding window (all valid positions, their qindex.m),
    averaged over channels. sewar's `uqi` (8 x 8 too) mixes window means with window-sum
    formulas, which inflates its values; they are not comparable with these.
  - cc: per-band Pearson correlation over the cropped image, averaged over bands (np.corrcoef as
    the reference), constant bands left out.
  """
  p, t, _ = checked_inputs(pred, target)
  h, w = t.shape[-2:]
  if not 0 <= max_shift <= border:
    raise ValueError(f"need 0 <= max_shift <= border, got max_shift {max_shift}, border {border}")
  if min(h, w) - 2 * border < len(SSIM.taps):
    raise ValueError(f"images of {h} x {w} pixels leave less than an SSIM window after cropping "
                     f"a {border}-pixel border")
  inner = t[..., border:h - border, border:w - border]
  lo = border - max_shift
  wide = p[..., lo:h - lo, lo:w - lo]
  windows = {"ssim": SSIM, "uqi": UQI}
  pred_unit, target_unit = unit_spectra(wide), unit_spectra(inner)
  centre = band_means(inner)
  wide_c, inner_c = wide - centre, inner - centre
  # The prediction's window means do not depend on the shift: filtered once over the wide crop,
  # then cropped per shift; only E[xy] is filtered per shift.
  means = {k: (window_means(win, wide_c, wide_c * wide_c),
               window_means(win, inner_c, inner_c * inner_c)) for k, win in windows.items()}

  # A loop over the shifts, vectorised over one row of them per step: the body compiles once and
  # only a few crops are alive at a time (all 49 at once compiled for a minute and ran 10x slower;
  # one per step, 2x slower). The body returns per-pixel maps and the means are taken outside,
  # which XLA:CPU ran 1.6x faster than means inside.
  def at_shift(offset: jax.Array) -> dict[str, jax.Array]:
    """Maps at shift (dy, dx) = offset - max_shift; offset is the crop's corner in `wide`."""
    offset = (offset[0], offset[1])
    crop = _crop_at(wide, offset, inner.shape)
    crop_c = crop - centre
    crop_unit, crop_ok = (_crop_at(x, offset, y.shape) for x, y in zip(pred_unit, target_unit))
    out = {"mse": squared_error_map(crop, inner), "dd": abs_error_map(crop, inner),
           "sam": angle_map(crop_unit, target_unit[0]), "sam_valid": crop_ok & target_unit[1],
           "cc": _cc(crop, inner)}
    for k, win in windows.items():
      (mx, exx), (my, eyy) = _crop_at(means[k][0], offset, means[k][1].shape), means[k][1]
      exy = filter_valid(crop_c * inner_c, win.taps)
      out[k] = similarity_map(win, centre, mx, my, exx, eyy, exy)
    return out

  span = range(2 * max_shift + 1)
  offsets = jnp.array([(oy, ox) for oy in span for ox in span], jnp.int32)
  shift_maps = lax.map(at_shift, offsets, batch_size=2 * max_shift + 1)
  per_shift = {"cc": shift_maps["cc"],
               "sam": region_mean(shift_maps["sam"], shift_maps["sam_valid"])}
  for k in ("mse", "dd", "ssim", "uqi"):
    per_shift[k] = region_mean(shift_maps[k], None)
  best = {k: (jnp.nanmax if k in _HIGHER_IS_BETTER else jnp.nanmin)(v, axis=0)
          for k, v in per_shift.items()}
  best["psnr"] = psnr_from_mse(best["mse"])
  best["rmse"] = jnp.sqrt(best["mse"])
  return best
