"""The cloud simulator: coverage, appearance of clouds and shadows, determinism, any shape."""

from __future__ import annotations

import numpy as np
import pytest

from plfm_jax.data.clouds import fractal_noise, simulate_clouds

GREY = 0.3


def _grey(shape=(96, 96, 3)) -> np.ndarray:
  return np.full(shape, GREY, np.float32)


@pytest.mark.parametrize("shape", [(64, 64), (37, 101), (1, 1)])
def test_fractal_noise_is_smooth_and_spans_unit_range(shape):
  noise = fractal_noise(shape, np.random.default_rng(0))
  assert noise.shape == shape and noise.dtype == np.float32
  assert noise.min() >= 0.0 and noise.max() <= 1.0
  if noise.size > 1:
    assert noise.min() == 0.0 and noise.max() == 1.0
  if min(shape) > 1:
    neighbours = np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1]
    assert neighbours > 0.9


def test_fractal_noise_is_seeded():
  a = fractal_noise((40, 50), np.random.default_rng(1))
  np.testing.assert_array_equal(a, fractal_noise((40, 50), np.random.default_rng(1)))
  assert not np.array_equal(a, fractal_noise((40, 50), np.random.default_rng(2)))


@pytest.mark.parametrize("shadows", [True, False])
@pytest.mark.parametrize("coverage", [0.05, 0.35, 0.8])
def test_mask_coverage_matches_the_request(coverage, shadows):
  image = np.random.default_rng(0).random((128, 128, 3), dtype=np.float32)
  for seed in range(5):
    _, mask, _ = simulate_clouds(image, np.random.default_rng(seed), coverage=coverage,
                              shadows=shadows)
    assert mask.dtype == bool and mask.shape == (128, 128)
    assert abs(mask.mean() - coverage) < 0.01


def test_coverage_range_is_drawn_per_call():
  coverages = [simulate_clouds(_grey(), np.random.default_rng(seed), coverage=(0.2, 0.6))[1].mean()
               for seed in range(8)]
  assert all(0.19 < c < 0.61 for c in coverages)
  assert max(coverages) - min(coverages) > 0.1


@pytest.mark.parametrize("coverage", [0.0, (0.0, 0.0)])
def test_zero_coverage_leaves_the_image_unchanged(coverage):
  image = np.random.default_rng(0).random((32, 48, 3))
  cloudy, mask, _ = simulate_clouds(image, np.random.default_rng(0), coverage=coverage)
  assert cloudy.dtype == np.float32 and not mask.any()
  np.testing.assert_array_equal(cloudy, image.astype(np.float32))


def test_only_masked_pixels_change_and_output_stays_in_unit_range():
  image = np.random.default_rng(0).random((96, 80, 3), dtype=np.float32)
  cloudy, mask, _ = simulate_clouds(image, np.random.default_rng(1), coverage=0.5)
  assert cloudy.dtype == np.float32 and cloudy.min() >= 0.0 and cloudy.max() <= 1.0
  np.testing.assert_array_equal(cloudy[~mask], image[~mask])
  assert (cloudy[mask] != image[mask]).any(axis=-1).all()


def test_opaque_clouds_are_bright_bluish_white_and_shadows_darken():
  cloudy, mask, _ = simulate_clouds(_grey(), np.random.default_rng(3), coverage=0.5, thin_fraction=0.0)
  brighter = mask & (cloudy.mean(-1) > GREY)
  darker = mask & (cloudy.mean(-1) < GREY)
  assert (brighter | darker)[mask].all()
  assert brighter.mean() > 0.2 and darker.mean() > 0.02
  clouds = cloudy[brighter]
  assert clouds.mean() > 0.75
  red, green, blue = clouds.mean(0)
  assert red < green < blue
  # Full shadow keeps 40-70 % of the light; the faintest cloud edges cast fainter shadows.
  transmission = cloudy[darker].mean(-1) / GREY
  assert transmission.min() >= 0.4 - 1e-6 and transmission.max() < 1.0
  assert 0.4 <= np.median(transmission) <= 0.7


def test_thin_clouds_let_the_ground_through():
  black = np.zeros((96, 96, 3), np.float32)

  def mean_cloud(thin_fraction: float) -> float:
    cloudy, mask, _ = simulate_clouds(black, np.random.default_rng(4), coverage=0.4,
                                   thin_fraction=thin_fraction, shadows=False)
    return float(cloudy[mask].mean())

  assert mean_cloud(1.0) < 0.6 < 0.75 < mean_cloud(0.0)


def test_without_shadows_nothing_gets_darker():
  cloudy, mask, _ = simulate_clouds(_grey(), np.random.default_rng(5), coverage=0.4, shadows=False)
  assert (cloudy[mask] > GREY).all()


def test_same_rng_state_same_clouds():
  image = np.random.default_rng(0).random((50, 70, 3), dtype=np.float32)
  a = simulate_clouds(image, np.random.default_rng(9))
  b = simulate_clouds(image, np.random.default_rng(9))
  c = simulate_clouds(image, np.random.default_rng(10))
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("shape", [(700, 913, 3), (64, 64, 1), (5, 37, 4), (1, 1, 2)])
def test_any_shape_and_channel_count(shape):
  image = np.random.default_rng(0).random(shape, dtype=np.float32)
  cloudy, mask, _ = simulate_clouds(image, np.random.default_rng(0), coverage=0.3)
  assert cloudy.shape == shape and mask.shape == shape[:2]
  if mask.size >= 64 * 64:
    assert abs(mask.mean() - 0.3) < 0.01


@pytest.mark.parametrize("kwargs",
                         [dict(coverage=1.5), dict(coverage=-0.1), dict(thin_fraction=2.0)])
def test_rejects_out_of_range_arguments(kwargs):
  with pytest.raises(ValueError):
    simulate_clouds(_grey(), np.random.default_rng(0), **kwargs)


def test_rejects_images_without_a_channel_axis():
  with pytest.raises(ValueError, match="H, W, C"):
    simulate_clouds(np.zeros((8, 8), np.float32), np.random.default_rng(0))


def test_haze_fades_out_beyond_what_a_detector_sees():
  image = np.full((128, 128, 3), 0.05, np.float32)
  cloudy, mask, opaque = simulate_clouds(image, np.random.default_rng(2), coverage=0.4,
                                         haze_margin=0.1, shadows=False)
  assert abs(mask.mean() - 0.4) < 0.01
  change = np.abs(cloudy - image).max(axis=-1)
  # Every masked pixel changed, and only those; a good share of them by less than 0.01.
  assert (change[mask] > 0).all() and (change[~mask] == 0).all()
  assert 0.05 < (change[mask] < 0.01).mean() < 0.5
  # The opaque cores lie inside, far brighter than the haze around them.
  assert opaque.any() and not (opaque & ~mask).any()
  assert cloudy[opaque].mean() > 0.75 > 0.2 > cloudy[mask & ~opaque & (change < 0.05)].mean()


def test_without_haze_margin_clouds_end_visibly_at_their_mask():
  image = np.full((96, 96, 3), 0.05, np.float32)
  cloudy, mask, _ = simulate_clouds(image, np.random.default_rng(3), coverage=0.4,
                                    haze_margin=0.0, shadows=False)
  # The faintest cloud pixel has alpha 0.1: a change of about 0.08 over this dark ground.
  assert np.abs(cloudy - image).max(axis=-1)[mask].min() > 0.05
