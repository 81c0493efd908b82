"""Normalisation of S2 and S1 values and the QA60 cloud bits."""

from __future__ import annotations

import warnings

import hypothesis
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest

from plfm_jax.data.normalize import (REFLECTANCE_SCALE, S1_DB_RANGE, normalize_s2, qa60_cloud_mask,
                                     s1_db_to_unit, s2_minmax, s2_reflectance)


def test_minmax_hand_checked():
  image = np.array([[[0, 10, 20]], [[30, 40, 50]]], np.uint16)  # (H=2, W=1, C=3)
  out = s2_minmax(image)
  assert out.dtype == np.float32 and out.shape == image.shape
  np.testing.assert_allclose(out.ravel(), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], rtol=1e-6)


def test_minmax_spans_all_bands_jointly():
  # A per-band min-max would stretch each band to [0, 1] and lose the colour.
  image = np.stack([np.full((4, 4), 100), np.full((4, 4), 200), np.full((4, 4), 300)], -1)
  image[0, 0, 0] = 0
  out = s2_minmax(image.astype(np.uint16))
  np.testing.assert_allclose(out[1, 1], [1 / 3, 2 / 3, 1.0], rtol=1e-6)


def test_minmax_is_per_image_in_a_batch():
  rng = np.random.default_rng(0)
  batch = rng.integers(0, 10000, (2, 3, 5, 5, 3)).astype(np.uint16)
  batch[1, 2] //= 7
  out = s2_minmax(batch)
  for index in np.ndindex(2, 3):
    np.testing.assert_array_equal(out[index], s2_minmax(batch[index]))
    assert out[index].min() == 0.0 and out[index].max() == 1.0


def test_minmax_constant_image_gives_zeros_without_warnings():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    out = s2_minmax(np.full((2, 4, 4, 3), 1234, np.uint16))
  np.testing.assert_array_equal(out, 0.0)


def test_minmax_rejects_non_images():
  with pytest.raises(ValueError, match="H, W, C"):
    s2_minmax(np.zeros((4, 4)))


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(hnp.arrays(np.uint16, hnp.array_shapes(min_dims=3, max_dims=4, max_side=5)))
def test_minmax_range_property(images):
  out = s2_minmax(images)
  assert out.dtype == np.float32 and out.shape == images.shape
  per_image = images.reshape(-1, *images.shape[-3:])
  for image, scaled in zip(per_image, out.reshape(per_image.shape)):
    if image.min() < image.max():
      assert scaled.min() == 0.0 and scaled.max() == 1.0
    else:
      assert (scaled == 0.0).all()
    # Order is kept: larger values never map below smaller ones.
    order = np.argsort(image, axis=None, kind="stable")
    assert (np.diff(scaled.ravel()[order]) >= 0).all()


def test_reflectance_hand_checked():
  dn = np.array([0, 1, 5000, 10000, 20000, 65535], np.uint16)
  out = s2_reflectance(dn)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [0.0, 1e-4, 0.5, 1.0, 1.0, 1.0], rtol=1e-6)
  assert REFLECTANCE_SCALE == 10000.0


def test_normalize_s2_dispatches_and_rejects_unknown():
  image = np.arange(48, dtype=np.uint16).reshape(4, 4, 3) * 500
  np.testing.assert_array_equal(normalize_s2(image, "minmax"), s2_minmax(image))
  np.testing.assert_array_equal(normalize_s2(image, "reflectance"), s2_reflectance(image))
  with pytest.raises(ValueError, match="'zscore'.*minmax, reflectance"):
    normalize_s2(image, "zscore")


def test_s1_db_to_unit_hand_checked():
  assert S1_DB_RANGE == (-25.0, 10.0)
  db = np.array([-60.0, -25.0, -7.5, 0.0, 10.0, 25.0])
  out = s1_db_to_unit(db)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 25 / 35, 1.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize("value, cloudy", [
    (0, False), (1 << 10, True), (1 << 11, True), ((1 << 10) | (1 << 11), True),
    (1 << 9, False), (1 << 12, False), (0xFFFF & ~(3 << 10), False), (0xFFFF, True)])
def test_qa60_bits(value, cloudy):
  mask = qa60_cloud_mask(np.full((2, 2), value, np.uint16))
  assert mask.dtype == bool
  assert (mask == cloudy).all()
