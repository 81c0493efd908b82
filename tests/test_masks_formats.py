"""plfm_jax.masks.formats: every mask format read right, and told apart by its values."""

from __future__ import annotations

import numpy as np
import pytest

from plfm_jax.masks import formats


def test_qa60_bits():
  qa60 = np.array([0, 1 << 10, 1 << 11, 3 << 10], np.uint16)
  np.testing.assert_array_equal(formats.to_mask(qa60, "qa60"), [False, True, True, True])
  assert formats.guess_format(qa60) == "qa60"


def test_scl_clouds_cirrus_and_shadows_not_ground():
  scl = np.arange(12, dtype=np.uint8)
  flagged = formats.to_mask(scl, "scl")
  np.testing.assert_array_equal(np.flatnonzero(flagged), [3, 8, 9, 10])
  assert formats.guess_format(scl) == "scl"
  assert formats.guess_format(np.array([4, 5, 8, 9], np.uint8)) == "scl"


def test_omnicloudmask_classes():
  classes = np.array([0, 1, 2, 3], np.uint8)
  np.testing.assert_array_equal(formats.to_mask(classes, "omnicloudmask"),
                                [False, True, True, True])
  assert formats.guess_format(classes) == "omnicloudmask"


@pytest.mark.parametrize("values, scale", [
    (np.array([0.0, 0.39, 0.41, 1.0], np.float32), 1.0),
    (np.array([0, 39, 41, 100], np.uint8), 100.0),
    (np.array([0, 99, 105, 255], np.uint8), 255.0),
])
def test_probabilities_in_any_scale(values, scale):
  assert formats.guess_format(values) == "probability"
  assert formats.probability_scale(values) == scale
  np.testing.assert_array_equal(formats.to_mask(values, "probability"),
                                [False, False, True, True])
  np.testing.assert_array_equal(formats.to_mask(values, "probability", threshold=0.9),
                                [False, False, False, True])


def test_probability_scale_of_the_whole_file_applies_to_every_block():
  # A block of a percent raster that happens to hold only small values stays in percent.
  block = np.array([0, 30, 50], np.uint8)
  np.testing.assert_array_equal(formats.to_mask(block, "probability", scale=100.0),
                                [False, False, True])


@pytest.mark.parametrize("values", [np.array([0, 1], np.uint8), np.array([0, 255], np.uint8),
                                    np.array([0, 0], np.int32)])
def test_binary(values):
  assert formats.guess_format(values) == "binary"
  np.testing.assert_array_equal(formats.to_mask(values, "binary"), values != 0)


@pytest.mark.parametrize("values, problem", [
    (np.array([0.0, 1.5], np.float32), "must lie in"),
    (np.array([-1, 0, 5], np.int16), "negative"),
    (np.array([0, 300, 4000], np.uint16), "pass the format"),
])
def test_values_no_format_explains_are_refused(values, problem):
  with pytest.raises(formats.FormatError, match=problem):
    formats.guess_format(values)


def test_wrong_format_or_threshold_is_refused():
  with pytest.raises(formats.FormatError, match="bitmask"):
    formats.to_mask(np.array([0.5], np.float32), "qa60")
  with pytest.raises(formats.FormatError, match="threshold"):
    formats.to_mask(np.array([0.5], np.float32), "probability", threshold=1.5)
