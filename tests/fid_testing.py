"""FID helpers only the tests use: random Inception-v3 parameters, the FID of two sets in one call."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from plfm_jax.evaluation import inception
from plfm_jax.evaluation.fid import fid_features, fid_from_features, load_fid_weights


def random_params(seed: int = 0) -> inception.Params:
  """Random parameters: He-normal convolutions, BatchNorm near the identity.

  Drawn with NumPy from `file_shapes`: compiling the module's own init takes half a minute on
  a CPU. The He scale keeps activations near unit size through the 94 layers, so that the
  features of different images differ.
  """
  rng = np.random.default_rng(seed)
  flat = {}
  for key, shape in inception.file_shapes().items():
    if inception._is_conv_weight(key):
      array = rng.standard_normal(shape, np.float32) * np.sqrt(2.0 / np.prod(shape[1:]))
    elif key.endswith((".bn.weight", ".bn.running_var")):
      array = rng.uniform(0.5, 1.5, shape)
    else:
      array = rng.normal(0.0, 0.1, shape)
    flat[key] = jnp.asarray(inception._from_file_layout(key, array), jnp.float32)
  return traverse_util.unflatten_dict(flat, sep=".")


def fid(pred_images: np.ndarray, target_images: np.ndarray,
        inception_weights: str | os.PathLike | None) -> float:
  """Frechet Inception Distance between two image sets, (N, H, W, 3) in [0, 1], N >= 2 each.

  The whole path from a weights file, as evaluation takes it in steps (the weights loaded once,
  the ground truth's features once for every method).
  """
  for name, images in (("pred_images", pred_images), ("target_images", target_images)):
    shape = np.shape(images)
    if len(shape) != 4:
      raise ValueError(f"{name} must be (N, H, W, C), got shape {shape}")
    if shape[0] < 2:
      raise ValueError(f"FID compares image sets and needs at least 2 images per set ({name} has "
                       f"{shape[0]}): the covariance of one sample is undefined")
  params = load_fid_weights(inception_weights)
  return fid_from_features(fid_features(pred_images, params), fid_features(target_images, params))
