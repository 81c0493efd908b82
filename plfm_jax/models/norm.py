"""The normalisation layer after a convolution: BatchNorm (the reference) or GroupNorm."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn

NORMS = ("batch", "group")
# Groups of GroupNorm, fewer where the channel count is not a multiple.
GROUPS = 8


def norm_layer(kind: str, features: int, *, train: bool, momentum: float, epsilon: float,
               dtype: Any, param_dtype: Any) -> nn.Module:
  """A normalisation module for `features` channels, created inside a compact `__call__`.

  "batch": BatchNorm with Keras's `momentum` and `epsilon` (the reference), running averages in
  inference. "group": GroupNorm over gcd(features, GROUPS) groups: per-sample statistics, the
  same in training and inference, so nothing depends on how far running averages have come.
  """
  if kind == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon,
                        dtype=dtype, param_dtype=param_dtype)
  if kind == "group":
    return nn.GroupNorm(num_groups=math.gcd(features, GROUPS), epsilon=epsilon, dtype=dtype,
                        param_dtype=param_dtype)
  raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")
