"""The cloud masks users have, read as one thing: True where a pixel is cloud, haze or shadow.

| format | what it is | flagged |
|---|---|---|
| `qa60` | Sentinel-2 QA60 bitmask (L1C and L2A, 60 m) | bit 10 (opaque cloud) or bit 11 (cirrus) |
| `scl` | Sen2Cor scene classification (L2A SCL band) | 3 cloud shadow, 8 and 9 cloud, 10 cirrus |
| `probability` | cloud probability (s2cloudless, Sen2Cor MSK_CLDPRB, ...) | above `threshold` (of 1) |
| `omnicloudmask` | OmniCloudMask classes (0 clear, 1 thick, 2 thin cloud, 3 shadow) | 1, 2 and 3 |
| `binary` | 0 = clear, anything else = cloud | non-zero |

`guess_format` tells them apart by their values (`auto`); give the format where a file could be
read two ways.
"""

from __future__ import annotations

import numpy as np

from plfm_jax.data.normalize import qa60_cloud_mask

FORMATS = ("auto", "qa60", "scl", "probability", "omnicloudmask", "binary")
# s2cloudless's own default decision threshold.
DEFAULT_PROBABILITY_THRESHOLD = 0.4
# Sen2Cor scene classes that are not ground seen clearly: cloud shadows, cloud of medium and
# high probability, thin cirrus.
SCL_CLOUD_CLASSES = (3, 8, 9, 10)
OMNICLOUDMASK_CLOUD_CLASSES = (1, 2, 3)
_QA60_VALUES = {0, 1 << 10, 1 << 11, (1 << 10) | (1 << 11)}


class FormatError(ValueError):
  """A mask whose values fit no format, or not the one asked for."""


def guess_format(values: np.ndarray) -> str:
  """The format of a mask from its values (all of them, or a representative sample).

  Floats in [0, 1]: probability. Integers: {0, 1} or {0, 255} binary; only QA60's bit values
  qa60; within 0..3 OmniCloudMask; within 0..11 with ground classes (4 vegetation, 5 bare soil,
  6 water, 7 unclassified) SCL; up to 100 a probability in percent; up to 255 one in 1/255.

  Raises:
    FormatError: values no format explains.
  """
  values = np.asarray(values)
  if np.issubdtype(values.dtype, np.floating):
    finite = values[np.isfinite(values)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
      raise FormatError(f"floating-point values from {finite.min():g} to {finite.max():g}: a "
                        "cloud probability must lie in [0, 1]")
    return "probability"
  if not np.issubdtype(values.dtype, np.integer):
    raise FormatError(f"values of type {values.dtype}: a mask holds integers or probabilities")
  present = set(np.unique(values).tolist())
  if present <= {0, 1} or present <= {0, 255}:
    return "binary"
  if present <= _QA60_VALUES:
    return "qa60"
  if min(present) < 0:
    raise FormatError(f"negative values ({min(present)}): no mask format has them")
  if max(present) <= 3:
    return "omnicloudmask"
  if max(present) <= 11 and present & {4, 5, 6, 7}:
    return "scl"
  if max(present) <= 255:
    return "probability"
  raise FormatError(f"values up to {max(present)} that are not QA60 bits: pass the format")


def probability_scale(values: np.ndarray) -> float:
  """What a probability raster's values are out of: 1 (floats), 100 (percent) or 255."""
  values = np.asarray(values)
  if np.issubdtype(values.dtype, np.floating):
    return 1.0
  return 100.0 if values.max(initial=0) <= 100 else 255.0


def to_mask(values: np.ndarray, fmt: str, *, threshold: float = DEFAULT_PROBABILITY_THRESHOLD,
            scale: float | None = None) -> np.ndarray:
  """Bool mask (True = cloud, haze or shadow) of a mask raster's `values` in format `fmt`.

  Args:
    values: the raster (any shape).
    fmt: one of FORMATS but "auto" (`guess_format` first).
    threshold: probability above which a pixel is cloud, as a fraction of 1.
    scale: what a probability's values are out of (`probability_scale` of the whole file, so
      that every block of a scene is read alike); default from `values`.

  Raises:
    FormatError: values that do not fit `fmt`.
  """
  values = np.asarray(values)
  if fmt == "qa60":
    if not np.issubdtype(values.dtype, np.integer):
      raise FormatError(f"QA60 is an integer bitmask, got {values.dtype} values")
    return qa60_cloud_mask(values)
  if fmt == "scl":
    return np.isin(values, SCL_CLOUD_CLASSES)
  if fmt == "omnicloudmask":
    return np.isin(values, OMNICLOUDMASK_CLOUD_CLASSES)
  if fmt == "binary":
    return np.nan_to_num(values) != 0
  if fmt == "probability":
    if not 0 < threshold < 1:
      raise FormatError(f"a probability threshold lies in (0, 1), got {threshold}")
    scale = probability_scale(values) if scale is None else scale
    return np.nan_to_num(values.astype(np.float32)) > threshold * scale
  raise ValueError(f"format must be one of {FORMATS[1:]}, got {fmt!r}")
