"""Gap-filling methods: the matched baselines against NumPy least squares and a NumPy robust fit
with outliers, filling cloudy earlier dates, fallbacks, gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plfm_jax.models import gapfill

SIZE = 12


def series(seed: int = 0, batch: int = 2, dates: int = 3,
           size: int = SIZE) -> dict[str, np.ndarray]:
  """Earlier dates, a cloudy date that is a noisy linear function of them, a cloud mask."""
  rng = np.random.default_rng(seed)
  history = rng.uniform(0.02, 0.3, (batch, dates, size, size, 3)).astype(np.float32)
  cloudy = (0.8 * history[:, -1] + 0.3 * history[:, 0] + 0.05
            + rng.normal(0, 0.01, (batch, size, size, 3))).astype(np.float32)
  mask = (rng.uniform(size=(batch, size, size, 1)) < 0.4).astype(np.float32)
  cloudy = np.where(mask > 0, 0.9, cloudy).astype(np.float32)  # Opaque clouds.
  return {"history": history, "cloudy": cloudy, "cloud_mask": mask}


def numpy_band_fit(source: np.ndarray, target: np.ndarray, clear: np.ndarray) -> np.ndarray:
  """Per-band y = a x + b by np.linalg.lstsq on the clear pixels, applied everywhere."""
  out = np.empty_like(source)
  for band in range(source.shape[-1]):
    x, y = source[..., band][clear], target[..., band][clear]
    (a, b), *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)
    out[..., band] = a * source[..., band] + b
  return np.clip(out, 0, 1)


@pytest.mark.parametrize("method, source", [
    ("matched_persistence", lambda h: h[-1]),
    ("matched_mean", lambda h: h.mean(axis=0)),
])
def test_matched_baselines_equal_numpy_least_squares(method, source):
  data = series()
  out = np.asarray(gapfill.METHODS[method](data["history"], data["cloudy"], data["cloud_mask"],
                                           robust=False))
  for i in range(2):
    clear = data["cloud_mask"][i, ..., 0] == 0
    expected = numpy_band_fit(source(data["history"][i]), data["cloudy"][i], clear)
    np.testing.assert_allclose(out[i], expected, atol=2e-5)


def test_matched_regression_equals_numpy_least_squares():
  data = series(1)
  out = np.asarray(gapfill.matched_regression(data["history"], data["cloudy"],
                                              data["cloud_mask"], robust=False))
  for i in range(2):
    clear = data["cloud_mask"][i, ..., 0] == 0
    features = np.moveaxis(data["history"][i], 0, 2).reshape(SIZE * SIZE, -1)
    design = np.concatenate([features, np.ones((SIZE * SIZE, 1))], 1)
    coefficients, *_ = np.linalg.lstsq(design[clear.ravel()],
                                       data["cloudy"][i].reshape(-1, 3)[clear.ravel()],
                                       rcond=None)
    expected = np.clip(design @ coefficients, 0, 1).reshape(SIZE, SIZE, 3)
    np.testing.assert_allclose(out[i], expected, atol=5e-5)
  # Clear pixels of a cloudy date that is exactly linear in the history are reproduced.
  assert np.abs(out - data["cloudy"])[np.broadcast_to(data["cloud_mask"] == 0, out.shape)].max() < 0.05


def numpy_box_mean(image: np.ndarray, radius: int) -> np.ndarray:
  """(H, W, C) mean over each pixel's window, cut at the image border, by loops."""
  h, w = image.shape[:2]
  out = np.empty_like(image, dtype=np.float64)
  for i in range(h):
    for j in range(w):
      out[i, j] = image[max(i - radius, 0):i + radius + 1, max(j - radius, 0):j + radius + 1].mean(
          axis=(0, 1))
  return out


def test_box_mean_and_frequency_bands_against_numpy():
  rng = np.random.default_rng(7)
  images = rng.uniform(size=(2, 9, 11, 3)).astype(np.float32)
  for radius in (1, 4, 16):
    np.testing.assert_allclose(gapfill.box_mean(images, radius)[1],
                               numpy_box_mean(images[1], radius), atol=1e-6)
  bands = np.asarray(gapfill.frequency_bands(images, (1, 4)))
  assert bands.shape == (2, 9, 11, 9)
  # The bands add up to the image; the coarsest is the widest box mean.
  np.testing.assert_allclose(bands.reshape(2, 9, 11, 3, 3).sum(axis=3), images, atol=1e-6)
  np.testing.assert_allclose(bands[0, ..., 6:], numpy_box_mean(images[0], 4), atol=1e-6)


def test_matched_multiscale_equals_numpy_least_squares():
  data = series(8, size=32)
  # Without its guards, which may put the single-scale regression in its place.
  out = np.asarray(gapfill.matched_multiscale(data["history"], data["cloudy"],
                                              data["cloud_mask"], robust=False, guards=()))
  for i in range(2):
    clear = (data["cloud_mask"][i, ..., 0] == 0).ravel()
    dates = np.concatenate(list(data["history"][i]), axis=-1).astype(np.float64)
    levels, finer = [], dates
    for radius in gapfill.MULTISCALE_RADII:
      coarser = numpy_box_mean(dates, radius)
      levels.append(finer - coarser)
      finer = coarser
    design = np.concatenate([*levels, finer, np.ones((32, 32, 1))], -1).reshape(32 * 32, -1)
    assert design.shape[1] == 3 * 3 * (len(gapfill.MULTISCALE_RADII) + 1) + 1
    coefficients, *_ = np.linalg.lstsq(design[clear], data["cloudy"][i].reshape(-1, 3)[clear],
                                       rcond=None)
    expected = np.clip(design @ coefficients, 0, 1).reshape(32, 32, 3)
    np.testing.assert_allclose(out[i], expected, atol=1e-4)
  # Enough clear pixels for every coefficient: the fit is not the fallback.
  fallback = gapfill.matched_regression(data["history"], data["cloudy"], data["cloud_mask"],
                                        robust=False)
  assert np.abs(out - fallback).max() > 1e-3


def test_matched_multiscale_restores_a_date_whose_scales_changed_apart():
  # Fine detail from the latest date, broad brightness from the oldest: one gain per band and
  # date (matched_regression) cannot reproduce that under the clouds; a gain per scale can.
  data = series(9, size=32)
  history = data["history"]
  fine = history[:, -1] - gapfill.box_mean(history[:, -1], gapfill.MULTISCALE_RADII[0])
  coarse = gapfill.box_mean(history[:, 0], gapfill.MULTISCALE_RADII[0])
  truth = np.asarray(0.1 + 0.6 * fine + 0.5 * coarse, np.float32)  # In (0, 1): no clipping.
  mask = data["cloud_mask"]
  cloudy = np.where(mask > 0, 0.9, truth).astype(np.float32)
  under = np.broadcast_to(mask > 0, truth.shape)
  error = lambda method: np.abs(np.asarray(method(history, cloudy, mask)) - truth)[under].max()
  assert error(gapfill.matched_multiscale) < 1e-3
  assert error(gapfill.matched_regression) > 1e-2


def test_fits_ignore_cloud_pixels():
  data = series(2, size=32)
  brighter = {**data, "cloudy": np.where(data["cloud_mask"] > 0, 0.1, data["cloudy"])}
  for method in ("matched_persistence", "matched_mean", "matched_regression",
                 "matched_multiscale"):
    fn = gapfill.METHODS[method]
    np.testing.assert_allclose(fn(data["history"], data["cloudy"], data["cloud_mask"]),
                               fn(brighter["history"], brighter["cloudy"],
                                  brighter["cloud_mask"]), atol=1e-6, err_msg=method)


def test_too_few_clear_pixels_fall_back_to_fewer_coefficients_down_to_none():
  data = series(3)
  cloudy_all = np.ones_like(data["cloud_mask"])
  history = data["history"]
  # A fully clouded date: the latest earlier date as it is, finite, whatever the method.
  np.testing.assert_array_equal(
      gapfill.matched_persistence(history, data["cloudy"], cloudy_all), history[:, -1])
  np.testing.assert_array_equal(
      gapfill.matched_regression(history, data["cloudy"], cloudy_all), history[:, -1])
  np.testing.assert_array_equal(
      gapfill.matched_multiscale(history, data["cloudy"], cloudy_all), history[:, -1])

  # 144 pixels, 40% under clouds: enough for matched_regression's 10 coefficients per band, too
  # few for matched_multiscale's 46.
  np.testing.assert_array_equal(
      gapfill.matched_multiscale(history, data["cloudy"], data["cloud_mask"]),
      gapfill.matched_regression(history, data["cloudy"], data["cloud_mask"]))
  # One clear pixel is too few for a gain and an offset.
  one_clear = cloudy_all.copy()
  one_clear[:, 0, 0] = 0
  np.testing.assert_allclose(
      gapfill.matched_mean(history, data["cloudy"], one_clear), history.mean(axis=1), atol=1e-7)


def test_constant_source_band_gives_the_clear_mean():
  data = series(4)
  history = data["history"].copy()
  history[..., 0] = 0.2
  out = np.asarray(gapfill.matched_persistence(history, data["cloudy"], data["cloud_mask"],
                                               robust=False))
  clear = data["cloud_mask"][0, ..., 0] == 0
  np.testing.assert_allclose(out[0, ..., 0], data["cloudy"][0, ..., 0][clear].mean(), atol=1e-5)


def test_simple_methods_and_outputs_in_range():
  data = series(5)
  history = data["history"]
  np.testing.assert_array_equal(gapfill.persistence(history, None, None), history[:, -1])
  np.testing.assert_allclose(gapfill.temporal_mean(history, None, None), history.mean(1),
                             rtol=1e-6)
  np.testing.assert_array_equal(gapfill.temporal_median(history, None, None),
                                np.median(history, 1))
  for name, fn in gapfill.METHODS.items():
    out = np.asarray(fn(history, data["cloudy"], data["cloud_mask"]))
    assert out.shape == (2, SIZE, SIZE, 3) and out.dtype == np.float32, name
    assert out.min() >= 0 and out.max() <= 1, name


def test_match_history_matches_every_date_and_jits_with_gradients():
  data = series(6)
  matched = jax.jit(gapfill.match_history)(data["history"], data["cloudy"], data["cloud_mask"])
  for t in range(3):
    np.testing.assert_allclose(
        matched[:, t], gapfill.match_bands(data["history"][:, t], data["cloudy"],
                                           data["cloud_mask"]), atol=1e-6)
  # Least squares: the robust weights are data (no gradient flows through them), and the prior
  # never needs one in training (it does not depend on parameters).
  for method in (gapfill.matched_regression, gapfill.matched_multiscale):
    grad = jax.grad(lambda h: jnp.sum(method(h, data["cloudy"], data["cloud_mask"],
                                             robust=False)))(jnp.asarray(data["history"]))
    assert np.all(np.isfinite(grad)) and np.any(grad != 0), method.__name__


def numpy_robust_fit(x: np.ndarray, y: np.ndarray, clear: np.ndarray) -> np.ndarray:
  """Coefficients (F + 1, C) of y ~ [x, 1] by IRLS, written out in NumPy from the textbook: least
  squares, then Huber and Tukey biweight steps on the largest scaled residual of each pixel."""
  design = np.concatenate([x, np.ones((len(x), 1))], 1).astype(np.float64)
  weights = clear.astype(np.float64)
  solve = lambda w: np.linalg.lstsq(design * np.sqrt(w)[:, None], y * np.sqrt(w)[:, None],
                                    rcond=None)[0]
  coefficients = solve(weights)
  final = weights
  for step in range(gapfill.HUBER_STEPS + gapfill.TUKEY_STEPS):
    residual = y - design @ coefficients
    std = np.maximum(1.4826 * np.median(np.abs(residual[final > 0]), axis=0), 1e-4)
    u = np.max(np.abs(residual) / std, axis=1)
    if step < gapfill.HUBER_STEPS:
      robust = np.minimum(1.0, 1.345 / np.maximum(u, 1e-12))
    else:
      robust = np.clip(1 - (u / 4.685) ** 2, 0, None) ** 2
    final = weights * robust
    coefficients = solve(final)
  return coefficients


def test_robust_fit_equals_a_numpy_reference_and_ignores_outliers():
  rng = np.random.default_rng(11)
  n, features = 900, 4
  x = rng.uniform(0.02, 0.3, (n, features))
  true = np.array([[0.5, 0.1, 0.0], [0.2, 0.6, 0.1], [0.0, 0.1, 0.7], [0.1, 0.0, 0.1]])
  y = x @ true + 0.03 + rng.normal(0, 0.004, (n, 3))
  # A quarter of the pixels the mask calls clear are under haze it missed: brighter, bluer.
  haze = rng.uniform(size=n) < 0.25
  y[haze] += rng.uniform(0.03, 0.2, (haze.sum(), 1)) * np.array([0.9, 1.0, 1.1])
  clear = rng.uniform(size=n) > 0.2
  gain, offset, final = gapfill.robust_linear_fit(
      jnp.asarray(x[None], jnp.float32), jnp.asarray(y[None], jnp.float32),
      jnp.asarray(clear[None], jnp.float32))
  expected = numpy_robust_fit(x, y, clear)
  np.testing.assert_allclose(gain[0], expected[:-1], atol=2e-3)
  np.testing.assert_allclose(offset[0], expected[-1], atol=5e-4)
  # The robust fit finds the coefficients of the haze-free pixels; least squares does not.
  np.testing.assert_allclose(gain[0], true, atol=0.03)
  np.testing.assert_allclose(offset[0], 0.03, atol=0.005)
  ls_gain, ls_offset = gapfill.linear_fit(jnp.asarray(x[None], jnp.float32),
                                          jnp.asarray(y[None], jnp.float32),
                                          jnp.asarray(clear[None], jnp.float32))
  assert abs(float(ls_offset[0].mean()) - 0.03) > 0.01
  # The hazy pixels end with (almost) no weight, the others with most of theirs.
  final = np.asarray(final[0])
  assert final[haze & clear & (y.mean(1) > (x @ true).mean(1) + 0.06)].max() < 0.05
  assert np.median(final[~haze & clear]) > 0.8
  assert np.all(final[~clear] == 0)


def test_robust_priors_resist_haze_the_mask_missed():
  # Dates that are one scene under different gains: every method's linear model holds.
  rng = np.random.default_rng(12)
  base = rng.uniform(0.02, 0.3, (2, 1, 32, 32, 3))
  history = (base * np.array([0.9, 1.0, 1.1])[None, :, None, None, None]
             + rng.normal(0, 0.002, (2, 3, 32, 32, 3))).astype(np.float32)
  truth = (0.8 * base[:, 0] + 0.04 + rng.normal(0, 0.002, (2, 32, 32, 3))).astype(np.float32)
  mask = (rng.uniform(size=(2, 32, 32, 1)) < 0.3).astype(np.float32)
  missed = (mask == 0) & (rng.uniform(size=mask.shape) < 0.2)
  hazy = np.where(missed, truth + 0.1, truth).astype(np.float32)
  for name in ("matched_persistence", "matched_mean", "matched_regression",
               "matched_multiscale"):
    method = gapfill.METHODS[name]
    error = lambda robust: np.abs(np.asarray(
        method(history, hazy, mask, robust=robust)) - truth).mean()
    assert error(True) < 0.25 * error(False), (name, error(True), error(False))


def test_fill_history_replaces_only_the_masked_pixels_from_the_other_dates():
  rng = np.random.default_rng(13)
  base = rng.uniform(0.02, 0.3, (1, 1, 24, 24, 3)).astype(np.float32)
  # Three dates of one scene, each with a gain and offset of its own.
  gains, offsets = np.array([1.0, 0.8, 1.2]), np.array([0.0, 0.05, -0.01])
  clean = (base * gains[None, :, None, None, None]
           + offsets[None, :, None, None, None]).astype(np.float32)
  mask = np.zeros((1, 3, 24, 24, 1), np.float32)
  mask[0, 2, 4:14, 6:18] = 1      # The latest date clouded ...
  mask[0, 1, 10:20, 10:20] = 1    # ... and the middle one too, overlapping it.
  cloudy = np.where(mask > 0, 0.9, clean).astype(np.float32)
  filled = np.asarray(gapfill.fill_history(cloudy, mask))
  np.testing.assert_array_equal(filled[mask[..., 0] == 0], cloudy[mask[..., 0] == 0])
  # Every masked pixel comes from a clear date matched to the clouded one: no cloud leaks.
  np.testing.assert_allclose(filled, clean, atol=2e-3)
  assert np.array_equal(gapfill.fill_history(cloudy[:, :1], mask[:, :1]), cloudy[:, :1])


def test_fill_history_follows_a_change_that_mixes_the_bands():
  """A later date whose bands are mixtures of an earlier date's (a change of season moves the
  bands of a place together) is filled to within float error, which no gain and offset per
  band reaches."""
  rng = np.random.default_rng(14)
  first = rng.uniform(0.02, 0.3, (1, 24, 24, 3)).astype(np.float32)
  second = (first * 0.9 + 0.01).astype(np.float32)
  mixing = np.array([[0.6, 0.3, 0.0], [0.2, 0.7, 0.1], [0.0, 0.4, 0.5]], np.float32)
  latest = (first @ mixing + 0.02).astype(np.float32)
  clean = np.stack([first, second, latest], axis=1)
  mask = np.zeros((1, 3, 24, 24, 1), np.float32)
  mask[0, 2, 4:14, 6:18] = 1
  cloudy = np.where(mask > 0, 0.9, clean).astype(np.float32)
  filled = np.asarray(gapfill.fill_history(cloudy, mask))
  clouded = mask[0, 2, ..., 0] > 0
  np.testing.assert_allclose(filled[0, 2][clouded], latest[0][clouded], atol=1e-4)
  per_band = np.asarray(gapfill.match_bands(first, latest, mask[:, 2]))
  assert np.abs(per_band[0][clouded] - latest[0][clouded]).max() > 1e-2


def test_a_fit_with_a_gain_beyond_the_bound_falls_back(monkeypatch):
  """A near-singular regression (gains of 1e25 made a mostly clouded window white) is not used:
  the simpler method stands in. Here the bound is lowered below a true gain to see it act."""
  rng = np.random.default_rng(0)
  history = rng.uniform(0.05, 0.3, (1, 2, 32, 32, 3)).astype(np.float32)
  cloudy = 0.5 * history[:, 0] + 0.3 * history[:, 1] + 0.02
  mask = np.zeros((1, 32, 32, 1), np.float32)
  mask[:, 8:16, 8:16] = 1
  cloud = mask[..., 0] > 0
  fitted = np.asarray(gapfill.matched_regression(history, cloudy, mask))
  np.testing.assert_allclose(fitted[cloud], cloudy[cloud], atol=1e-4)
  monkeypatch.setattr(gapfill, "_MAX_GAIN", 0.4)
  np.testing.assert_array_equal(np.asarray(gapfill.matched_regression(history, cloudy, mask)),
                                np.asarray(gapfill.matched_persistence(history, cloudy, mask)))


def _smooth_scene(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
  """(history (1, 3, size, size, 3), truth (1, size, size, 3)): dates of texture and broad
  structure, and a date that is a single-scale linear function of them plus noise."""
  rng = np.random.default_rng(seed)
  broad = np.stack([np.asarray(gapfill.box_mean(rng.normal(size=(1, size, size, 3)), 8))
                    for _ in range(3)], axis=1)
  history = (0.12 + 0.03 * rng.normal(size=broad.shape) + 0.5 * broad).astype(np.float32)
  truth = (0.02 + 0.7 * history[:, -1] + 0.3 * history[:, 0]
           + 0.005 * rng.normal(size=(1, size, size, 3))).astype(np.float32)
  return history, truth


def test_the_haze_guard_takes_weight_from_one_signed_excess_only():
  """Clear pixels brighter than the single-scale fit in every band (haze no mask caught) lose
  their weight in the multi-scale fit; a change of colour (one band up, another down) and plain
  noise keep theirs."""
  history, truth = _smooth_scene(5, 64)
  mask = np.zeros((1, 64, 64, 1), np.float32)
  mask[:, :8, :8] = 1
  cloudy = truth.copy()
  cloudy[:, 20:36, 20:36] += 0.05                       # haze
  cloudy[:, 40:56, 40:56] += np.array([0.05, -0.05, 0.0], np.float32)  # a change of colour
  cloudy = np.where(mask > 0, 0.8, cloudy).astype(np.float32)
  simple = gapfill.matched_regression(history, cloudy, mask)
  scale = gapfill.robust_std((cloudy - simple).reshape(1, -1, 3), gapfill._clear_weights(mask))
  weights = np.asarray(gapfill._haze_weights(cloudy, simple, mask, scale))[0, ..., 0]
  assert weights[:8, :8].max() == 0                     # masked
  assert weights[23:33, 23:33].max() < 0.05             # haze
  assert weights[43:53, 43:53].min() > 0.5              # colour change
  assert np.median(weights[8:, 56:]) > 0.9              # the rest


def test_the_extrapolation_guard_hands_unseen_ground_to_the_single_scale_fit():
  """Under the cloud lies ground whose earlier dates are unlike any clear pixel's: there the
  multi-scale regression, with its many gains, gives way to the single-scale one; elsewhere
  it stays."""
  history, truth = _smooth_scene(6, 64)
  mask = np.zeros((1, 64, 64, 1), np.float32)
  mask[:, 16:48, 16:48] = 1
  history[:, :, 24:40, 24:40] += np.array([0.4, 0.1, -0.1], np.float32)  # unseen ground
  cloudy = np.where(mask > 0, 0.8, truth).astype(np.float32)
  guarded = np.asarray(gapfill.matched_multiscale(history, cloudy, mask,
                                                  guards=("extrapolation",)))
  plain = np.asarray(gapfill.matched_multiscale(history, cloudy, mask, guards=()))
  simple = np.asarray(gapfill.matched_regression(history, cloudy, mask))
  np.testing.assert_allclose(guarded[:, 28:36, 28:36], simple[:, 28:36, 28:36], atol=1e-6)
  assert np.abs(plain - simple)[:, 28:36, 28:36].max() > 1e-3
  np.testing.assert_allclose(guarded[:, :8], plain[:, :8], atol=1e-6)


def test_the_choice_guard_keeps_the_single_scale_fit_where_more_gains_only_fit_noise():
  """A date that is a single-scale function of its earlier dates plus noise: the multi-scale
  regression predicts held-out blocks no better, so the single-scale one is used (where the
  scales do differ, the multi-scale one stays: test_matched_multiscale_restores_...)."""
  history, truth = _smooth_scene(7, 64)
  mask = np.zeros((1, 64, 64, 1), np.float32)
  mask[:, 20:40, 20:40] = 1
  cloudy = np.where(mask > 0, 0.8, truth).astype(np.float32)
  chosen = np.asarray(gapfill.matched_multiscale(history, cloudy, mask, guards=("choice",)))
  plain = np.asarray(gapfill.matched_multiscale(history, cloudy, mask, guards=()))
  simple = np.asarray(gapfill.matched_regression(history, cloudy, mask))
  np.testing.assert_array_equal(chosen, simple)
  assert np.abs(plain - simple).max() > 1e-4


def test_unknown_guards_are_refused():
  data = series()
  with pytest.raises(ValueError, match="unknown guards"):
    gapfill.matched_multiscale(data["history"], data["cloudy"], data["cloud_mask"],
                               guards=("hazes",))
