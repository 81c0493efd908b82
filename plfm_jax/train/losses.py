"""The PLFM losses (REFERENCE.md section 1), as means over the batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def huber(prediction: jax.Array, target: jax.Array, delta: float = 1.0) -> jax.Array:
  """Keras Huber loss (temporal branch)."""
  return jnp.mean(optax.losses.huber_loss(prediction, target, delta=delta))


def l1(prediction: jax.Array, target: jax.Array) -> jax.Array:
  """Mean absolute error (head; the generator's reconstruction term)."""
  return jnp.mean(jnp.abs(prediction - target))


def bce_with_logits(logits: jax.Array, label: float) -> jax.Array:
  """Binary cross-entropy of PatchGAN logits against a constant real (1) / fake (0) label."""
  return jnp.mean(optax.losses.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, label)))
