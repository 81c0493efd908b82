"""The one way a series of dates becomes the model's input: for training, evaluation and scenes.

    earlier dates (any number), the cloudy date, masks the user has (QA60, ...)
      --detect--> cloud, haze and shadow masks of every date (`plfm_jax.masks.detect`), or the
                  given masks alone
      --select--> the `length` earlier dates the model reads: per window the clearest, latest
      --fill--->  each selected date's clouds filled from the others (`gapfill.fill_history`)
      --> {"history", "history_mask", "cloudy", "cloud_mask"}

The input pipeline (`plfm_jax.data.pipeline`) calls `model_example` on every sample and scene
inference (`plfm_jax.inference.scene`) on every window, so a window of a scene and the same
pixels of a dataset sample reach the model identically. Images here are R, G, B reflectance in
[0, 1]; the model's own normalisation is applied afterwards by the caller.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from plfm_jax.masks import detect as detect_lib
from plfm_jax.models import gapfill

# A date one place older loses this much of its clear fraction when the dates to read are
# chosen: the clearest date wins, and of nearly as clear ones the latest.
AGE_PENALTY = 0.02


@dataclasses.dataclass(frozen=True)
class Masking:
  """How masks are made.

  Attributes:
    detect: find clouds, haze and shadows in every date from the series (added to the given
      masks); False: the given masks alone (exact masks of simulated clouds, or a user's).
    settings: the detector's thresholds.
  """
  detect: bool = True
  settings: detect_lib.DetectionSettings = detect_lib.DEFAULT


EXACT = Masking(detect=False)


_fill = jax.jit(gapfill.fill_history)


def masks(dates: np.ndarray, given: np.ndarray | None = None, valid: np.ndarray | None = None,
          masking: Masking = Masking()) -> detect_lib.Detection:
  """The masks of every date of `dates` (N, H, W, 3), (N, H, W) bool each: detected and given,
  or the given ones alone (then `cloud` and `shadow` are empty).

  `valid` (N, H, W) marks the pixels with data (nodata is never masked)."""
  shape = dates.shape[:3]
  given = np.zeros(shape, bool) if given is None else np.asarray(given, bool)
  valid = np.ones(shape, bool) if valid is None else np.asarray(valid, bool)
  if not masking.detect:
    nothing = np.zeros(shape, bool)
    return detect_lib.Detection(cloud=nothing, shadow=nothing, mask=given & valid)
  found = detect_lib.detect(np.asarray(dates, np.float32), valid, given, masking.settings)
  return detect_lib.Detection(*(np.asarray(x) for x in found))


def select_dates(history_masks: np.ndarray, length: int) -> np.ndarray:
  """Indices (oldest first) of the `length` earlier dates to read, from (N, H, W) masks: the
  largest clear fraction, less AGE_PENALTY per place from the latest date. All of them when
  there are exactly `length`; with fewer, the oldest is read again in the places left (the
  latest date stays last, where the temporal branch weighs it most)."""
  count = len(history_masks)
  if count <= length:
    return np.concatenate([np.zeros(length - count, np.int64), np.arange(count)])
  clear = 1.0 - history_masks.reshape(count, -1).mean(axis=1)
  age = np.arange(count)[::-1]
  score = clear - AGE_PENALTY * age
  # Stable: of equal scores, the later date.
  best = np.argsort(-score[::-1], kind="stable")[:length]
  return np.sort(count - 1 - best)


def model_example(history: np.ndarray, cloudy: np.ndarray, *, length: int,
                  cloud_mask: np.ndarray | None = None, history_masks: np.ndarray | None = None,
                  valid: np.ndarray | None = None, masking: Masking = Masking()
                  ) -> dict[str, Any]:
  """The model's input from one place's dates.

  Args:
    history: (N, H, W, 3) reflectance of the earlier dates, oldest first, N >= 1.
    cloudy: (H, W, 3) reflectance of the date to restore.
    length: earlier dates the model reads; N may be more (the clearest, latest are read) or
      fewer (`select_dates`).
    cloud_mask: (H, W) bool mask the user has for the cloudy date (QA60, SCL, ...), or None.
    history_masks: (N, H, W) bool masks the user has for the earlier dates, or None.
    valid: (N + 1, H, W) bool, False at nodata (the earlier dates, then the cloudy date).
    masking: detect, or trust the given masks.

  Returns:
    float32 arrays "history" (length, H, W, 3) with each date's masked and nodata pixels
    filled from the others, "history_mask" (length, H, W, 1) 1 where a date was filled,
    "cloudy" (H, W, 3) and "cloud_mask" (H, W, 1) 1 where the cloudy date is to be restored;
    "dates", the indices of the earlier dates read (`select_dates`); and (N + 1, H, W) bool of
    every date given: "masks" (what is masked), "cloud" and "shadow" (what the detection
    found), "given" (the masks given).
  """
  history = np.asarray(history, np.float32)
  cloudy = np.asarray(cloudy, np.float32)
  count, height, width = history.shape[:3]
  if count < 1:
    raise ValueError("at least one earlier date is needed")
  valid = (np.ones((count + 1, height, width), bool) if valid is None
           else np.asarray(valid, bool))
  given = np.zeros((count + 1, height, width), bool)
  if history_masks is not None:
    given[:-1] = history_masks
  if cloud_mask is not None:
    given[-1] = cloud_mask
  dates = np.concatenate([history, cloudy[None]])
  detection = masks(dates, given, valid, masking)
  found = detection.mask
  # An earlier date's nodata (outside its footprint) is a gap to fill like its clouds.
  gaps = found[:-1] | ~valid[:-1]
  chosen = select_dates(gaps, length)
  history_mask = gaps[chosen][..., None].astype(np.float32)
  filled = history[chosen]
  if history_mask.any():
    filled = np.asarray(_fill(filled[None], history_mask[None]))[0]
  return {"history": filled, "history_mask": history_mask, "cloudy": cloudy,
          "cloud_mask": found[-1][..., None].astype(np.float32), "dates": chosen,
          "masks": found, "cloud": detection.cloud, "shadow": detection.shadow,
          "given": given & valid}
