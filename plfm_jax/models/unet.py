"""pix2pix U-Net: the SAR branch generator (gf=128) and, with gf=32, the fusion head."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from plfm_jax.models.conv import Conv
from plfm_jax.models.norm import norm_layer

# The reference sets BatchNormalization(momentum=0.8) and keeps Keras's epsilon.
BN_MOMENTUM = 0.8
BN_EPSILON = 1e-3
LEAKY_SLOPE = 0.2


def down_widths(features: int, depth: int) -> list[int]:
  """Encoder widths of pix2pix: features * (1, 2, 4, 8, 8, ...)."""
  return [features * min(2**i, 8) for i in range(depth)]


class UNet(nn.Module):
  """pix2pix U-Net, (B, H, W, C) -> (B, H, W, out_features) in [-1, 1]; H, W divisible by 2**depth.

  Down blocks: Conv 4x4 stride 2 -> LeakyReLU(0.2) -> norm (none on the first).
  Up blocks: UpSampling2D(2) -> Conv 4x4 relu -> norm -> concat with the mirrored skip.
  Then UpSampling2D(2) -> Conv 4x4 tanh.

  Attributes:
    features: base width (gf); reference 128 for the SAR generator, 32 for the fusion head.
    depth: number of down blocks (reference 5; the bottleneck is H / 2**depth).
    out_features: output channels.
    residual: the last convolution is linear (no tanh) and zero-initialised: the output, a
      correction to apply to an image, is exactly zero before training.
    norm: "batch" (reference, BatchNorm momentum 0.8) or "group", see `norm_layer`.
    impl: convolution implementation ("lax" or "matmul").
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  features: int = 128
  depth: int = 5
  out_features: int = 3
  residual: bool = False
  norm: str = "batch"
  impl: str = "lax"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    size = 2**self.depth
    if x.shape[1] % size or x.shape[2] % size:
      raise ValueError(f"U-Net of depth {self.depth} needs H and W divisible by {size}, "
                       f"got {x.shape[1]}x{x.shape[2]}")

    def conv(features: int, strides: int = 1, upsample: bool = False, **init) -> Conv:
      return Conv(features, kernel_size=4, strides=strides, upsample=upsample, impl=self.impl,
                  dtype=self.dtype, param_dtype=self.param_dtype, **init)

    def norm(features: int) -> nn.Module:
      return norm_layer(self.norm, features, train=train, momentum=BN_MOMENTUM,
                        epsilon=BN_EPSILON, dtype=self.dtype, param_dtype=self.param_dtype)

    widths = down_widths(self.features, self.depth)
    skips = []
    for index, features in enumerate(widths):
      x = nn.leaky_relu(conv(features, strides=2)(x), LEAKY_SLOPE)
      if index:
        x = norm(features)(x)
      skips.append(x)
    for features, skip in zip(widths[-2::-1], skips[-2::-1]):
      x = nn.relu(conv(features, upsample=True)(x))
      x = jnp.concatenate([norm(features)(x), skip], axis=-1)
    if self.residual:
      return conv(self.out_features, upsample=True, kernel_init=nn.initializers.zeros)(x)
    return nn.tanh(conv(self.out_features, upsample=True)(x))
