"""Clouds, haze and shadows found in every date of a series, from the series itself.

A user's cloud mask rarely holds everything: QA60 flags opaque clouds at 60 m and often nothing
at all, and no single-date mask of R, G, B sees haze or shadows well. A time series does: a pixel
much brighter and whiter than the other dates predict for it is cloud or haze, one much darker
is shadow (the multi-temporal tests of MAJA and Tmask). For every date:

1. the clear-sky tests (`clear_sky_tests`) compare it with the other dates as they are, never
   fitted to it, so that they hold however much of it is clouded: brighter than every other
   date clear there by `clear_sky_margin` in mean R, G, B reflectance, with a flat or bluish
   change (or bright and white), is cloud or haze; red and green below `clear_sky_shadow` of
   every other date is darker than any clear sky left the place;
2. the other dates are matched to it band by band (robust gain and offset,
   `gapfill.match_bands`) on the pixels that pass every test in both, never on bright white
   ones; where less than `min_clear_share` of it is left, they are taken as they are (a match
   fitted on the clouds would follow them). Their per-pixel median over the dates clear there
   is its reference;
3. its 5 x 5 local means are tested against the reference's, in units of the date's robust
   residual standard deviation on its clear pixels (at least `min_noise`). Brighter by
   `cloud_sigma`, with a flat or bluish change (blue rising at least `min_blue_share` as much
   as red and green: clouds and haze scatter all visible light, more in blue; a harvest or a
   new clearing brightens red first) and brighter than the other dates as they are: cloud or
   haze, as is whatever the clear-sky test flagged. Darker by `shadow_sigma`, keeping at most
   `max_shadow_ratio` of the reference's light, darker than the other dates as they are, and
   within `shadow_distance` of a cloud of the date: shadow; so is what the clear-sky test
   found darker on a date darker than every other over `broad_shadow` of it (as under thin
   cloud);
4. detections grow into their neighbours that pass the tests at `grow_sigma` (the fading
   margins of haze and shadows), specks smaller than 3 x 3 px are dropped, and a buffer of
   `buffer` px is added. A date so found over `overcast` of its pixels is masked whole.

The first pass finds clouds only, with every date lending to the reference; the later ones find
clouds and shadows with references that leave out what the previous pass found (a cloud on one
date makes the others look dark beside it, a shadow makes them look bright), the first pass's
reference standing where that leaves no date, and their seeds must pass the first pass's margin
test too. Where the first pass finds nothing
and no test flagged anything, the later ones would find nothing either and are skipped. Where
no other date is clear, the single-date tests of Fmask on R, G, B decide (`bright_white`). Any
mask the user gives is added to the result, never taken from it.

Everything is JAX (jit with the settings static); four synthetic dates of 480 x 480 px with
clouds took 0.24 s before the clear-sky tests and take 0.33 s with them (two idle AVX2 CPU cores,
both timed in one session).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from plfm_jax.models import gapfill


@dataclasses.dataclass(frozen=True)
class DetectionSettings:
  """How `detect` decides; the defaults were chosen on validation data (docs/results.md).

  Attributes:
    cloud_sigma: brightening, in robust standard deviations of the date's residual, that seeds
      a cloud.
    shadow_sigma: darkening that seeds a shadow, likewise.
    grow_sigma: brightening or darkening into which seeds grow (haze and shadow margins).
    grow_steps: how far they grow, in pixels.
    min_blue_share: a cloud's blue rises by at least this share of its red and green rise.
    max_shadow_ratio: a shadow seed keeps at most this share of the reference's light.
    min_noise: floor of the residual's standard deviation (reflectance): dates that agree to
      within sensor noise must not turn that noise into clouds.
    brightness: single-date test, where no other date is clear: mean R, G, B reflectance above
      this and white (Fmask's whiteness below MAX_WHITENESS) is cloud.
    buffer: pixels added around every detection.
    passes: detection passes (see the module docstring); 1 finds clouds only.
    smoothing: radius in pixels of the box mean the tests see instead of single pixels.
    shadow_distance: a shadow lies at most this many pixels from a cloud of its date (clouds
      up to about 3 km high, the sun down to 35 degrees: 4 km at 10 m): darker ground on a
      date without clouds near it is a change of the ground (a ploughed field, high water).
    clear_sky_margin: the clear-sky tests (`clear_sky_tests`): mean R, G, B reflectance above
      every other date clear there by this much, with a flat or bluish change (or bright and
      white), is cloud or haze whatever the date's own statistics say.
    clear_sky_shadow: the clear-sky tests: red and green below this share of every other date
      clear there is darker than any clear sky; shadow on a date so darkened over
      `broad_shadow` of it, and kept out of the matching on any date.
    broad_shadow: share of a date's pixels darker than every other date (`clear_sky_shadow`) at
      which the darkening is taken for a shadow with no cloud near it (thin cloud over all of
      a date shades it; a change of the ground darkens fields, not the whole date).
    min_clear_share: share of a date's pixels that must pass every clear test for the other
      dates to be matched to it; below it they are taken as they are (a match fitted on a few
      pixels, or on the clouds, would bend the reference towards them).
    overcast: share of a date's pixels found cloud, haze or shadow at which all of it is
      masked: what little seems clear there is mostly the margins of its clouds and haze, and
      a restoration fitted to it would follow them.
  """
  cloud_sigma: float = 6.0
  shadow_sigma: float = 3.0
  grow_sigma: float = 3.0
  grow_steps: int = 12
  min_blue_share: float = 0.85
  max_shadow_ratio: float = 0.8
  min_noise: float = 0.0015
  brightness: float = 0.25
  buffer: int = 2
  passes: int = 3
  smoothing: int = 2
  shadow_distance: int = 400
  clear_sky_margin: float = 0.03
  clear_sky_shadow: float = 0.8
  broad_shadow: float = 0.5
  min_clear_share: float = 0.05
  overcast: float = 0.8


DEFAULT = DetectionSettings()
# Fmask's whiteness limit: sum(|band - mean|) / mean of a cloud's visible bands.
MAX_WHITENESS = 0.7
# Cell size of `_near`'s grid, in pixels.
_NEAR_CELL = 8
# Pixels per date the noise is estimated on, at least.
_NOISE_SAMPLES = 16384
# A shadow is darker than the other dates as they are, unmatched, by at least this ratio.
_RAW_SHADOW_RATIO = 0.9
# The lower quartile of |z| for standard Gaussian z.
_QUARTILE_OF_ABS_GAUSSIAN = 0.3186
# Fmask's haze-optimised-transform test: blue - 0.5 red of a cloud exceeds this.
HOT_OFFSET = 0.08


class Detection(NamedTuple):
  """Per date (N, H, W) bool: `cloud` (clouds and haze) and `shadow`; `mask` is their union with
  the given masks, buffered."""
  cloud: jax.Array
  shadow: jax.Array
  mask: jax.Array


def bright_white(dates: jax.Array, brightness: float = DEFAULT.brightness) -> jax.Array:
  """(..., H, W) bool: the single-date cloud tests of Fmask that need only R, G, B reflectance
  (..., H, W, 3): bright (mean above `brightness`), white (sum(|band - mean|) / mean below
  MAX_WHITENESS) and hazy (the haze-optimised transform, blue - 0.5 red above HOT_OFFSET:
  bright sand and rock are white enough but far redder than a cloud)."""
  mean = jnp.mean(dates, axis=-1)
  spread = jnp.sum(jnp.abs(dates - mean[..., None]), axis=-1)
  hot = dates[..., 2] - 0.5 * dates[..., 0]
  return ((mean > brightness) & (spread < MAX_WHITENESS * jnp.maximum(mean, 1e-6))
          & (hot > HOT_OFFSET))


def _window_max(mask: jax.Array, radius: int) -> jax.Array:
  """Dilation of (N, H, W) bool masks by a (2 radius + 1)^2 square."""
  if radius <= 0:
    return mask
  window = (1, 2 * radius + 1, 2 * radius + 1)
  return jax.lax.reduce_window(mask, False, jax.lax.bitwise_or, window, (1, 1, 1), "SAME")


def _near(mask: jax.Array, distance: int) -> jax.Array:
  """(N, H, W) bool: within about `distance` px of `mask` (on a grid of _NEAR_CELL px cells, so
  that the cost does not grow with the distance)."""
  n, h, w = mask.shape
  cell = _NEAR_CELL
  padded = jnp.pad(mask, ((0, 0), (0, -h % cell), (0, -w % cell)))
  cells = padded.reshape(n, padded.shape[1] // cell, cell, padded.shape[2] // cell, cell)
  near = _window_max(jnp.any(cells, axis=(2, 4)), -(-distance // cell))
  return jnp.repeat(jnp.repeat(near, cell, axis=1), cell, axis=2)[:, :h, :w]


def _window_min(mask: jax.Array, radius: int) -> jax.Array:
  window = (1, 2 * radius + 1, 2 * radius + 1)
  return jax.lax.reduce_window(mask, True, jax.lax.bitwise_and, window, (1, 1, 1), "SAME")


def _smooth(images: jax.Array, settings: DetectionSettings) -> jax.Array:
  # Clouds, haze and shadows are smooth over a few pixels, the texture and misregistration that
  # make up most of the residual are not: tested on local means, they stand out far more.
  return gapfill.box_mean(images, settings.smoothing)


class Reference(NamedTuple):
  """What the other dates say of each date: `matched` (N, H, W, 3) their median matched to it,
  `raw` their median as they are, and `exists` (N, H, W) bool where some other date is clear."""
  matched: jax.Array
  raw: jax.Array
  exists: jax.Array


def references(dates: jax.Array, masked: jax.Array, unfit: jax.Array | None = None,
               min_clear_share: float = 0.0) -> Reference:
  """Each date's reference from the other dates clear at each pixel.

  Args:
    dates: (N, H, W, 3) reflectance.
    masked: (N, H, W) bool, pixels no date may lend or fit on (clouds found so far, nodata).
    unfit: (N, H, W) bool, further pixels the matching may not fit on (but may lend).
    min_clear_share: a date is matched to another only where at least this share of its pixels
      is clear in both (`gapfill.match_bands`); the other date is taken as it is otherwise.
  """
  unfit = masked if unfit is None else masked | unfit
  n = dates.shape[0]
  if n < 2:
    return Reference(jnp.zeros_like(dates), jnp.zeros_like(dates), jnp.zeros(dates.shape[:3], bool))
  pairs = [(target, source) for target in range(n) for source in range(n) if source != target]
  target, source = (np.array(index) for index in zip(*pairs))
  either = (unfit[source] | unfit[target])[..., None].astype(jnp.float32)
  matched = gapfill.match_bands(dates[source], dates[target], either,
                                min_share=min_clear_share)
  matched = matched.reshape(n, n - 1, *dates.shape[1:])
  lent = ~masked[source].reshape(n, n - 1, *dates.shape[1:3])[..., None]
  median = lambda values: jnp.nan_to_num(gapfill.nanmedian_small(
      jnp.where(lent, values, jnp.nan), axis=1))
  raw = dates[source].reshape(n, n - 1, *dates.shape[1:])
  return Reference(median(matched), median(raw), jnp.any(lent[..., 0], axis=1))


def clear_sky_tests(smoothed: jax.Array, lent: jax.Array, white: jax.Array,
                    settings: DetectionSettings) -> tuple[jax.Array, jax.Array]:
  """(cloud, darker), (N, H, W) bool: each date against the other dates as they are, never
  matched to it, where they may lend (`lent`, (N, H, W) bool).

  A date's own statistics fail where clouds and haze cover most of it: a matching follows the
  majority of its pixels and its residual's spread grows with them, so that what is left reads as
  its light. These tests lean on the other dates alone (the clear-sky range of the place): mean
  R, G, B reflectance above every other date by `clear_sky_margin` with a flat or bluish change
  (or bright and white, `white`: over ground bluer than itself a thick cloud's change is not
  bluish) is cloud or haze; red and green below `clear_sky_shadow` of every other date, blue
  keeping at least the share red keeps (shade is lit by the blue sky) and the mean darker by
  shadow_sigma x min_noise, is darker than any clear sky left the place.
  """
  n = smoothed.shape[0]
  if n < 2:
    nothing = jnp.zeros(smoothed.shape[:3], bool)
    return nothing, nothing
  clouds, darker = [], []
  for date in range(n):
    others = np.arange(n) != date
    lend = lent[others][..., None]
    values = smoothed[others]
    exists = jnp.any(lend[..., 0], axis=0)
    up = smoothed[date] - jnp.max(jnp.where(lend, values, -jnp.inf), axis=0)
    # The colour of the change against the other dates' median: against the brightest of each
    # band, one date's light would decide it.
    change = smoothed[date] - jnp.nan_to_num(gapfill.nanmedian_small(
        jnp.where(lend, values, jnp.nan), axis=0))
    red, green, blue = change[..., 0], change[..., 1], change[..., 2]
    clouds.append(exists & (jnp.mean(up, axis=-1) > settings.clear_sky_margin)
                  & ((blue >= settings.min_blue_share * jnp.maximum(red, green))
                     | white[date]))
    low = jnp.min(jnp.where(lend, values, jnp.inf), axis=0)
    ratio = smoothed[date] / jnp.maximum(low, 1e-6)
    drop = jnp.mean(low - smoothed[date], axis=-1)
    darker.append(exists & (ratio[..., 0] < settings.clear_sky_shadow)
                  & (ratio[..., 1] < settings.clear_sky_shadow)
                  & (ratio[..., 2] >= ratio[..., 0])
                  & (drop > settings.shadow_sigma * settings.min_noise))
  return jnp.stack(clouds), jnp.stack(darker)


def _sampled(images: jax.Array) -> jax.Array:
  """(P, H, W, ...) -> (P, M, ...): a regular subsample of at least _NOISE_SAMPLES of each
  image's pixels."""
  p, h, w = images.shape[:3]
  return images.reshape(p, h * w, *images.shape[3:])[:, ::max(1, h * w // _NOISE_SAMPLES)]


def _noise(residual: jax.Array, usable: jax.Array, floor: float) -> jax.Array:
  """(N, 1, 1, 3) standard deviation of each date's residual over its usable pixels, from the
  lower quartile of |residual| (of Gaussian noise, 0.3186 standard deviations): unlike the
  median, it holds while up to three quarters of a date are cloud and shadow not yet found.
  Estimated on a regular subsample of at least _NOISE_SAMPLES pixels per date."""
  n = residual.shape[0]
  rows = jnp.moveaxis(_sampled(jnp.abs(residual)), -1, 1).reshape(3 * n, -1)
  included = jnp.repeat(_sampled(usable), 3, axis=0)
  std = gapfill.masked_quantile(rows, included, 0.25) / _QUARTILE_OF_ABS_GAUSSIAN
  return jnp.maximum(std, floor).reshape(n, 1, 1, 3)


def _tests(dates: jax.Array, reference: Reference, valid: jax.Array, known: jax.Array,
           settings: DetectionSettings) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(cloud seeds, cloud margins, shadow seeds, shadow margins), (N, H, W) bool each, of
  `dates` smoothed (`_smooth`)."""
  matched, raw = _smooth(reference.matched, settings), _smooth(reference.raw, settings)
  exists = reference.exists
  residual = dates - matched
  noise = _noise(residual, exists & valid & ~known, settings.min_noise)
  # Brightening of the mean of the bands, in units of the mean band noise.
  change = jnp.mean(residual, axis=-1) / jnp.mean(noise, axis=-1)
  red, green, blue = residual[..., 0], residual[..., 1], residual[..., 2]
  flat = blue >= settings.min_blue_share * jnp.maximum(red, green)
  usable = exists & valid
  brightness = jnp.mean(dates, axis=-1)
  # The other dates as they are must agree, by half the margin: ground the seasons changed less
  # than the scene's trend (water, forest, roofs) otherwise looks shadowed, or cloudy, once
  # matched.
  raw_change = (brightness - jnp.mean(raw, axis=-1)) / jnp.mean(noise, axis=-1)
  raw_ratio = brightness / jnp.maximum(jnp.mean(raw, axis=-1), 1e-6)
  cloud_seed = (usable & flat & (change > settings.cloud_sigma)
                & (raw_change > 0.5 * settings.cloud_sigma))
  cloud_margin = usable & flat & (change > settings.grow_sigma)
  ratio = brightness / jnp.maximum(jnp.mean(matched, axis=-1), 1e-6)
  # Red and green: haze over a shadow can lift blue.
  darker = (red < 0) & (green < 0)
  shadow_seed = (usable & darker & (change < -settings.shadow_sigma)
                 & (ratio < settings.max_shadow_ratio) & (raw_change < -0.5 * settings.shadow_sigma)
                 & (raw_ratio < _RAW_SHADOW_RATIO))
  shadow_margin = usable & darker & (change < -settings.grow_sigma)
  return cloud_seed, cloud_margin, shadow_seed, shadow_margin


def _share(mask: jax.Array, valid: jax.Array) -> jax.Array:
  """(N, 1, 1): the share of each date's valid pixels that (N, H, W) `mask` holds."""
  return (jnp.sum(mask & valid, axis=(1, 2))
          / jnp.maximum(jnp.sum(valid, axis=(1, 2)), 1))[:, None, None]


def _dilated3(mask: jax.Array) -> jax.Array:
  """(N, H, W) bool dilated by a 3 x 3 square: `_window_max(mask, 1)` as shifted slices XLA
  fuses into one pass, 3.5x faster in `_grown`'s loop. Not for `_window_max` itself: outside a
  loop, XLA fused what computes the input into every slice and recomputed it (the whole
  detection ran six times slower)."""
  rows = jnp.pad(mask, ((0, 0), (1, 1), (0, 0)))
  mask = rows[:, :-2] | rows[:, 1:-1] | rows[:, 2:]
  cols = jnp.pad(mask, ((0, 0), (0, 0), (1, 1)))
  return cols[:, :, :-2] | cols[:, :, 1:-1] | cols[:, :, 2:]


def _grown(seed: jax.Array, margin: jax.Array, steps: int) -> jax.Array:
  """`seed` without its specks (a 3 x 3 opening), grown `steps` pixels into `margin`."""
  mask = _window_max(_window_min(seed, 1), 1) & seed
  # A loop, so that XLA does not fuse the steps into one another and recompute each one.
  return jax.lax.fori_loop(0, steps, lambda _, grown: grown | (_dilated3(grown) & margin), mask)


@functools.partial(jax.jit, static_argnames="settings")
def detect(dates: jax.Array, valid: jax.Array | None = None, given: jax.Array | None = None,
           settings: DetectionSettings = DEFAULT) -> Detection:
  """Clouds, haze and shadows of every date of a series.

  Args:
    dates: (N, H, W, 3) R, G, B reflectance in [0, 1], any order of dates.
    valid: (N, H, W) bool, False at nodata (never flagged, never used); default where finite.
    given: (N, H, W) bool masks the user has (QA60, SCL, ...): trusted, added to the result.
    settings: the thresholds.

  Returns:
    The detection; its `mask` is what to restore (or not to use) in each date.
  """
  dates = jnp.asarray(dates, jnp.float32)
  shape = dates.shape[:3]
  # Computed from the data, not a constant: XLA would spend seconds folding the tests of a
  # constant mask at compile time.
  valid = (jnp.all(jnp.isfinite(dates), axis=-1) if valid is None
           else jnp.asarray(valid, bool))
  given = jnp.zeros(shape, bool) if given is None else jnp.asarray(given, bool) & valid
  single = bright_white(dates, settings.brightness) & valid
  smoothed = _smooth(dates, settings)
  masked = given | ~valid
  # The clear-sky tests twice: a cloud of one date at the same place as a brighter cloud of
  # another is found once the brighter one no longer lends.
  sky_cloud = clear_sky_tests(smoothed, ~masked, single, settings)[0] & valid
  again, sky_dark = clear_sky_tests(smoothed, ~(masked | sky_cloud | single), single, settings)
  sky_cloud |= again & valid
  sky_dark &= valid & ~sky_cloud
  broad = _share(sky_dark, valid) > settings.broad_shadow
  unclear = single | sky_cloud | sky_dark
  # The first pass lends every date, what the clear-sky tests found included: a median over
  # the others outvotes a cloud in one of them, and taking the found pixels out would leave two
  # dates to lend in places, whose median is their mean (a shadow lent there made clear dates
  # look cloudy). Nothing a test found is fitted on, and a date with too little left clear is
  # not matched at all: the matching would follow its clouds.
  first = references(dates, masked, unclear, settings.min_clear_share)
  first_tests = _tests(smoothed, first, valid, given | unclear, settings)
  # Without a reference the single-date test decides; with one, the series does (ground that
  # is bright and white on every date is not a cloud).
  alone = single & ~first.exists
  cloud_seed, cloud_margin = first_tests[:2]
  cloud = _grown(cloud_seed | alone | sky_cloud, cloud_margin | alone, settings.grow_steps)

  def later_pass(_, state: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    cloud, shadow = state
    # Later passes leave out what the previous one found; where that leaves no date, the
    # first pass's reference stands. A seed must also stand out against the first pass's
    # reference: where one date is left, haze it has and no test caught would otherwise
    # make the date tested look shadowed (or a shadow, cloudy).
    found = given | cloud | shadow
    later = references(dates, found | ~valid, unclear, settings.min_clear_share)
    keep = later.exists[..., None]
    reference = Reference(jnp.where(keep, later.matched, first.matched),
                          jnp.where(keep, later.raw, first.raw), later.exists | first.exists)
    cloud_seed, cloud_margin, shadow_seed, shadow_margin = _tests(
        smoothed, reference, valid, found, settings)
    cloud = _grown((cloud_seed & first_tests[1]) | alone | sky_cloud, cloud_margin | alone,
                   settings.grow_steps)
    shadow_seed = ((shadow_seed & first_tests[3] & _near(cloud, settings.shadow_distance))
                   | (sky_dark & broad))
    shadow = _grown(shadow_seed, shadow_margin, settings.grow_steps) & ~cloud
    return cloud, shadow

  def later_passes(cloud: jax.Array) -> tuple[jax.Array, jax.Array]:
    # A loop: traced once, however many passes.
    return jax.lax.fori_loop(0, settings.passes - 1, later_pass, (cloud, jnp.zeros(shape, bool)))

  # Where the first pass found no cloud and no test flagged anything, the later passes would
  # leave out nothing new, test against the first pass's reference and estimate the same noise:
  # they find the same clouds (none), and no shadow without a cloud. Clear windows of a scene
  # skip them.
  anything = jnp.any(cloud) | jnp.any(unclear)
  cloud, shadow = jax.lax.cond(anything, later_passes,
                               lambda cloud: (cloud, jnp.zeros(shape, bool)), cloud)
  mask = _window_max(cloud | shadow | given, settings.buffer) & valid
  overcast = _share(mask, valid) >= settings.overcast
  return Detection(cloud=cloud, shadow=shadow, mask=mask | (overcast & valid))
