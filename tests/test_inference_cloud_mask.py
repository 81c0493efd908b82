"""plfm_jax.inference.cloud_mask: QA60 bits or the brightness/whiteness heuristic."""

from __future__ import annotations

import numpy as np

from plfm_jax.data.clouds import simulate_clouds
from plfm_jax.data.normalize import s2_reflectance
from plfm_jax.data.synthetic import synthesize_zone
from plfm_jax.inference import cloud_mask


def test_heuristic_finds_opaque_clouds_and_spares_land():
  rng = np.random.default_rng(0)
  scores = []
  for s2, _ in synthesize_zone(rng, 4, image_size=96, months=("Jan", "Feb", "Mar", "Apr")):
    clear = s2[-1]
    cloudy, affected = simulate_clouds(s2_reflectance(clear), rng, coverage=0.4,
                                       thin_fraction=0.0, shadows=False)
    cloudy = np.rint(cloudy * 10000).astype(np.uint16)
    flagged = cloud_mask.heuristic_mask(cloudy)
    assert not cloud_mask.heuristic_mask(clear).any()
    scores.append((flagged[affected].mean(), flagged[~affected].mean()))
  recall, false_alarms = np.mean(scores, axis=0)
  assert recall > 0.95 and false_alarms == 0


def test_heuristic_threshold_and_whiteness():
  grey = np.full((1, 1, 3), 3000, np.uint16)
  assert cloud_mask.heuristic_mask(grey, brightness=0.25).all()
  assert not cloud_mask.heuristic_mask(grey, brightness=0.35).any()
  # As bright, but red: not white.
  red = np.array([[[7000, 1000, 1000]]], np.uint16)
  assert not cloud_mask.heuristic_mask(red, brightness=0.25).any()


def test_qa60_decides_and_nodata_is_never_cloud():
  rgb = np.array([[[9000, 9000, 9000], [500, 600, 700], [0, 0, 0]]], np.uint16)
  qa60 = np.array([[0, 1 << 10, 1 << 11]], np.uint16)
  np.testing.assert_array_equal(cloud_mask.cloud_mask(rgb, qa60), [[False, True, True]])
  np.testing.assert_array_equal(cloud_mask.cloud_mask(rgb, qa60, nodata=0),
                                [[False, True, False]])
  np.testing.assert_array_equal(cloud_mask.cloud_mask(rgb), [[True, False, False]])
