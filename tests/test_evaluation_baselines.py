"""The baselines of the evaluation, on hand-made batches."""

from __future__ import annotations

import numpy as np

from plfm_jax.evaluation import baselines
from plfm_jax.models import gapfill
from plfm_jax.models.plfm import COMPONENT_OUTPUTS


def hand_made_batch() -> dict[str, np.ndarray]:
  """Two samples of 2 x 2 px; pixel (0, 0) of sample 0 has the dates 0.1, 0.9, 0.2, oldest first."""
  history = np.zeros((2, 3, 2, 2, 3), np.float32)
  history[0, :, 0, 0, :] = np.array([0.1, 0.9, 0.2])[:, None]
  history[1] = np.arange(3, dtype=np.float32)[:, None, None, None] / 4  # 0, 0.25, 0.5
  return {"history": history, "cloudy": np.full((2, 2, 2, 3), 0.7, np.float32),
          "target": np.zeros((2, 2, 2, 3), np.float32),
          "cloud_mask": np.ones((2, 2, 2, 1), np.float32),
          "sar": np.zeros((2, 2, 2, 1), np.float32)}


def test_persistence_is_the_latest_earlier_date():
  batch = hand_made_batch()
  out = np.asarray(baselines.BATCH_BASELINES["persistence"](batch))
  assert out.shape == (2, 2, 2, 3)
  np.testing.assert_array_equal(out, batch["history"][:, -1])
  np.testing.assert_allclose(out[0, 0, 0], 0.2)
  np.testing.assert_allclose(out[1], 0.5)


def test_temporal_mean_and_median():
  batch = hand_made_batch()
  mean = np.asarray(baselines.BATCH_BASELINES["temporal_mean"](batch))
  median = np.asarray(baselines.BATCH_BASELINES["temporal_median"](batch))
  np.testing.assert_allclose(mean[0, 0, 0], 0.4, rtol=1e-6)
  np.testing.assert_allclose(median[0, 0, 0], 0.2)
  np.testing.assert_allclose(mean[0, 1, 1], 0.0)
  np.testing.assert_allclose(mean[1], 0.25, rtol=1e-6)
  np.testing.assert_allclose(median[1], 0.25)


def test_method_images_in_report_order():
  batch = hand_made_batch()
  predictions = {k: np.full((2, 2, 2, 3), v, np.float32)
                 for k, v in (("temporal", 0.1), ("sar_branch", 0.2), ("fused", 0.3),
                              ("composite", 0.4))}
  images = baselines.method_images(batch, predictions)
  assert tuple(images) == baselines.METHODS
  assert set(baselines.LABELS) == set(baselines.METHODS)
  # The matched baselines are the gap-filling methods of the model's priors.
  for name in ("matched_persistence", "matched_mean", "matched_regression", "matched_multiscale"):
    np.testing.assert_array_equal(images[name], gapfill.METHODS[name](
        batch["history"], batch["cloudy"], batch["cloud_mask"]))
  np.testing.assert_array_equal(images["cloudy_input"], batch["cloudy"])
  for method, value in (("temporal_branch", 0.1), ("sar_branch", 0.2), ("plfm_fused", 0.3),
                        ("plfm_composite", 0.4)):
    np.testing.assert_allclose(images[method], value)


def test_every_image_the_model_predicts_is_scored():
  outputs = {output for output in COMPONENT_OUTPUTS.values() if output}
  assert set(baselines.MODEL_OUTPUTS.values()) == outputs | {"composite"}


def test_every_filling_method_keeps_the_cloudy_input_outside_the_mask():
  batch = hand_made_batch()
  batch["cloud_mask"][:, 0] = 0  # The first row is called clear.
  predictions = {k: np.full((2, 2, 2, 3), 0.1, np.float32)
                 for k in ("temporal", "sar_branch", "fused", "composite")}
  images = baselines.method_images(batch, predictions)
  for name, image in images.items():
    image = np.asarray(image)
    if name == "plfm_fused":
      np.testing.assert_allclose(image, 0.1)  # The model's own output, drawn everywhere.
      continue
    np.testing.assert_array_equal(image[:, 0], batch["cloudy"][:, 0], err_msg=name)
    if name != "cloudy_input":
      assert not np.array_equal(image[:, 1], batch["cloudy"][:, 1]), name
