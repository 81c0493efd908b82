"""PatchGAN discriminator of the SAR branch (pix2pix, df=128)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from plfm_jax.models.conv import Conv
from plfm_jax.models.norm import norm_layer
from plfm_jax.models.unet import BN_EPSILON, BN_MOMENTUM, LEAKY_SLOPE


class PatchDiscriminator(nn.Module):
  """concat(image, condition) -> per-patch real/fake logits (B, H / 2**depth, W / 2**depth, 1).

  `depth` x [Conv 4x4 stride 2 -> LeakyReLU(0.2) -> norm] (none on the first) with widths
  features * (1, 2, 4, 8), then Conv(1, 4x4, stride 1) without activation.

  Attributes:
    features: base width (df), reference 128.
    depth: number of stride-2 blocks (reference 4: 16 x 16 patches for 256 px inputs).
    norm: "batch" (reference) or "group", see `norm_layer`.
    impl: convolution implementation ("lax" or "matmul").
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  features: int = 128
  depth: int = 4
  norm: str = "batch"
  impl: str = "lax"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image: jax.Array, condition: jax.Array, *, train: bool) -> jax.Array:
    x = jnp.concatenate([image, condition], axis=-1)
    for index in range(self.depth):
      features = self.features * 2**index
      x = Conv(features, kernel_size=4, strides=2, impl=self.impl, dtype=self.dtype,
               param_dtype=self.param_dtype)(x)
      x = nn.leaky_relu(x, LEAKY_SLOPE)
      if index:
        x = norm_layer(self.norm, features, train=train, momentum=BN_MOMENTUM,
                       epsilon=BN_EPSILON, dtype=self.dtype, param_dtype=self.param_dtype)(x)
    return Conv(1, kernel_size=4, impl=self.impl, dtype=self.dtype,
                param_dtype=self.param_dtype)(x)
