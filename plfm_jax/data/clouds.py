"""Seeded cloud simulator: thick and thin clouds, fading haze and cast shadows over a clear image.

The real PLFM patches are cloud-free (the dataset builder kept the clearest image per month), so
the cloudy input of the last date is simulated. It runs per sample inside the input pipeline, so
everything is vectorised NumPy: a few milliseconds for a 256 x 256 image.

Real clouds do not end where a mask does: their haze fades out over tens of pixels, down to
changes no detector can see, and their shadows have soft edges. So every cloud here is wrapped
in a margin of haze whose opacity falls to exactly zero, and the returned mask marks every pixel
the simulation changed at all: the truth a detector is scored against, wider than what it can
find. The opaque cores alone stand in for the masks that flag only thick cloud (QA60).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def _add_resampled(lattice: np.ndarray, size: int, phase: float, axis: int, out: np.ndarray,
                   scratch: np.ndarray) -> None:
  """Adds to `out` the knots of `lattice` along `axis` sampled at `size` pixel positions.

  The lattice has `cells + 2` knots along `axis`; the random `phase` shifts it so octaves do not
  share knot positions. Smoothstep-weighted linear interpolation is C1-continuous, so lattice
  lines do not show as creases, and it needs only two knots per pixel: gathers into preallocated
  buffers rather than a dense interpolation matrix product, which would cost `cells` times more,
  or fresh temporaries, whose page faults dominate at these sizes.
  """
  cells = lattice.shape[axis] - 2
  pos = (np.arange(size, dtype=np.float32) + 0.5) * np.float32(cells / size) + np.float32(phase)
  left = pos.astype(np.int64)
  t = pos - left
  t = t * t * (3.0 - 2.0 * t)
  np.take(lattice, left, axis=axis, out=scratch, mode="clip")
  out += scratch
  np.take(np.diff(lattice, axis=axis), left, axis=axis, out=scratch, mode="clip")
  scratch *= t.reshape((size, 1) if axis == 0 else (1, size))
  out += scratch


def fractal_noise(shape: tuple[int, int], rng: np.random.Generator, *, octaves: int = 5,
                  persistence: float = 0.5, base_cells: int = 4) -> np.ndarray:
  """Multi-octave value noise, float32 (H, W) min-max scaled to [0, 1].

  Octave `o` has `base_cells * 2**o` lattice cells across the longer side (the shorter side gets
  proportionally fewer, at least one) and amplitude `persistence**o`.
  """
  height, width = shape
  longest = max(height, width)
  total = np.zeros((height, width), np.float32)
  scratch = np.empty_like(total)
  amplitude = 1.0
  for octave in range(octaves):
    cells = base_cells * 2**octave
    cells_h = max(1, min(height, round(cells * height / longest)))
    cells_w = max(1, min(width, round(cells * width / longest)))
    lattice = rng.random((cells_h + 2, cells_w + 2), dtype=np.float32)
    lattice *= np.float32(amplitude)
    rows = np.zeros((height, cells_w + 2), np.float32)
    _add_resampled(lattice, height, rng.random(), 0, rows, np.empty_like(rows))
    _add_resampled(rows, width, rng.random(), 1, total, scratch)
    amplitude *= persistence
  low, high = total.min(), total.max()
  if high <= low:
    return np.zeros((height, width), np.float32)
  total -= low
  total /= high - low
  return total


# Alpha where a cloud's thin part begins; the haze margin fades from it to zero.
_VISIBLE_ALPHA = 0.1
# Shadows are displaced by this fraction of the image's longer side (cloud height x sun angle).
_SHADOW_DISTANCE = (0.03, 0.12)
# Fraction of the ground's light that remains in full shadow (diffuse sky light).
_SHADOW_TRANSMISSION = (0.4, 0.7)


def _kth_smallest(values: np.ndarray, k: int) -> float:
  return float(np.partition(values.ravel(), k)[k])


class SimulatedClouds(NamedTuple):
  """What `simulate_clouds` returns.

  Attributes:
    cloudy: float32 (H, W, C) in [0, 1], equal to the input outside `mask`.
    mask: bool (H, W), True where a cloud, its haze or a shadow changed the pixel at all.
    opaque: bool (H, W), the opaque cloud cores (alpha 1) only, no haze, no shadows.
  """
  cloudy: np.ndarray
  mask: np.ndarray
  opaque: np.ndarray


def simulate_clouds(image: np.ndarray, rng: np.random.Generator, *,
                    coverage: float | tuple[float, float] = (0.2, 0.6), thin_fraction: float = 0.3,
                    haze_margin: float = 0.0, shadows: bool = True) -> SimulatedClouds:
  """Covers `image` with simulated clouds, their haze and their shadows.

  Args:
    image: (H, W, C) float in [0, 1], any H, W and C; read as (R, G, B) when C = 3.
    rng: source of all randomness; the same state gives the same clouds.
    coverage: fraction of the pixels affected (cloud, haze or shadow), or a (low, high) range
      to draw it from uniformly. Met to within a pixel by thresholding the cloud field at its
      quantile.
    thin_fraction: share of the cloud cover (shadows and haze aside) that is thin:
      semi-transparent, from alpha 0.1 at the edge rising to opaque. The rest is opaque.
    haze_margin: width of the haze around every cloud, in units of the cloud field (which spans
      [0, 1]): its alpha falls from 0.1 at the cloud's edge to 0, quadratically, so that its
      outer part changes the ground by less than any detector resolves. 0: clouds end at alpha
      0.1, exactly where the mask ends.
    shadows: also cast shadows, the cloud field displaced towards a random direction, darkening
      the ground to 40-70 % where it is not under a cloud (less under the haze margin).
  """
  if image.ndim != 3:
    raise ValueError(f"image must be (H, W, C), got shape {image.shape}")
  if not np.isscalar(coverage):
    coverage = rng.uniform(*coverage)
  if not 0.0 <= coverage <= 1.0 or not 0.0 <= thin_fraction <= 1.0:
    raise ValueError(f"coverage and thin_fraction must be in [0, 1], "
                     f"got {coverage} and {thin_fraction}")
  if not 0.0 <= haze_margin < 1.0:
    raise ValueError(f"haze_margin must be in [0, 1), got {haze_margin}")
  height, width, channels = image.shape
  cloudy = np.array(image, dtype=np.float32)
  n_affected = round(coverage * height * width)
  if n_affected == 0:
    nothing = np.zeros((height, width), bool)
    return SimulatedClouds(cloudy, nothing, nothing.copy())

  # The field is drawn on a canvas larger by the shadow offset: the cloud sees one window of it,
  # the ground the window displaced by the offset, so clouds just outside the image cast shadows
  # into it as they would in a crop of a larger scene.
  dy = dx = 0
  if shadows:
    angle = rng.uniform(0.0, 2.0 * np.pi)
    distance = rng.uniform(*_SHADOW_DISTANCE) * max(height, width)
    dy, dx = round(distance * np.sin(angle)), round(distance * np.cos(angle))
  field = fractal_noise((height + abs(dy), width + abs(dx)), rng, base_cells=3)
  top, left = max(dy, 0), max(dx, 0)
  cloud_field = field[top:top + height, left:left + width]
  shadow_field = field[top - dy:top - dy + height, left - dx:left - dx + width]

  # A pixel is affected when the cloud field over it or over its sun-ward neighbour exceeds the
  # threshold, so thresholding their maximum at the right rank gives the coverage exactly.
  affected_field = np.maximum(cloud_field, shadow_field) if shadows else cloud_field
  affected_from = _kth_smallest(affected_field, height * width - n_affected)
  mask = affected_field >= affected_from
  # The haze margin lies between where the field starts to affect pixels and the cloud proper.
  threshold = min(affected_from + haze_margin, 1.0)
  footprint = cloud_field[cloud_field >= threshold]
  # The footprint is empty when only shadows of clouds outside the image fall into it.
  opaque_from = threshold
  if footprint.size:
    opaque_from = _kth_smallest(footprint, min(round(thin_fraction * footprint.size),
                                               footprint.size - 1))

  # Alpha over the whole canvas: 0 outside the clouds, haze fading in over the margin, rising
  # with the field through the thin part, 1 in the opaque core. In place: temporaries of this
  # size cost more in page faults than in arithmetic.
  alpha = field - threshold
  alpha *= (1.0 - _VISIBLE_ALPHA) / max(opaque_from - threshold, 1e-6)
  alpha += _VISIBLE_ALPHA
  np.clip(alpha, 0.0, 1.0, out=alpha)
  if haze_margin > 0:
    haze = field < threshold
    # Floored at a thousandth of the edge's alpha, so that every masked pixel does change.
    alpha[haze] = _VISIBLE_ALPHA * np.maximum(np.square(
        np.clip(field[haze] - affected_from, 0.0, None) / (threshold - affected_from)), 1e-3)
  alpha[field < affected_from] = 0.0
  cloud_alpha = alpha[top:top + height, left:left + width]
  opaque = cloud_alpha >= 1.0

  # One factor per pixel for the ground: shadow, then what the cloud lets through.
  ground = 1.0 - cloud_alpha
  if shadows:
    shadow_alpha = alpha[top - dy:top - dy + height, left - dx:left - dx + width]
    ground *= 1.0 - (1.0 - rng.uniform(*_SHADOW_TRANSMISSION)) * shadow_alpha
  cloudy *= ground[..., None]

  # Cloud tops: near white, slightly bluish grey, brightest where the cloud is thickest.
  brightness = np.clip(cloud_field - threshold, 0.0, None)
  brightness *= 0.2 / max(1.0 - threshold, 1e-6)
  brightness += 0.8
  brightness *= cloud_alpha
  tint = np.linspace(0.94, 1.0, channels, dtype=np.float32) if channels > 1 else np.float32(1.0)
  cloudy += brightness[..., None] * tint
  np.clip(cloudy, 0.0, 1.0, out=cloudy)
  return SimulatedClouds(cloudy, mask, opaque)
