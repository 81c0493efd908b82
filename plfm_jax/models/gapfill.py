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
compromise between them. Where too few pixels are clear for a fit (or, for a regression, less
than MIN_CLEAR_SHARE of the image), fewer coefficients are fitted, down to none: the multi-scale
regression falls back to the single-scale one, that to `matched_persistence`, and that to the
latest earlier date as it is.

Real masks miss haze, thin cloud and shadows, and an earlier date can hold clouds of its own, so
by default every fit is robust (`robust_linear_fit`): iteratively reweighted least squares that
gives pixels far off the fit less weight (Huber) and then none (Tukey), so that the pixels no mask
caught do not bend it. `fill_history` fills each earlier date's clouds from the other dates.

The multi-scale regression's many gains fail on real windows in ways a robust fit does not
catch, so it is guarded (GUARDS) by the single-scale regression: broad haze or shadow that no
mask caught is one-signed in every band against the single-scale fit and loses its weight (the
coarse scales would otherwise fit it as ground and paint it under the clouds); where the
multi-scale fit predicts held-out blocks of clear pixels no better, the single-scale one is
used; and where ground under the clouds looks like no clear pixel, the single-scale fit takes
over from the many gains that would extrapolate there.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# (history, cloudy, cloud_mask, *, robust) -> image.
GapFill = Callable[..., jax.Array]

# Fewest clear pixels per fitted coefficient (gain or offset) for a fit to be used.
MIN_CLEAR_PER_COEFFICIENT = 8
# A regression is used only where this share of the image is clear, beyond its pixels per
# coefficient: fitted on a corner of a mostly clouded window, its gains extrapolate to the rest
# (real cloud layers over 95% of a date, given their exact mask, validation split: 45.1 dB with
# the fallback at 8 pixels per coefficient alone, 47.6 with this share; 48.4 -> 49.4 over every
# cover; scripts/heavy_cover_cases.py).
MIN_CLEAR_SHARE = 0.02
# Ridge on the features' covariance, relative to its mean diagonal: keeps the solve finite for
# constant or collinear features while changing a well-posed fit by about this fraction.
_RIDGE = 1e-6
# A regression with a gain beyond this is not used: summing features of up to 0.2 reflectance
# with such gains in float32 loses about 1e-3 reflectance to rounding, and only a near-singular
# fit gets there (the multi-scale fits of the real sample stay below 5e3; one under a window
# 84% clouded reached 8e25 and made its clouds white).
_MAX_GAIN = 5e4
# The multi-scale regression's guards (`matched_multiscale`), each a way its many coefficients fail
# on real windows: "haze" (clear pixels whose residual against the single-scale regression is of
# one sign in every band lose weight: broad haze or shadow that no mask caught, which the coarse
# scales would otherwise fit as if it were ground), "choice" (the single-scale regression where
# the multi-scale one predicts held-out blocks of clear pixels no better) and "extrapolation"
# (the single-scale regression where a pixel's features lie far outside those of the clear
# pixels: ground that is all under the clouds, where more gains extrapolate further).
GUARDS = ("haze", "choice", "extrapolation")
# "haze": the one-signed excess over the single-scale fit, in robust standard deviations and
# averaged over this radius, at which a clear pixel's weight falls to 0 (Tukey's biweight).
HAZE_SIGMA = 3.0
HAZE_RADIUS = 2
# "choice": side of the blocks of a two-fold checkerboard split of the clear pixels (at most a
# quarter of the image's shorter side), and the squared error, in robust standard deviations,
# beyond which a held-out pixel counts alike (pixels no mask caught must not decide).
CHOICE_BLOCK = 64
CHOICE_CLIP = 3.0
# "extrapolation": squared Mahalanobis distance per feature from the clear pixels' features at
# which the single-scale regression starts to take over, and where it has taken over (the mean
# over the clear pixels themselves is 1).
EXTRAPOLATION_RANGE = (3.0, 10.0)
# Radii in pixels (windows of 3, 9, 33 and 129 px) of the box filters that split each earlier date
# into frequency bands for `matched_multiscale`: the split with the best validation score among
# those of scripts/prior_selection.py (docs/results.md).
MULTISCALE_RADII = (1, 4, 16, 64)
# The robust fit: Huber steps from the least-squares start (a convex problem, so they cannot lock
# onto a wrong fit), then Tukey steps that give gross outliers no weight at all; the usual tuning
# constants (95% efficiency on Gaussian noise), in robust standard deviations.
HUBER_STEPS = 3
TUKEY_STEPS = 3
HUBER_C = 1.345
TUKEY_C = 4.685
# Median absolute deviation -> standard deviation of Gaussian noise.
MAD_TO_STD = 1.4826
# Floor of a residual's robust standard deviation (reflectance): fits that are exact up to
# rounding must not call every rounding difference an outlier.
MIN_RESIDUAL_STD = 1e-4
# Fits use a strided subsample of at most about this many pixels per coefficient (and at least
# _MIN_FIT_SAMPLES): gains and offsets are as good from them as from every pixel of a large
# block, at a fraction of the cost.
FIT_SAMPLES_PER_COEFFICIENT = 256
_MIN_FIT_SAMPLES = 4096
# Bisection steps of `masked_quantile`: its result is within 2^-steps of the largest value.
_MEDIAN_STEPS = 24
# Box sums up to this radius run as windowed reductions, wider ones from cumulative sums.
_DIRECT_BOX_RADIUS = 16


def spd_solve(a: jax.Array, b: jax.Array) -> jax.Array:
  """x of a @ x = b for symmetric positive definite (B, F, F) `a` and (B, F, C) `b`: Cholesky
  and two triangular solves, column by column in loops of plain array operations.

  Not `jnp.linalg.solve`: XLA:CPU runs its LAPACK kernel on the thread pool that also runs the
  program, and an evaluation step with dozens of independent fits deadlocked there on two
  threads, every pool thread waiting inside a solve for the others.
  """
  features = a.shape[-1]
  index = jnp.arange(features)

  def cholesky_column(j, lower):
    row = jnp.where(index < j, lower[:, j, :], 0.0)                       # L[j, :j]
    diagonal = jnp.sqrt(jnp.maximum(a[:, j, j] - jnp.sum(row * row, axis=-1), 1e-30))
    column = (a[:, :, j] - jnp.einsum("bik,bk->bi", lower, row)) / diagonal[:, None]
    column = jnp.where(index > j, column, jnp.where(index == j, diagonal[:, None], 0.0))
    return lower.at[:, :, j].set(column)

  lower = jax.lax.fori_loop(0, features, cholesky_column, jnp.zeros_like(a))

  def forward(i, z):  # L z = b
    done = jnp.einsum("bk,bkc->bc", jnp.where(index < i, lower[:, i, :], 0.0), z)
    return z.at[:, i].set((b[:, i] - done) / lower[:, i, i, None])

  def backward(k, x):  # L^T x = z, from the last row up
    i = features - 1 - k
    done = jnp.einsum("bk,bkc->bc", jnp.where(index > i, lower[:, :, i], 0.0), x)
    return x.at[:, i].set((z[:, i] - done) / lower[:, i, i, None])

  z = jax.lax.fori_loop(0, features, forward, jnp.zeros_like(b))
  return jax.lax.fori_loop(0, features, backward, jnp.zeros_like(b))


# Jitted on their own, the fits are traced once per shape and reused: a detection and the
# networks' prior fit the same shapes several times (tracing `detect` took 1.2 s, now 0.5 s; the
# scene model 1.1 s, now 0.75 s), and the iterations of a robust fit call `linear_fit` alike.
@jax.jit
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
  # Sums as contractions: XLA:CPU runs them as fast matrix products, plain reductions over the
  # pixel axis several times slower.
  safe_total = jnp.maximum(jnp.sum(weights, axis=1), 1e-12)[:, None, None]
  x_mean = jnp.einsum("bn,bnf->bf", weights, x)[:, None] / safe_total
  y_mean = jnp.einsum("bn,bnc->bc", weights, y)[:, None] / safe_total
  xc, yc = x - x_mean, y - y_mean
  # Centred sums (two passes) keep float32 precise for the small variances of reflectance.
  xx = jnp.einsum("bnf,bng->bfg", w * xc, xc)
  xy = jnp.einsum("bnf,bnc->bfc", w * xc, yc)
  features = x.shape[-1]
  ridge = _RIDGE * jnp.trace(xx, axis1=1, axis2=2) / features + 1e-20
  gain = spd_solve(xx + ridge[:, None, None] * jnp.eye(features, dtype=x.dtype), xy)
  offset = y_mean[:, 0] - jnp.einsum("bf,bfc->bc", x_mean[:, 0], gain)
  return gain, offset


def masked_quantile(values: jax.Array, included: jax.Array, q: float = 0.5) -> jax.Array:
  """(R,) `q` quantile of the non-negative (R, N) `values` where `included`, by bisection on
  [0, max]: comparisons and counts instead of a sort, which XLA:CPU runs dozens of times
  slower."""
  included = included.astype(jnp.float32)
  rank = q * jnp.sum(included, axis=1)

  def step(_, bounds):
    low, high = bounds
    middle = 0.5 * (low + high)
    below = jnp.einsum("rn,rn->r", included, (values <= middle[:, None]).astype(jnp.float32))
    return jnp.where(below < rank, middle, low), jnp.where(below < rank, high, middle)

  high = jnp.max(jnp.where(included > 0, values, 0.0), axis=1)
  low, high = jax.lax.fori_loop(0, _MEDIAN_STEPS, step, (jnp.zeros_like(high), high))
  return 0.5 * (low + high)


def nanmedian_small(values: jax.Array, axis: int) -> jax.Array:
  """`jnp.nanmedian` over a short `axis` (a few dates): NaN is missing, NaN where all are.

  An odd-even transposition network of elementwise min and max: XLA fuses it, where a sort
  along a short axis runs element by element on CPU, about a hundred times slower.
  """
  rows = list(jnp.moveaxis(values, axis, 0))
  count = sum((~jnp.isnan(row)).astype(jnp.int32) for row in rows)
  rows = [jnp.where(jnp.isnan(row), jnp.inf, row) for row in rows]
  for step in range(len(rows)):
    for i in range(step % 2, len(rows) - 1, 2):
      rows[i], rows[i + 1] = jnp.minimum(rows[i], rows[i + 1]), jnp.maximum(rows[i], rows[i + 1])
  pick = lambda index: sum(jnp.where(index == i, row, 0.0) for i, row in enumerate(rows))
  median = 0.5 * (pick((count - 1) // 2) + pick(count // 2))
  return jnp.where(count > 0, median, jnp.nan)


def robust_std(residual: jax.Array, weights: jax.Array) -> jax.Array:
  """(B, 1, C) robust standard deviation (MAD_TO_STD x median |residual|) of (B, N, C) residuals
  over the pixels of non-zero (B, N) weight, at least MIN_RESIDUAL_STD; 1 without any pixel."""
  b, n, c = residual.shape
  rows = jnp.moveaxis(jnp.abs(residual), -1, 1).reshape(b * c, n)
  median = masked_quantile(rows, jnp.repeat(weights > 0, c, axis=0)).reshape(b, 1, c)
  any_pixel = jnp.any(weights > 0, axis=1)[:, None, None]
  return jnp.where(any_pixel, jnp.maximum(MAD_TO_STD * median, MIN_RESIDUAL_STD), 1.0)


def _huber(u: jax.Array) -> jax.Array:
  return jnp.minimum(1.0, HUBER_C / jnp.maximum(u, 1e-12))


def _tukey(u: jax.Array) -> jax.Array:
  return jnp.square(jnp.clip(1.0 - jnp.square(u / TUKEY_C), 0.0, None))


@jax.jit
def robust_linear_fit(x: jax.Array, y: jax.Array,
                      weights: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`linear_fit` by iteratively reweighted least squares: pixels far off the fit lose weight.

  Each step weighs every pixel by its largest residual over the C targets, in units of each
  target's robust standard deviation (`robust_std`): HUBER_STEPS Huber steps, then TUKEY_STEPS
  Tukey biweight steps. The weights are data, not parameters: no gradient flows through them.

  Returns:
    gain (B, F, C), offset (B, C) and the final (B, N) pixel weights (`weights` times the robust
    ones; their sum is the fit's support).
  """
  def step(weigh: Callable[[jax.Array], jax.Array]):
    def body(_, fit):
      gain, offset, final = fit
      residual = jax.lax.stop_gradient(
          y - jnp.einsum("bnf,bfc->bnc", x, gain) - offset[:, None])
      u = jnp.max(jnp.abs(residual) / robust_std(residual, final), axis=-1)
      final = weights * weigh(u)
      return (*linear_fit(x, y, final), final)
    return body

  # Loops, not unrolled steps: every fit of an evaluation would otherwise add its steps' graph
  # to the program, and XLA's compile time with them.
  fit = (*linear_fit(x, y, weights), weights)
  fit = jax.lax.fori_loop(0, HUBER_STEPS, step(_huber), fit)
  return jax.lax.fori_loop(0, TUKEY_STEPS, step(_tukey), fit)


def _fit_stride(pixels: int, features: int) -> int:
  """The stride of the regular subsample a fit of `features` features takes of `pixels`."""
  samples = max(_MIN_FIT_SAMPLES, FIT_SAMPLES_PER_COEFFICIENT * (features + 1))
  return max(1, pixels // samples)


def _fit(x: jax.Array, y: jax.Array, weights: jax.Array,
         robust: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(gain, offset, support): the least-squares or robust fit on a subsample of the N pixels
  (FIT_SAMPLES_PER_COEFFICIENT), and the (B,) number of pixels it rests on (its weights' sum,
  scaled to N)."""
  stride = _fit_stride(*x.shape[1:])
  # The barrier keeps XLA from fusing the strided read into every step of the fit.
  x, y, weights = jax.lax.optimization_barrier(
      (x[:, ::stride], y[:, ::stride], weights[:, ::stride]))
  if robust:
    gain, offset, final = robust_linear_fit(x, y, weights)
  else:
    (gain, offset), final = linear_fit(x, y, weights), weights
  return gain, offset, stride * jnp.sum(final, axis=1)


def _clear_weights(cloud_mask: jax.Array) -> jax.Array:
  """(B, H, W, 1) cloud mask -> (B, H * W) weights, 1 on clear pixels."""
  mask = jnp.asarray(cloud_mask)
  return (1.0 - mask).reshape(mask.shape[0], -1).astype(jnp.float32)


def match_bands(source: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array, *,
                robust: bool = True, min_share: float = 0.0) -> jax.Array:
  """`source` (B, H, W, C) with a gain and offset per band fitted to the clear pixels of `cloudy`
  (robustly, `robust_linear_fit`, or by least squares).

  Returns `source` unchanged where the fit rests on fewer than 2 * MIN_CLEAR_PER_COEFFICIENT
  pixels, or on less than `min_share` of the image's; clipped to [0, 1].
  """
  source, cloudy = jnp.asarray(source, jnp.float32), jnp.asarray(cloudy, jnp.float32)
  b, h, w, c = source.shape
  weights = _clear_weights(cloud_mask)
  # Bands become batch rows, each with one feature.
  to_rows = lambda image: jnp.moveaxis(image.reshape(b, h * w, c), -1, 1).reshape(b * c, h * w, 1)
  gain, offset, support = _fit(to_rows(source), to_rows(cloudy), jnp.repeat(weights, c, axis=0),
                               robust)
  gain, offset = gain.reshape(b, 1, 1, c), offset.reshape(b, 1, 1, c)
  reliable = (support >= max(2 * MIN_CLEAR_PER_COEFFICIENT, min_share * h * w)).reshape(b, 1, 1, c)
  return jnp.clip(jnp.where(reliable, gain * source + offset, source), 0.0, 1.0)


def match_history(history: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array, *,
                  robust: bool = True) -> jax.Array:
  """Every earlier date (B, T, H, W, C) matched to the cloudy date band by band (`match_bands`)."""
  history = jnp.asarray(history, jnp.float32)
  b, t = history.shape[:2]
  repeat = lambda x: jnp.repeat(jnp.asarray(x), t, axis=0)
  matched = match_bands(history.reshape(b * t, *history.shape[2:]), repeat(cloudy),
                        repeat(cloud_mask), robust=robust)
  return matched.reshape(history.shape)


def fill_history(history: jax.Array, history_mask: jax.Array, *,
                 robust: bool = True) -> jax.Array:
  """Each earlier date with its clouds (`history_mask` (B, T, H, W, 1), 1 = cloud or shadow)
  filled from the other earlier dates.

  First, a masked pixel of date t becomes the median, over the other dates clear there, of
  those dates matched band by band to date t (`match_bands`, fitted on the pixels clear in
  both); where no other date is clear, the median of all other dates so matched. Then each band
  of date t is regressed on every band of the other dates so filled (`matched_regression`'s fit,
  on the pixels clear in all of them): a change of season moves the bands of a place together,
  which one gain per band cannot follow; the median fill stays where too few pixels are clear
  for the regression. The cloudy date itself is never a source: its clear pixels are what the
  prior is fitted to, and a feature copied from them would fit them by construction. Unmasked
  pixels are returned exactly; with one earlier date nothing can be filled.
  """
  history = jnp.asarray(history, jnp.float32)
  mask = jnp.asarray(history_mask, jnp.float32)
  b, t = history.shape[:2]
  if t < 2:
    return history
  pairs = [(target, source) for target in range(t) for source in range(t) if source != target]
  target, source = (np.array(index) for index in zip(*pairs))
  rows = lambda x, index: jnp.moveaxis(x[:, index], 1, 0).reshape(-1, *x.shape[2:])
  matched = match_bands(rows(history, source), rows(history, target),
                        jnp.maximum(rows(mask, source), rows(mask, target)), robust=robust)
  # (T, T - 1, B, H, W, C): per date, its other dates matched to it.
  matched = matched.reshape(t, t - 1, b, *history.shape[2:])
  # (T, T - 1, B, H, W, 1): per date, its other dates' masks.
  source_mask = jnp.moveaxis(mask[:, source], 1, 0).reshape(t, t - 1, b, *mask.shape[2:])
  source_masked = source_mask > 0.5
  clear_median = nanmedian_small(jnp.where(source_masked, jnp.nan, matched), axis=1)
  candidate = jnp.where(jnp.isnan(clear_median), nanmedian_small(matched, axis=1), clear_median)
  median_filled = jnp.where(mask > 0.5, jnp.moveaxis(candidate, 0, 1), history)
  # (T * B, ...) rows: each date's other dates (median-filled) as features, fitted where all
  # of them and the date itself are clear.
  others = jnp.moveaxis(median_filled[:, source], 1, 0).reshape(t, t - 1, b, *history.shape[2:])
  features = _dates_as_bands(jnp.moveaxis(others, 1, 2).reshape(t * b, t - 1,
                                                                *history.shape[2:]))
  by_date = lambda x: jnp.moveaxis(x, 1, 0).reshape(t * b, *x.shape[2:])
  fit_mask = jnp.maximum(by_date(mask),
                         jnp.max(source_mask, axis=1).reshape(t * b, *mask.shape[2:]))
  regressed = _regressed(features, by_date(history), fit_mask, by_date(median_filled), robust)
  regressed = jnp.moveaxis(regressed.reshape(t, b, *history.shape[2:]), 0, 1)
  return jnp.where(mask > 0.5, regressed, history)


def persistence(history: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array, *,
                robust: bool = True) -> jax.Array:
  """The most recent earlier date (`robust` is ignored: nothing is fitted)."""
  del cloudy, cloud_mask, robust
  return jnp.asarray(history, jnp.float32)[:, -1]


def temporal_mean(history: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array, *,
                  robust: bool = True) -> jax.Array:
  """Per-pixel mean of the earlier dates (`robust` is ignored: nothing is fitted)."""
  del cloudy, cloud_mask, robust
  return jnp.mean(jnp.asarray(history, jnp.float32), axis=1)


def temporal_median(history: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array, *,
                    robust: bool = True) -> jax.Array:
  """Per-pixel median of the earlier dates (`robust` is ignored: nothing is fitted)."""
  del cloudy, cloud_mask, robust
  return jnp.median(jnp.asarray(history, jnp.float32), axis=1)


def matched_persistence(history: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array, *,
                        robust: bool = True) -> jax.Array:
  """The most recent earlier date, matched to the cloudy date's clear pixels band by band."""
  return match_bands(persistence(history, cloudy, cloud_mask), cloudy, cloud_mask, robust=robust)


def matched_mean(history: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array, *,
                 robust: bool = True) -> jax.Array:
  """The temporal mean, matched to the cloudy date's clear pixels band by band."""
  return match_bands(temporal_mean(history, cloudy, cloud_mask), cloudy, cloud_mask,
                     robust=robust)


def _regressed(features: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array,
               fallback: jax.Array, robust: bool) -> jax.Array:
  """Each band of `cloudy` as a linear function of (B, H, W, F) `features`, fitted on the clear
  pixels and applied everywhere; `fallback` where the fit rests on fewer than
  MIN_CLEAR_PER_COEFFICIENT pixels per coefficient or a gain is beyond _MAX_GAIN (or not
  finite). Clipped to [0, 1]."""
  b, h, w, f = features.shape
  c = cloudy.shape[-1]
  features = features.reshape(b, h * w, f)
  gain, offset, support = _fit(features, jnp.asarray(cloudy, jnp.float32).reshape(b, h * w, c),
                               _clear_weights(cloud_mask), robust)
  fitted = (jnp.einsum("bnf,bfc->bnc", features, gain) + offset[:, None]).reshape(b, h, w, c)
  reliable = ((support >= MIN_CLEAR_PER_COEFFICIENT * (f + 1) + MIN_CLEAR_SHARE * h * w)
              & jnp.all(jnp.abs(gain) <= _MAX_GAIN, axis=(1, 2)))
  return jnp.clip(jnp.where(reliable[:, None, None, None], fitted, fallback), 0.0, 1.0)


def _dates_as_bands(history: jax.Array) -> jax.Array:
  """(B, T, H, W, C) -> (B, H, W, T * C): every band of every date side by side."""
  b, t, h, w, c = history.shape
  return jnp.moveaxis(history, 1, 3).reshape(b, h, w, t * c)


def matched_regression(history: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array, *,
                       robust: bool = True) -> jax.Array:
  """Each band of the cloudy date as a linear function of every band of every earlier date.

  Fitted on the clear pixels (T * C features and an offset per output band); where too few
  pixels are clear for that many coefficients, `matched_persistence` (two per band, or none).
  Clipped to [0, 1].
  """
  history = jnp.asarray(history, jnp.float32)
  return _regressed(_dates_as_bands(history), cloudy, cloud_mask,
                    matched_persistence(history, cloudy, cloud_mask, robust=robust), robust)


def _window_counts(size: int, radius: int) -> np.ndarray:
  """How many positions of a 0..size-1 axis each (2 radius + 1) window around them covers."""
  position = np.arange(size)
  return np.minimum(position + radius, size - 1) - np.maximum(position - radius, 0) + 1


def _box_sums(images: jax.Array, radius: int, axis: int) -> jax.Array:
  """Sums over the 2 radius + 1 positions around each along `axis`, within the image."""
  if radius <= _DIRECT_BOX_RADIUS:
    window = [1] * images.ndim
    window[axis] = 2 * radius + 1
    pads = [(0, 0)] * images.ndim
    pads[axis] = (radius, radius)
    return jax.lax.reduce_window(images, 0.0, jax.lax.add, window, [1] * images.ndim, pads)
  # Wide windows as differences of cumulative sums: XLA:CPU's reduce_window costs grow with the
  # window (a 129 px box of a 512 px window took a second). Centred first, so that float32
  # cumulative sums stay small.
  centre = jnp.mean(images, axis=axis, keepdims=True)
  sums = jnp.cumsum(images - centre, axis=axis)
  sums = jnp.concatenate([jnp.zeros_like(jax.lax.slice_in_dim(sums, 0, 1, axis=axis)), sums],
                         axis=axis)
  size = images.shape[axis]
  position = np.arange(size)
  high, low = np.minimum(position + radius + 1, size), np.maximum(position - radius, 0)
  counts = _window_counts(size, radius).astype(np.float32).reshape(
      [-1 if a == axis else 1 for a in range(images.ndim)])
  return (jnp.take(sums, high, axis=axis) - jnp.take(sums, low, axis=axis)
          + centre * counts)


def box_mean(images: jax.Array, radius: int) -> jax.Array:
  """Mean over the (2 radius + 1)^2 window around each pixel of (N, H, W, C) images; windows
  reaching over the border average the pixels inside the image (separable, any image size)."""
  sums = _box_sums(_box_sums(images, radius, 1), radius, 2)
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


def _haze_weights(cloudy: jax.Array, simple: jax.Array, cloud_mask: jax.Array,
                  scale: jax.Array) -> jax.Array:
  """(B, H, W, 1) fit weights for the "haze" guard: 1 on clear pixels, less where the residual
  against `simple`, in units of `scale` (B, 1, C), is of one sign in every band (brighter in
  all: haze; darker in all: shadow)."""
  clear = 1.0 - jnp.asarray(cloud_mask, jnp.float32)
  z = (cloudy - simple) / scale[:, None]
  excess = (jnp.clip(jnp.min(z, axis=-1, keepdims=True), 0.0, None)
            - jnp.clip(jnp.max(z, axis=-1, keepdims=True), None, 0.0))
  # Averaged over the clear pixels around: the masked ones are off the fit by far more.
  excess = box_mean(excess * clear, HAZE_RADIUS) / jnp.maximum(box_mean(clear, HAZE_RADIUS), 1e-6)
  return clear * jnp.square(jnp.clip(1.0 - jnp.square(excess / HAZE_SIGMA), 0.0, None))


def _held_out_error(features: jax.Array, cloudy: jax.Array, weights: jax.Array,
                    scale: jax.Array, robust: bool) -> jax.Array:
  """(B,) mean squared error, in units of `scale` (B, 1, C) and clipped at CHOICE_CLIP, of fits
  on one half of a checkerboard of blocks predicting the weighted pixels of the other half, both
  ways; NaN (no verdict) where a half holds too few pixels for the fit."""
  b, h, w, f = features.shape
  block = max(1, min(CHOICE_BLOCK, min(h, w) // 4))
  rows, cols = np.indices((h, w))
  half = jnp.asarray(((rows // block + cols // block) % 2).reshape(-1) == 1)
  x = features.reshape(b, h * w, f)
  y = cloudy.reshape(b, h * w, cloudy.shape[-1])
  total, enough = jnp.zeros(b), jnp.ones(b, bool)
  for fitted in (half, ~half):
    gain, offset, support = _fit(x, y, weights * fitted, robust)
    residual = (y - jnp.einsum("bnf,bfc->bnc", x, gain) - offset[:, None]) / scale
    loss = jnp.mean(jnp.minimum(jnp.square(residual), CHOICE_CLIP**2), axis=-1)
    total = total + jnp.sum(weights * ~fitted * loss, axis=1)
    enough &= support >= MIN_CLEAR_PER_COEFFICIENT * (f + 1)
  return jnp.where(enough, total / jnp.maximum(jnp.sum(weights, axis=1), 1.0), jnp.nan)


def _feature_distance(features: jax.Array, weights: jax.Array) -> jax.Array:
  """(B, H, W, 1) squared Mahalanobis distance per feature of every pixel's features from the
  weighted pixels' (their mean over those pixels is 1), with the covariance of the subsample
  `_fit` takes (`_fit_stride`)."""
  b, h, w, f = features.shape
  x = features.reshape(b, h * w, f)
  stride = _fit_stride(h * w, f)
  xs, ws = x[:, ::stride], weights[:, ::stride]
  total = jnp.maximum(jnp.sum(ws, axis=1), 1e-12)[:, None]
  mean = jnp.einsum("bn,bnf->bf", ws, xs) / total
  centred = xs - mean[:, None]
  covariance = jnp.einsum("bnf,bng->bfg", ws[..., None] * centred, centred) / total[..., None]
  ridge = 1e-3 * jnp.trace(covariance, axis1=1, axis2=2) / f + 1e-20
  eye = jnp.eye(f, dtype=x.dtype)
  inverse = spd_solve(covariance + ridge[:, None, None] * eye, jnp.broadcast_to(eye, (b, f, f)))
  centred = x - mean[:, None]
  distance = jnp.einsum("bnf,bfg,bng->bn", centred, inverse, centred) / f
  return distance.reshape(b, h, w, 1)


def matched_multiscale(history: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array, *,
                       robust: bool = True,
                       radii: tuple[int, ...] = MULTISCALE_RADII,
                       guards: tuple[str, ...] = GUARDS) -> jax.Array:
  """`matched_regression` with every earlier date split into frequency bands (`frequency_bands`
  with `radii`): each band of the cloudy date as a linear function of every band of every date
  at every scale.

  Fitted on the clear pixels (T * C * (len(radii) + 1) features and an offset per output band);
  `matched_regression` where too few pixels are clear for that many coefficients, and where the
  `guards` (GUARDS) say the many coefficients cannot be trusted. Clipped to [0, 1].
  """
  unknown = set(guards) - set(GUARDS)
  if unknown:
    raise ValueError(f"unknown guards {sorted(unknown)}; guards: {GUARDS}")
  history = jnp.asarray(history, jnp.float32)
  cloudy = jnp.asarray(cloudy, jnp.float32)
  simple_features = _dates_as_bands(history)
  simple = matched_regression(history, cloudy, cloud_mask, robust=robust)
  features = frequency_bands(simple_features, radii)
  clear = _clear_weights(cloud_mask)
  b, c = cloudy.shape[0], cloudy.shape[-1]
  # The single-scale fit's robust residual scale on the clear pixels: the unit of both the
  # haze guard's excess and the choice guard's errors.
  scale = robust_std((cloudy - simple).reshape(b, -1, c), clear)
  fit_mask = cloud_mask
  if "haze" in guards:
    fit_mask = 1.0 - _haze_weights(cloudy, simple, cloud_mask, scale)
  prior = _regressed(features, cloudy, fit_mask, simple, robust)
  if "extrapolation" in guards:
    low, high = EXTRAPOLATION_RANGE
    share = jnp.clip((_feature_distance(features, clear) - low) / (high - low), 0.0, 1.0)
    prior = (1.0 - share) * prior + share * simple
  if "choice" in guards:
    # Without a verdict (NaN) the multi-scale fit stays.
    simpler = (_held_out_error(simple_features, cloudy, clear, scale, robust)
               <= _held_out_error(features, cloudy, clear, scale, robust))
    prior = jnp.where(simpler[:, None, None, None], simple, prior)
  return prior


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
