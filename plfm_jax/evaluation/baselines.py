"""The methods an evaluation scores, each a pure function of the batch (and the model's outputs).

Simple baselines need only the batch: the cloudy input itself, persistence (the most recent
earlier date) and the per-pixel mean and median of the earlier dates. The model-based methods are
the outputs of `plfm_jax.modeling.predict`: each branch alone, the fused prediction and the
composite (fused under clouds, the cloudy input's own pixels elsewhere). All images are
(B, H, W, 3) in [0, 1]; the functions work on NumPy and JAX arrays alike, inside `jax.jit` too.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp

Batch = Mapping[str, jax.Array]


def cloudy_input(batch: Batch) -> jax.Array:
  """The cloudy date as it is: the floor every method has to beat under clouds."""
  return jnp.asarray(batch["cloudy"])


def persistence(batch: Batch) -> jax.Array:
  """The most recent earlier date (history is oldest first)."""
  return jnp.asarray(batch["history"])[:, -1]


def temporal_mean(batch: Batch) -> jax.Array:
  """Per-pixel mean of the earlier dates."""
  return jnp.mean(jnp.asarray(batch["history"]), axis=1)


def temporal_median(batch: Batch) -> jax.Array:
  """Per-pixel median of the earlier dates."""
  return jnp.median(jnp.asarray(batch["history"]), axis=1)


BATCH_BASELINES: dict[str, Callable[[Batch], jax.Array]] = {
    "cloudy_input": cloudy_input,
    "persistence": persistence,
    "temporal_mean": temporal_mean,
    "temporal_median": temporal_median,
}
# Model-based methods: the key of `modeling.predict`'s output each one is.
MODEL_OUTPUTS = {
    "sar_branch": "sar",
    "temporal_branch": "temporal",
    "plfm_fused": "fused",
    "plfm_composite": "composite",
}
# Every method in report order: baselines first, PLFM last.
METHODS = (*BATCH_BASELINES, *MODEL_OUTPUTS)
LABELS = {
    "cloudy_input": "cloudy input",
    "persistence": "persistence (latest earlier date)",
    "temporal_mean": "temporal mean",
    "temporal_median": "temporal median",
    "sar_branch": "SAR branch alone",
    "temporal_branch": "temporal branch alone",
    "plfm_fused": "PLFM fused",
    "plfm_composite": "PLFM composite (clear pixels kept)",
}


def method_images(batch: Batch, predictions: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """{method: (B, H, W, 3) image} for every method of METHODS, in that order.

  Args:
    batch: a batch of the input pipeline ("history", "cloudy", ...).
    predictions: `modeling.predict`'s outputs for the same batch.
  """
  images = {name: fn(batch) for name, fn in BATCH_BASELINES.items()}
  images.update({name: jnp.asarray(predictions[key]) for name, key in MODEL_OUTPUTS.items()})
  return images
