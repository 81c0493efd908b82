"""The methods an evaluation scores, each a pure function of the batch (and the model's outputs).

Baselines need only the batch: the cloudy input itself and the gap-filling methods of
`plfm_jax.models.gapfill` (persistence, the temporal mean and median of the earlier dates, and the
same matched to the cloudy date's clear pixels). The model-based methods are outputs of
`PLFM.predict`: each branch alone, the fused prediction and the composite (fused under clouds,
the cloudy input's own pixels elsewhere). All images are (B, H, W, 3) in [0, 1]; the functions
work on NumPy and JAX arrays alike, inside `jax.jit` too.

Every method fills what the batch's `cloud_mask` flags and keeps the cloudy input elsewhere, as
its user would get it with that mask (`method_images`): with a mask that misses haze, every
method keeps the same haze, and the comparison stays one of filling, on the same pixels. PLFM
fused is the model's own output (for a model without `keep_clear_pixels`, drawn everywhere).
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from plfm_jax.models import gapfill
from plfm_jax.models.plfm import composite

Batch = Mapping[str, jax.Array]


def cloudy_input(batch: Batch) -> jax.Array:
  """The cloudy date as it is: the floor every method has to beat under clouds."""
  return jnp.asarray(batch["cloudy"])


def _gapfill(method: gapfill.GapFill) -> Callable[[Batch], jax.Array]:
  # The earlier dates as given (clouds and all, where a scenario clouds them): filling them is
  # part of what the tool does, not of what the baselines do.
  return lambda batch: method(batch.get("history_input", batch["history"]), batch["cloudy"],
                              batch["cloud_mask"])


BATCH_BASELINES: dict[str, Callable[[Batch], jax.Array]] = {
    "cloudy_input": cloudy_input,
    **{name: _gapfill(method) for name, method in gapfill.METHODS.items()},
}
# Model-based methods: the image of `PLFM.predict` each one is (an output of a component,
# `plfm.COMPONENT_OUTPUTS`, or the composite). The names are the report's own (per_sample.csv,
# summary.json), so a component's output is named here, not derived from the component.
MODEL_OUTPUTS = {
    "sar_branch": "sar_branch",
    "temporal_branch": "temporal",
    "plfm_fused": "fused",
    "plfm_composite": "composite",
}
# Methods scored as they are, not kept to the mask: the input itself and the model's output.
_AS_THEY_ARE = ("cloudy_input", "plfm_fused")
# Every method in report order: baselines first, PLFM last.
METHODS = (*BATCH_BASELINES, *MODEL_OUTPUTS)
LABELS = {
    "cloudy_input": "cloudy input",
    "persistence": "persistence (latest earlier date)",
    "temporal_mean": "temporal mean",
    "temporal_median": "temporal median",
    "matched_persistence": "matched persistence",
    "matched_mean": "matched temporal mean",
    "matched_regression": "matched regression (all earlier dates)",
    "matched_multiscale": "matched multi-scale regression",
    "sar_branch": "SAR branch alone",
    "temporal_branch": "temporal branch alone",
    "plfm_fused": "PLFM fused",
    "plfm_composite": "PLFM composite (clear pixels kept)",
}


def method_images(batch: Batch, predictions: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """{method: (B, H, W, 3) image} for every method of METHODS, in that order.

  Args:
    batch: a batch of the input pipeline ("history", "cloudy", ...).
    predictions: `PLFM.predict`'s outputs for the same batch.
  """
  images = {name: fn(batch) for name, fn in BATCH_BASELINES.items()}
  images.update({name: jnp.asarray(predictions[key]) for name, key in MODEL_OUTPUTS.items()})
  filled = lambda image: composite(image, batch["cloudy"], batch["cloud_mask"])
  return {name: image if name in _AS_THEY_ARE else filled(image)
          for name, image in images.items()}
