"""Gap filling from the earlier dates: the simple baselines and the priors of residual models.

Every method is a pure function `(history, cloudy, cloud_mask) -> (B, H, W, 3)` on images in
[0, 1]: `history` (B, T, H, W, 3) oldest first, `cloudy` (B, H, W, 3) the date to restore,
`cloud_mask` (B, H, W, 1), 1 where `cloudy` is covered. They work on NumPy and JAX arrays alike,
inside `jax.jit` and under `jax.grad` too.

The matched methods fit a linear map from the earlier dates to the cloudy date by weighted least
squares over the cloudy date's clear pixels (the classic gap-filling idea: the clear pixels carry
the date's illumination, atmosphere and season) and apply it everywhere. Per band (gain and
offset of one image) for `matched_persistence` and `matched_mean`; jointly over every band of
every earlier date for `matched_regression`; and for `matched_multiscale` over every band of
every earlier date split into spatial frequency bands, so that each scale gets its own gains: the
field pattern and the large-area brightness of a season change in different ways (a date's fine
structure may carry over while its broad brightness does not), and one gain per band would have to
compromise between them. Where too few pixels are clear for a fit, the unmatched image is used.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

GapFill = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

# Fewest clear pixels per fitted coefficient (gain or offset) for a fit to be used.
MIN_CLEAR_PER_COEFFICIENT = 8
# Ridge on the features' covariance, relative to its mean diagonal: keeps the solve finite for
# constant or collinear features while changing a well-posed fit by about this fraction.
_RIDGE = 1e-6
# Radii in pixels (windows of 3, 9, 33 and 129 px) of the box filters that split each earlier date
# into frequency bands for `matched_multiscale`: the split with the best validation score among
# those of scripts/prior_selection.py (docs/results.md).
MULTISCALE_RADII = (1, 4, 16, 64)


def linear_fit(x: jax.Array, y: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Weighted least squares with an intercept, per batch row: y ~ x @ gain + offset.

  Args:
    x: (B, N, F) features of N pixels.
    y: (B, N, C) targets.
    weights: (B, N) non-negative pixel weights (1 = clear, 0 = ignored).

  Returns:
    gain (B, F, C) and offset (B, C). A batch row without weight gets gain 0 and offset 0.
  """
  w = weights[..., None]
  total = jnp.sum(w, axis=1, keepdims=True)
  safe_total = jnp.maximum(total, 1e-12)
  x_mean = jnp.sum(w * x, axis=1, keepdims=True) / safe_total
  y_mean = jnp.sum(w * y, axis=1, keepdims=True) / safe_total
  xc, yc = x - x_mean, y - y_mean
  # Centred sums (two passes) keep float32 precise for the small variances of reflectance.
  xx = jnp.einsum("bnf,bng->bfg", w * xc, xc)
  xy = jnp.einsum("bnf,bnc->bfc", w * xc, yc)
  features = x.shape[-1]
  ridge = _RIDGE * jnp.trace(xx, axis1=1, axis2=2) / features + 1e-20
  gain = jnp.linalg.solve(xx + ridge[:, None, None] * jnp.eye(features, dtype=x.dtype), xy)
  offset = y_mean[:, 0] - jnp.einsum("bf,bfc->bc", x_mean[:, 0], gain)
  return gain, offset


def _clear_weights(cloud_mask: jax.Array) -> jax.Array:
  """(B, H, W, 1) cloud mask -> (B, H * W) weights, 1 on clear pixels."""
  mask = jnp.asarray(cloud_mask)
  return (1.0 - mask).reshape(mask.shape[0], -1).astype(jnp.float32)


def match_bands(source: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array) -> jax.Array:
  """`source` (B, H, W, C) with a gain and offset per band fitted to the clear pixels of `cloudy`.

  Returns `source` unchanged where fewer than 2 * MIN_CLEAR_PER_COEFFICIENT pixels are clear;
  clipped to [0, 1].
  """
  source, cloudy = jnp.asarray(source, jnp.float32), jnp.asarray(cloudy, jnp.float32)
  b, h, w, c = source.shape
  weights = _clear_weights(cloud_mask)
  # Bands become batch rows, each with one feature.
  to_rows = lambda image: jnp.moveaxis(image.reshape(b, h * w, c), -1, 1).reshape(b * c, h * w, 1)
  gain, offset = linear_fit(to_rows(source), to_rows(cloudy), jnp.repeat(weights, c, axis=0))
  gain, offset = gain.reshape(b, 1, 1, c), offset.reshape(b, 1, 1, c)
  reliable = (weights.sum(axis=1) >= 2 * MIN_CLEAR_PER_COEFFICIENT)[:, None, None, None]
  return jnp.clip(jnp.where(reliable, gain * source + offset, source), 0.0, 1.0)


def match_history(history: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array) -> jax.Array:
  """Every earlier date (B, T, H, W, C) matched to the cloudy date band by band (`match_bands`)."""
  history = jnp.asarray(history, jnp.float32)
  b, t = history.shape[:2]
  repeat = lambda x: jnp.repeat(jnp.asarray(x), t, axis=0)
  matched = match_bands(history.reshape(b * t, *history.shape[2:]), repeat(cloudy),
                        repeat(cloud_mask))
  return matched.reshape(history.shape)


def persistence(history: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array) -> jax.Array:
  """The most recent earlier date."""
  del cloudy, cloud_mask
  return jnp.asarray(history, jnp.float32)[:, -1]


def temporal_mean(history: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array) -> jax.Array:
  """Per-pixel mean of the earlier dates."""
  del cloudy, cloud_mask
  return jnp.mean(jnp.asarray(history, jnp.float32), axis=1)


def temporal_median(history: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array) -> jax.Array:
  """Per-pixel median of the earlier dates."""
  del cloudy, cloud_mask
  return jnp.median(jnp.asarray(history, jnp.float32), axis=1)


def matched_persistence(history: jax.Array, cloudy: jax.Array,
                        cloud_mask: jax.Array) -> jax.Array:
  """The most recent earlier date, matched to the cloudy date's clear pixels band by band."""
  return match_bands(persistence(history, cloudy, cloud_mask), cloudy, cloud_mask)


def matched_mean(history: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array) -> jax.Array:
  """The temporal mean, matched to the cloudy date's clear pixels band by band."""
  return match_bands(temporal_mean(history, cloudy, cloud_mask), cloudy, cloud_mask)


def _regressed(features: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array,
               fallback: jax.Array) -> jax.Array:
  """Each band of `cloudy` as a linear function of (B, H, W, F) `features`, fitted on the clear
  pixels and applied everywhere; `fallback` where fewer than MIN_CLEAR_PER_COEFFICIENT pixels per
  coefficient are clear. Clipped to [0, 1]."""
  b, h, w, f = features.shape
  c = cloudy.shape[-1]
  features = features.reshape(b, h * w, f)
  weights = _clear_weights(cloud_mask)
  gain, offset = linear_fit(features, jnp.asarray(cloudy, jnp.float32).reshape(b, h * w, c),
                            weights)
  fitted = (jnp.einsum("bnf,bfc->bnc", features, gain) + offset[:, None]).reshape(b, h, w, c)
  reliable = weights.sum(axis=1) >= MIN_CLEAR_PER_COEFFICIENT * (f + 1)
  return jnp.clip(jnp.where(reliable[:, None, None, None], fitted, fallback), 0.0, 1.0)


def _dates_as_bands(history: jax.Array) -> jax.Array:
  """(B, T, H, W, C) -> (B, H, W, T * C): every band of every date side by side."""
  b, t, h, w, c = history.shape
  return jnp.moveaxis(history, 1, 3).reshape(b, h, w, t * c)


def matched_regression(history: jax.Array, cloudy: jax.Array,
                       cloud_mask: jax.Array) -> jax.Array:
  """Each band of the cloudy date as a linear function of every band of every earlier date.

  Fitted on the clear pixels (T * C features and an offset per output band); the temporal mean
  where too few pixels are clear for that many coefficients. Clipped to [0, 1].
  """
  history = jnp.asarray(history, jnp.float32)
  return _regressed(_dates_as_bands(history), cloudy, cloud_mask,
                    temporal_mean(history, cloudy, cloud_mask))


def _window_counts(size: int, radius: int) -> np.ndarray:
  """How many positions of a 0..size-1 axis each (2 radius + 1) window around them covers."""
  position = np.arange(size)
  return np.minimum(position + radius, size - 1) - np.maximum(position - radius, 0) + 1


def box_mean(images: jax.Array, radius: int) -> jax.Array:
  """Mean over the (2 radius + 1)^2 window around each pixel of (N, H, W, C) images; windows
  reaching over the border average the pixels inside the image (separable, any image size)."""
  window, none, pad = 2 * radius + 1, (0, 0), (radius, radius)
  sums = jax.lax.reduce_window(images, 0.0, jax.lax.add, (1, window, 1, 1), (1, 1, 1, 1),
                               (none, pad, none, none))
  sums = jax.lax.reduce_window(sums, 0.0, jax.lax.add, (1, 1, window, 1), (1, 1, 1, 1),
                               (none, none, pad, none))
  # The counts are static (NumPy at trace time): XLA would spend seconds folding them.
  h, w = images.shape[1:3]
  counts = np.outer(_window_counts(h, radius), _window_counts(w, radius))[None, :, :, None]
  return sums / counts.astype(np.float32)


def frequency_bands(images: jax.Array, radii: tuple[int, ...] = MULTISCALE_RADII) -> jax.Array:
  """(N, H, W, C) images split into len(radii) + 1 bands that sum to them, finest first:
  image - box(r0), box(r0) - box(r1), ..., box(r_last); (N, H, W, C * (len(radii) + 1))."""
  bands, finer = [], images
  for radius in radii:
    coarser = box_mean(images, radius)
    bands.append(finer - coarser)
    finer = coarser
  return jnp.concatenate([*bands, finer], axis=-1)


def matched_multiscale(history: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array,
                       radii: tuple[int, ...] = MULTISCALE_RADII) -> jax.Array:
  """`matched_regression` with every earlier date split into frequency bands (`frequency_bands`
  with `radii`): each band of the cloudy date as a linear function of every band of every date
  at every scale.

  Fitted on the clear pixels (T * C * (len(radii) + 1) features and an offset per output band);
  `matched_regression` where too few pixels are clear for that many coefficients. Clipped to
  [0, 1].
  """
  history = jnp.asarray(history, jnp.float32)
  return _regressed(frequency_bands(_dates_as_bands(history), radii), cloudy, cloud_mask,
                    matched_regression(history, cloudy, cloud_mask))


# Every method by name, simplest first.
METHODS: dict[str, GapFill] = {
    "persistence": persistence,
    "temporal_mean": temporal_mean,
    "temporal_median": temporal_median,
    "matched_persistence": matched_persistence,
    "matched_mean": matched_mean,
    "matched_regression": matched_regression,
    "matched_multiscale": matched_multiscale,
}
