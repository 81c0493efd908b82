"""Inception-v3 as the standard FID implementations use it, in Flax, and its weights file.

The network is pytorch-fid's `fid_inception_v3` (the TF-slim Inception-v3 graph of 2015-12-05 that
TTUR's original FID code ran, ported to PyTorch) up to pool3: images are resized bilinearly to
299 x 299 (PyTorch's F.interpolate, align_corners=False, no antialiasing), scaled from [0, 1] to
[-1, 1], and mapped to the 2048 averages of the last block's channels. Every convolution is
bias-free and followed by BatchNorm (eps 1e-3, applied with the stored statistics) and ReLU.

It differs from torchvision's Inception-v3 only in its pooling branches, as pytorch-fid's
FIDInceptionA/C/E_1/E_2 do, to match the TF graph:
- the 3 x 3 average pools of the Mixed_5*, Mixed_6b-e and Mixed_7b blocks leave the zero padding
  out of the mean (count_include_pad=False);
- the last block, Mixed_7c, max-pools there instead (pytorch-fid notes this is likely an error in
  the TF graph; FID numbers depend on it, so it stays).
Architecture checks: tests/test_inception.py compares every block's output shape with the layer
table of the torchvision source and the trainable parameter count (convolution weights, BatchNorm
scale and shift) with torchvision's 27,161,264 for the full network less AuxLogits (3,326,696)
and the 1000-class fc (2,049,000): 21,785,568.

Weights file: an uncompressed or compressed .npz of float arrays keyed exactly like pytorch-fid's
state_dict, in PyTorch's layouts, e.g. `Conv2d_1a_3x3.conv.weight` (out, in, kh, kw),
`Conv2d_1a_3x3.bn.weight`, `.bn.bias`, `.bn.running_mean`, `.bn.running_var` (channels,), for
every `<block>[.<branch>]` of the network; other keys (fc.*, num_batches_tracked) are ignored.
scripts/convert_inception_weights.py writes it from pytorch-fid's released .pth; docs/fid.md.
The Flax parameters carry the same names (path joined with "."), convolution weights as
(kh, kw, in, out).
"""

from __future__ import annotations

import functools
import os
import zipfile
import zlib
from typing import Any, Mapping

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from plfm_jax.errors import InputError

# Input side of the network and length of its feature vectors (pool3).
FID_SIZE = 299
FEATURES = 2048
# Smallest input the network maps to at least one pixel before its final pooling: the cheapest
# to trace when only the parameters' shapes are wanted.
MIN_SIZE = 75
BATCH_NORM_EPS = 1e-3

Params = dict[str, Any]


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else value


class _Conv(nn.Module):
  """Bias-free 2-D convolution with PyTorch's parameter name; weight (kh, kw, in, out)."""
  features: int
  kernel: tuple[int, int]
  stride: int
  padding: tuple[int, int]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    weight = self.param("weight", nn.initializers.he_normal(),
                        (*self.kernel, x.shape[-1], self.features))
    return lax.conv_general_dilated(
        x, weight, (self.stride, self.stride), [(p, p) for p in self.padding],
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=lax.Precision.HIGHEST)


class _BatchNorm(nn.Module):
  """Inference BatchNorm with PyTorch's names; the running statistics are plain parameters."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (x.shape[-1],)
    weight = self.param("weight", nn.initializers.ones, shape)
    bias = self.param("bias", nn.initializers.zeros, shape)
    mean = self.param("running_mean", nn.initializers.zeros, shape)
    var = self.param("running_var", nn.initializers.ones, shape)
    scale = weight * lax.rsqrt(var + BATCH_NORM_EPS)
    return x * scale + (bias - mean * scale)


class BasicConv2d(nn.Module):
  """Convolution, BatchNorm, ReLU; padding as PyTorch's (rows, columns) on both sides."""
  features: int
  kernel: int | tuple[int, int]
  stride: int = 1
  padding: int | tuple[int, int] = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = _Conv(self.features, _pair(self.kernel), self.stride, _pair(self.padding), name="conv")(x)
    return nn.relu(_BatchNorm(name="bn")(x))


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """The FID blocks' 3 x 3 stride-1 average pool, whose means leave the padding out."""
  return nn.avg_pool(x, (3, 3), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_stride2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
  """Mixed_5b-d (pytorch-fid's FIDInceptionA): 224 + pool_features channels out."""
  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch1x1 = BasicConv2d(64, 1, name="branch1x1")(x)
    branch5x5 = BasicConv2d(48, 1, name="branch5x5_1")(x)
    branch5x5 = BasicConv2d(64, 5, padding=2, name="branch5x5_2")(branch5x5)
    branch3x3dbl = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_3")(branch3x3dbl)
    branch_pool = BasicConv2d(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a, the 35 -> 17 reduction: 288 -> 768 channels."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = BasicConv2d(384, 3, stride=2, name="branch3x3")(x)
    branch3x3dbl = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = BasicConv2d(96, 3, stride=2, name="branch3x3dbl_3")(branch3x3dbl)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b-e (FIDInceptionC): factorised 7 x 7 convolutions, 768 channels in and out."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    branch1x1 = BasicConv2d(192, 1, name="branch1x1")(x)
    branch7x7 = BasicConv2d(c7, 1, name="branch7x7_1")(x)
    branch7x7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(branch7x7)
    branch7x7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(branch7x7)
    branch7x7dbl = BasicConv2d(c7, 1, name="branch7x7dbl_1")(x)
    branch7x7dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(branch7x7dbl)
    branch7x7dbl = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(branch7x7dbl)
    branch7x7dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(branch7x7dbl)
    branch7x7dbl = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(branch7x7dbl)
    branch_pool = BasicConv2d(192, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a, the 17 -> 8 reduction: 768 -> 1280 channels."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = BasicConv2d(192, 1, name="branch3x3_1")(x)
    branch3x3 = BasicConv2d(320, 3, stride=2, name="branch3x3_2")(branch3x3)
    branch7x7x3 = BasicConv2d(192, 1, name="branch7x7x3_1")(x)
    branch7x7x3 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
    branch7x7x3 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
    branch7x7x3 = BasicConv2d(192, 3, stride=2, name="branch7x7x3_4")(branch7x7x3)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (FIDInceptionE_1) and, with `max_pool`, Mixed_7c (FIDInceptionE_2): 2048 out."""
  max_pool: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch1x1 = BasicConv2d(320, 1, name="branch1x1")(x)
    branch3x3 = BasicConv2d(384, 1, name="branch3x3_1")(x)
    branch3x3 = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(branch3x3),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(branch3x3)], axis=-1)
    branch3x3dbl = BasicConv2d(448, 1, name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv2d(384, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(branch3x3dbl),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(branch3x3dbl)], axis=-1)
    if self.max_pool:
      pooled = nn.max_pool(x, (3, 3), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3(x)
    branch_pool = BasicConv2d(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


class FIDInceptionV3(nn.Module):
  """(B, H, W, 3) images in [-1, 1], H and W >= MIN_SIZE (FID uses 299) -> (B, 2048) pool3."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = BasicConv2d(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, 3, name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_stride2(x)
    x = BasicConv2d(80, 1, name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_stride2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    return x.mean(axis=(1, 2))


# ---------------------------------------------------------------------------------------------
# Parameters <-> the weights file (PyTorch's names and layouts).


def _is_conv_weight(key: str) -> bool:
  return key.endswith(".conv.weight")


def _to_file_layout(key: str, array: np.ndarray) -> np.ndarray:
  """(kh, kw, in, out) -> PyTorch's (out, in, kh, kw) for convolution weights."""
  return array.transpose(3, 2, 0, 1) if _is_conv_weight(key) else array


def _from_file_layout(key: str, array: np.ndarray) -> np.ndarray:
  return array.transpose(2, 3, 1, 0) if _is_conv_weight(key) else array


@functools.cache
def file_shapes() -> dict[str, tuple[int, ...]]:
  """Every key of the weights file and its shape in PyTorch's layout, in the network's order."""
  image = jax.ShapeDtypeStruct((1, MIN_SIZE, MIN_SIZE, 3), jnp.float32)
  abstract = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), image)["params"]
  # Transposed zero-size views: the layouts come from the one function that converts arrays.
  return {key: _to_file_layout(key, np.broadcast_to(np.uint8(0), leaf.shape)).shape
          for key, leaf in traverse_util.flatten_dict(abstract, sep=".").items()}


def write_weights_file(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
  """Writes arrays already named and laid out as the file wants them, as float32, at `path`."""
  # A file object, because np.savez appends ".npz" to a path that lacks it.
  with open(path, "wb") as f:
    np.savez(f, **{key: np.asarray(value, np.float32) for key, value in arrays.items()})


def save_inception(path: str | os.PathLike, params: Params) -> None:
  """Writes the network's `params` as a weights file (see the module docstring) at `path`."""
  flat = traverse_util.flatten_dict(params, sep=".")
  write_weights_file(path, {key: _to_file_layout(key, np.asarray(value))
                            for key, value in flat.items()})


def load_inception(path: str | os.PathLike) -> Params:
  """The network's parameters from a weights file, as float32 arrays on the default device.

  Raises:
    InputError: the file is missing or unreadable, not an .npz, or lacks an array of the network
      or holds one of another shape, a non-float type or non-finite values (the first such key
      in the network's order is named).
  """
  try:
    data = np.load(path, allow_pickle=False)
  except OSError as e:
    raise InputError(path, f"cannot read the Inception weights file: {e.strerror or e}") from None
  except (ValueError, EOFError, zipfile.BadZipFile):
    # np.load's own message ("pickled data") would mislead: the file is simply no .npz.
    raise InputError(path, "is not an .npz Inception weights file (see docs/fid.md)") from None
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise InputError(path, "holds a single .npy array, not an .npz of named Inception weights")
  arrays = {}
  with data:
    for key, shape in file_shapes().items():
      if key not in data.files:
        raise InputError(path, f"has no array '{key}': not FID Inception-v3 weights "
                         "(see docs/fid.md)")
      try:
        array = data[key]
      except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise InputError(path, f"cannot read array '{key}' (corrupt file?): {e}") from None
      if array.shape != shape:
        raise InputError(path, f"array '{key}' has shape {array.shape}, expected {shape}")
      if not np.issubdtype(array.dtype, np.floating):
        raise InputError(path, f"array '{key}' has dtype {array.dtype}, expected floats")
      if not np.isfinite(array).all():
        raise InputError(path, f"array '{key}' holds NaN or infinite values")
      arrays[key] = jnp.asarray(_from_file_layout(key, array), jnp.float32)
  return traverse_util.unflatten_dict(arrays, sep=".")


# ---------------------------------------------------------------------------------------------
# Features.


@functools.partial(jax.jit, static_argnames="size")
def preprocess(images: jax.Array, size: int = FID_SIZE) -> jax.Array:
  """(B, H, W, 3) in [0, 1] -> (B, size, size, 3) in [-1, 1], resized as pytorch-fid does.

  F.interpolate(mode="bilinear", align_corners=False) samples at half-pixel centres, clamps at
  the borders and does not antialias when shrinking: jax.image.resize without antialiasing.
  """
  images = jnp.asarray(images, jnp.float32)
  resized = jax.image.resize(images, (images.shape[0], size, size, images.shape[-1]), "bilinear",
                             antialias=False)
  return 2.0 * resized - 1.0


@jax.jit
def _pool3(params: Params, images: jax.Array) -> jax.Array:
  return FIDInceptionV3().apply({"params": params}, images)


def extract_features(params: Params, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
  """(N, H, W, 3) images in [0, 1] -> (N, 2048) float32 pool3 features.

  Runs in batches of min(batch_size, N), the last one padded, so that the network compiles once
  for all sets of batch_size images or more.
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be (N, H, W, 3), got shape {images.shape}")
  count = len(images)
  batch = max(1, min(batch_size, count))
  features = []
  for start in range(0, count, batch):
    chunk = images[start:start + batch]
    padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), np.float32)])
    features.append(np.asarray(_pool3(params, preprocess(padded)))[:len(chunk)])
  return np.concatenate(features) if features else np.zeros((0, FEATURES), np.float32)
