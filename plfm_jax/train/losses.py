"""The PLFM losses (reference: docs/reference_model.md), as means over the batch.

`weights` (B, H, W, 1), where given, weighs each pixel of the image losses (e.g. more under
clouds, `pixel_weights`); without it every pixel counts alike, as in the reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def pixel_weights(cloud_mask: jax.Array, cloud_weight: float) -> jax.Array | None:
  """Per-pixel loss weights: `cloud_weight` under clouds, 1 elsewhere; None when all are 1."""
  if cloud_weight == 1.0:
    return None
  return 1.0 + (cloud_weight - 1.0) * cloud_mask


def _mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
  if weights is None:
    return jnp.mean(values)
  weights = jnp.broadcast_to(weights, values.shape)
  return jnp.sum(weights * values) / jnp.sum(weights)


def huber(prediction: jax.Array, target: jax.Array, delta: float = 1.0,
          weights: jax.Array | None = None) -> jax.Array:
  """Keras Huber loss (temporal branch)."""
  return _mean(optax.losses.huber_loss(prediction, target, delta=delta), weights)


def l1(prediction: jax.Array, target: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Mean absolute error (head; the generator's reconstruction term)."""
  return _mean(jnp.abs(prediction - target), weights)


def bce_with_logits(logits: jax.Array, label: float) -> jax.Array:
  """Binary cross-entropy of PatchGAN logits against a constant real (1) / fake (0) label."""
  return jnp.mean(optax.losses.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, label)))
