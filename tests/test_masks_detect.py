"""plfm_jax.masks.detect: clouds, haze and shadows found in synthetic series with known truth,
and in the real MultiEarth sample."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import MULTIEARTH_ROOT, multiearth_rgb
from plfm_jax.data.clouds import simulate_clouds
from plfm_jax.data.normalize import s2_reflectance
from plfm_jax.data.synthetic import synthesize_zone
from plfm_jax.masks import detect

SIZE = 96
MONTHS = ("Jan", "Feb", "Mar", "Apr")


def _series(seed: int) -> np.ndarray:
  s2, _ = next(synthesize_zone(np.random.default_rng(seed), 1, image_size=SIZE, months=MONTHS))
  return s2_reflectance(s2)


def _visible(cloudy: np.ndarray, clear: np.ndarray) -> np.ndarray:
  """Pixels a cloud, its haze or a shadow changed by more than 0.02 reflectance in some band."""
  return np.abs(cloudy - clear).max(axis=-1) > 0.02


def _far_from(mask: np.ndarray, distance: int) -> np.ndarray:
  """Pixels more than `distance` px (Chebyshev) from `mask`."""
  near = mask.copy()
  for _ in range(distance):
    grown = near.copy()
    grown[1:] |= near[:-1]
    grown[:-1] |= near[1:]
    grown[:, 1:] |= near[:, :-1]
    grown[:, :-1] |= near[:, 1:]
    near = grown
  return ~near


def _scores(found: np.ndarray, truth: np.ndarray, visible: np.ndarray) -> tuple[float, float]:
  """(recall of the visible changes, false alarms beyond the buffer and the haze margin)."""
  return float(found[visible].mean()), float(found[_far_from(truth, 3)].mean())


def test_finds_clouds_haze_and_shadows_of_the_last_date():
  recalls, false_alarms = [], []
  for seed in range(4):
    series = _series(seed)
    rng = np.random.default_rng(100 + seed)
    cloudy, truth, _ = simulate_clouds(series[-1], rng, coverage=(0.2, 0.5), haze_margin=0.1)
    found = detect.detect(np.concatenate([series[:-1], cloudy[None]]))
    mask = np.asarray(found.mask)
    recall, false_alarm = _scores(mask[-1], truth, _visible(cloudy, series[-1]))
    recalls.append(recall)
    false_alarms.append(false_alarm)
    # The earlier dates are clear: (almost) nothing is found there.
    assert mask[:-1].mean() < 0.01
  # The synthetic fields change a lot from month to month (harvests, green-up): some of that
  # darkening, next to clouds, passes for shadow.
  assert np.mean(recalls) > 0.9, recalls
  assert np.mean(false_alarms) < 0.05, false_alarms


def test_finds_the_clouds_of_an_earlier_date_too():
  series = _series(7)
  clouded = series.copy()
  clouded[-1], truth_last, _ = simulate_clouds(series[-1], np.random.default_rng(1),
                                               coverage=0.3, haze_margin=0.1)
  clouded[-2], truth_earlier, _ = simulate_clouds(series[-2], np.random.default_rng(2),
                                                  coverage=0.4, haze_margin=0.1)
  mask = np.asarray(detect.detect(clouded).mask)
  # Where both are clouded only the two oldest dates can tell: the last date's shadows and thin
  # edges there are found less often. Its fields darkened since the other dates (18% of it by
  # a fifth or more) stay out of the matching: near clouds, some of them pass for shadow.
  for index, truth, least in ((-1, truth_last, 0.7), (-2, truth_earlier, 0.85)):
    recall, false_alarm = _scores(mask[index], truth, _visible(clouded[index], series[index]))
    assert recall > least and false_alarm < 0.04, (index, recall, false_alarm)
  assert mask[:2].mean() < 0.01


def _steady_series(seed: int) -> np.ndarray:
  """One date of a synthetic zone seen four times under other gains and offsets, with noise:
  the ground does not change, only the light."""
  base = _series(seed)[-1]
  rng = np.random.default_rng(seed)
  gains, offsets = rng.uniform(0.85, 1.15, (4, 1, 1, 3)), rng.uniform(-0.01, 0.01, (4, 1, 1, 3))
  return (base * gains + offsets + rng.normal(0, 0.002, (4, *base.shape))).astype(np.float32)


def test_finds_shadows_near_clouds_only():
  series = _steady_series(8)
  shadowed = series.copy()
  cloud = np.zeros((SIZE, SIZE), bool)
  cloud[10:30, 10:35] = True
  shadow = np.zeros_like(cloud)
  shadow[40:60, 50:75] = True
  shadowed[-1][cloud] = 0.8
  shadowed[-1][shadow] *= 0.5
  found = detect.detect(shadowed)
  assert np.asarray(found.cloud)[-1][cloud].all()
  assert np.asarray(found.shadow)[-1][shadow].mean() > 0.9
  # The same darkening on a date without any cloud is a change of the ground, not a shadow.
  darkened = series.copy()
  darkened[-1][shadow] *= 0.5
  assert not np.asarray(detect.detect(darkened).mask).any()


@pytest.mark.parametrize("seed", [8, 9])
def test_haze_over_most_of_a_date_and_its_shadow_are_found(seed):
  """Haze over 52% of the last date would bend a robust matching fitted on all of it towards
  itself (a quarter of it was found so); the clear-sky tests keep it out of the fit."""
  series = _steady_series(seed)
  hazy = series.copy()
  haze = np.zeros((SIZE, SIZE), bool)
  haze[:50] = True
  core = np.zeros_like(haze)
  core[5:20, 10:80] = True
  shadow = np.zeros_like(haze)
  shadow[60:80, 20:50] = True
  hazy[-1][haze] = 0.6 * hazy[-1][haze] + 0.4 * 0.3
  hazy[-1][core] = 0.8
  hazy[-1][shadow] *= 0.6
  found = detect.detect(hazy)
  assert np.asarray(found.cloud)[-1][haze].mean() > 0.95
  assert np.asarray(found.shadow)[-1][shadow].mean() > 0.9
  assert not np.asarray(found.mask)[:-1].any()
  # Beyond the haze, its growth and the buffer: nothing.
  assert not np.asarray(found.mask)[-1][_far_from(haze | shadow, 16)].any()


@pytest.mark.parametrize("dates, hazy_date", [(4, 1), (2, 0)])
def test_haze_over_most_of_an_earlier_date_is_found_there_and_nowhere_else(dates, hazy_date):
  """The hazy date also lends to the others' references: its haze must not make them refit
  their matching onto it, and so look cloudy where it is clear (with two dates, no median
  outvotes it)."""
  series = _steady_series(8)[-dates:].copy()
  haze = np.zeros((SIZE, SIZE), bool)
  haze[:50] = True
  series[hazy_date][haze] = 0.6 * series[hazy_date][haze] + 0.4 * 0.3
  found = np.asarray(detect.detect(series).mask)
  assert found[hazy_date][haze].mean() > 0.95
  assert not found[hazy_date][_far_from(haze, 16)].any()
  assert not np.delete(found, hazy_date, axis=0).any()


def _layer(seed: int, cover: float) -> tuple[np.ndarray, np.ndarray]:
  """(opacity (SIZE, SIZE) in [0, 1], the pixels it covers): a smooth random field cut at its
  `cover` quantile, soft towards its edges (haze margins) and opaque at its cores."""
  if cover >= 1:  # Haze of even opacity over all of it.
    return np.full((SIZE, SIZE), 0.3), np.ones((SIZE, SIZE), bool)
  rng = np.random.default_rng(seed)
  field = rng.normal(size=(SIZE // 8, SIZE // 8))
  field = np.kron(field, np.ones((8, 8)))
  for _ in range(3):  # Box blur: blobs with fading edges.
    field = sum(np.roll(field, (dy, dx), (0, 1)) for dy in range(-3, 4) for dx in range(-3, 4))
  level = np.quantile(field, 1 - cover)
  opacity = np.clip((field - level) / (field.max() - level) * 1.5, 0, 1)
  return opacity, field > level


@pytest.mark.parametrize("cover", [0.1, 0.5, 0.9, 1.0])
def test_clouds_and_haze_over_any_share_of_a_date_are_found(cover):
  """A cloud layer (white light of 0.3 reflectance mixed in by its opacity: haze at its edges,
  opaque at its cores) over 10% to all of the last date of a steady series. Where it covers most
  of the date, tests relative to the date itself would read it as the date's light; 100% is a
  haze over the whole date."""
  series = _steady_series(11)
  opacity, covered = _layer(int(cover * 100), cover)
  dates = series.copy()
  dates[-1] = (1 - opacity[..., None]) * series[-1] + opacity[..., None] * 0.3
  found = np.asarray(detect.detect(dates).mask)
  visible = _visible(dates[-1], series[-1])
  assert found[-1][visible].mean() > 0.95, found[-1][visible].mean()
  if cover <= 0.5:
    # Growth and buffer reach at most 14 px beyond it; a date found over most of it would be
    # masked whole (`overcast`).
    assert not found[-1][_far_from(covered, 14)].any()
    assert found[-1].mean() < detect.DEFAULT.overcast
  assert not found[:-1].any()


def test_a_cloud_deck_over_most_of_an_earlier_date_is_never_taken_for_ground():
  """An earlier date 90% under cloud and haze is masked (and so filled or passed over), and the
  clear dates beside it are not flagged where its clouds are."""
  series = _steady_series(12)
  opacity, _ = _layer(3, 0.9)
  dates = series.copy()
  dates[1] = (1 - opacity[..., None]) * series[1] + opacity[..., None] * 0.3
  found = np.asarray(detect.detect(dates).mask)
  assert found[1][_visible(dates[1], series[1])].all()
  assert not np.delete(found, 1, axis=0).any()


def test_bright_white_ground_on_every_date_is_not_cloud_and_nodata_never_is():
  series = _series(3)
  series[:, 10:30, 10:30] = 0.5  # A white roof, on every date.
  valid = np.ones(series.shape[:3], bool)
  valid[-1, :, :8] = False
  series[-1, :, :8] = 0.9        # Nodata that looks like cloud.
  found = detect.detect(series, valid=valid)
  assert not np.asarray(found.mask).any()


def test_given_masks_are_kept_and_a_single_date_falls_back_to_the_fmask_tests():
  series = _series(4)
  given = np.zeros(series.shape[:3], bool)
  given[1, 40:50, 40:50] = True
  assert np.asarray(detect.detect(series, given=given).mask)[1, 40:50, 40:50].all()
  cloudy, truth, opaque = simulate_clouds(series[-1], np.random.default_rng(5), coverage=0.4,
                                          shadows=False)
  alone = np.asarray(detect.detect(cloudy[None]).mask)[0]
  assert alone[opaque].mean() > 0.95 and alone[_far_from(truth, 3)].mean() < 0.01


def test_bright_white_test_spares_sand():
  cloud = np.array([[0.75, 0.78, 0.8]], np.float32)
  sand = np.array([[0.38, 0.3, 0.24]], np.float32)  # Bright and white enough, but red.
  grey_roof = np.array([[0.3, 0.3, 0.3]], np.float32)
  assert np.asarray(detect.bright_white(cloud)).all()
  assert not np.asarray(detect.bright_white(sand)).any()
  assert np.asarray(detect.bright_white(grey_roof)).all()


@pytest.mark.parametrize("field", ["cloud_sigma", "grow_sigma"])
def test_stricter_thresholds_find_less(field):
  """Each statistical threshold, made stricter with the clear-sky margin (whose seeds would
  otherwise find these clouds alone)."""
  series = _series(6)
  cloudy, _, _ = simulate_clouds(series[-1], np.random.default_rng(6), coverage=0.4,
                                 haze_margin=0.1)
  dates = np.concatenate([series[:-1], cloudy[None]])
  default = np.asarray(detect.detect(dates).mask).sum()
  strict = detect.DetectionSettings(**{field: 4 * getattr(detect.DEFAULT, field),
                                      "clear_sky_margin": 1.0})
  assert np.asarray(detect.detect(dates, settings=strict).mask).sum() < default


def _multiearth(date: str) -> np.ndarray:
  return s2_reflectance(multiearth_rgb(date))


@pytest.mark.skipif(not MULTIEARTH_ROOT.is_dir(), reason=f"{MULTIEARTH_ROOT} not found")
def test_a_real_cloudy_date_loses_its_clouds_and_shadows():
  """MultiEarth's 2019-06-11 (cumulus, haze and shadows; QA60 empty) beside its three clear
  dates: every cloud-bright pixel and the shadows are found. A pixel is in shadow when it keeps
  less than 70% of the light of the darkest clear date matched to it (on what was not found)."""
  from plfm_jax.models import gapfill
  clear = [_multiearth(d) for d in ("2019_07_01", "2019_07_26", "2020_07_20")]
  date = _multiearth("2019_06_11")
  mask = np.asarray(detect.detect(np.stack([*clear, date])).mask)
  kept = (~mask[-1])[None, ..., None].astype(np.float32)
  matched = [np.asarray(gapfill.match_bands(x[None], date[None], 1 - kept))[0] for x in clear]
  dark = date.mean(-1) < 0.7 * np.min([m.mean(-1) for m in matched], axis=0)
  bright = date.mean(-1) > 0.15
  assert dark.mean() > 0.02 and bright.mean() > 0.02
  assert mask[-1][bright].mean() > 0.99 and mask[-1][dark].mean() > 0.85
  assert mask[:-1].mean() < 0.01
