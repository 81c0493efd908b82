"""The PLFM modules: Keras-compatible ConvLSTM, pix2pix U-Net and PatchGAN on tiny inputs."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plfm_jax.models import ConvLSTM2D, PatchDiscriminator, TemporalBranch, UNet
from plfm_jax.models.conv import upsample2x
from plfm_jax.models.plfm import init_module


def np_conv_same(x: np.ndarray, w: np.ndarray) -> np.ndarray:
  """Stride-1 'same' convolution of NHWC x with an odd HWIO kernel, by explicit shifts."""
  k = w.shape[0]
  pad = k // 2
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  height, width = x.shape[1:3]
  out = np.zeros(x.shape[:3] + (w.shape[-1],))
  for dy in range(k):
    for dx in range(k):
      out += xp[:, dy:dy + height, dx:dx + width] @ w[dy, dx]
  return out


def np_convlstm(x: np.ndarray, kernel: np.ndarray, recurrent_kernel: np.ndarray,
                bias: np.ndarray) -> np.ndarray:
  """Keras ConvLSTM2D (relu activations, sigmoid gates, gates i, f, c, o) from zero state."""
  sigmoid = lambda z: 1 / (1 + np.exp(-z))
  relu = lambda z: np.maximum(z, 0)
  features = recurrent_kernel.shape[2]
  h = np.zeros(x.shape[:1] + x.shape[2:4] + (features,))
  c = np.zeros_like(h)
  hs = []
  for t in range(x.shape[1]):
    z = np_conv_same(x[:, t], kernel) + np_conv_same(h, recurrent_kernel) + bias
    i, f, g, o = np.split(z, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * relu(g)
    h = sigmoid(o) * relu(c)
    hs.append(h)
  return np.stack(hs, axis=1)


def init(module: nn.Module, *inputs: jax.Array) -> dict:
  """Inference-mode init, jitted (eager Flax compiles every op separately, which is slow)."""
  return init_module(module, jax.random.key(1), *inputs)


def init_convlstm(layer: ConvLSTM2D, x: jax.Array) -> dict:
  """`layer.init`, with the RNG that XLA:CPU compiles fast (see `plfm.init_module`)."""
  with jax.threefry_partitionable(False):
    return jax.jit(layer.init)(jax.random.key(1), x)


def apply(module: nn.Module, variables: dict, *inputs: jax.Array) -> jax.Array:
  """Jitted inference-mode apply."""
  return jax.jit(functools.partial(module.apply, train=False))(variables, *inputs)


@pytest.mark.parametrize("time_loop", ["unroll", "scan"])
@pytest.mark.parametrize("impl", ["lax", "matmul"])
def test_convlstm_matches_numpy_keras_cell(time_loop: str, impl: str):
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 6, 2))
  layer = ConvLSTM2D(3, time_loop=time_loop, impl=impl)
  variables = init_convlstm(layer, x)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  expected = np_convlstm(np.asarray(x, np.float64), p["kernel"], p["recurrent_kernel"], p["bias"])
  np.testing.assert_allclose(jax.jit(layer.apply)(variables, x), expected, rtol=1e-4, atol=1e-5)
  last = ConvLSTM2D(3, return_sequences=False, time_loop=time_loop, impl=impl)
  np.testing.assert_allclose(jax.jit(last.apply)(variables, x), expected[:, -1], rtol=1e-4,
                             atol=1e-5)


def test_convlstm_keras_initialisation():
  features = 4
  params = init_convlstm(ConvLSTM2D(features), jnp.zeros((1, 2, 4, 4, 3)))["params"]
  np.testing.assert_array_equal(params["bias"], [0] * 4 + [1] * 4 + [0] * 8)
  # Keras Orthogonal flattens all but the last axis: (9F, 4F) with orthonormal columns.
  recurrent = np.asarray(params["recurrent_kernel"]).reshape(-1, 4 * features)
  np.testing.assert_allclose(recurrent.T @ recurrent, np.eye(4 * features), atol=1e-5)
  kernel = np.asarray(params["kernel"])
  assert kernel.shape == (3, 3, 3, 4 * features)
  limit = np.sqrt(6 / (9 * 3 + 9 * 4 * features))  # glorot_uniform over the receptive field
  assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.5 * limit


def test_temporal_branch_paper_layer_counts():
  history = jax.ShapeDtypeStruct((1, 3, 256, 256, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(TemporalBranch().init, train=False),
                             jax.random.key(0), history)
  sizes = jax.tree.map(lambda a: int(np.prod(a.shape)), variables)
  params = sizes["params"]
  assert [sum(params[f"ConvLSTM2D_{i}"].values()) for i in range(3)] == [604160, 442624, 110720]
  assert [sum(params[f"BatchNorm_{i}"].values()) for i in range(2)] == [256, 128]
  assert [sum(sizes["batch_stats"][f"BatchNorm_{i}"].values()) for i in range(2)] == [256, 128]
  assert sum(params["Conv_0"].values()) == 9 * 32 * 3 + 3


def test_temporal_branch_output_range_and_shape():
  x = jax.random.uniform(jax.random.key(0), (2, 3, 16, 16, 3))
  module = TemporalBranch(features=(4, 4, 4))
  variables = init(module, x)
  y, updates = jax.jit(functools.partial(module.apply, train=True, mutable=["batch_stats"]))(
      variables, x)
  assert y.shape == (2, 16, 16, 3)
  assert float(y.min()) >= 0 and float(y.max()) <= 1
  assert float(y.std()) > 0
  # Training moves the running statistics (test_plfm checks inference ignores the batch).
  assert not np.allclose(updates["batch_stats"]["BatchNorm_0"]["mean"], 0)


def _batch_norm_settings(module: nn.Module, *args: Any, **kwargs: Any) -> set[tuple[float, float]]:
  """(momentum, epsilon) of every BatchNorm that runs in module.init(*args, **kwargs)."""
  seen = set()

  def interceptor(next_fn, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm):
      seen.add((context.module.momentum, context.module.epsilon))
    return next_fn(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(functools.partial(module.init, **kwargs), jax.random.key(0), *args)
  return seen


def test_batch_norm_uses_keras_and_reference_settings():
  image = jnp.zeros((1, 32, 32, 3))
  history = jnp.zeros((1, 2, 8, 8, 3))
  assert _batch_norm_settings(TemporalBranch(features=(2, 2, 2)), history,
                              train=False) == {(0.99, 1e-3)}
  assert _batch_norm_settings(UNet(features=2), image, train=False) == {(0.8, 1e-3)}
  assert _batch_norm_settings(PatchDiscriminator(features=2), image, image,
                              train=False) == {(0.8, 1e-3)}


def test_unet_shapes_range_and_widths():
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 6), minval=-1, maxval=1)
  module = UNet(features=4)
  variables = init(module, x)
  y = apply(module, variables, x)
  assert y.shape == (2, 32, 32, 3)
  assert float(jnp.abs(y).max()) <= 1
  kernels = {name: p["kernel"].shape for name, p in variables["params"].items() if "Conv" in name}
  # 5 down (4, 8, 16, 32, 32), 4 up (32, 16, 8, 4) taking the concatenated skips, then the output.
  assert [kernels[f"Conv_{i}"][2:] for i in range(10)] == [
      (6, 4), (4, 8), (8, 16), (16, 32), (32, 32),
      (32, 32), (64, 16), (32, 8), (16, 4), (8, 3)]
  assert all(kernels[f"Conv_{i}"][:2] == (4, 4) for i in range(10))
  assert len([n for n in variables["params"] if "BatchNorm" in n]) == 4 + 4


def test_unet_depth_and_size_check():
  module = UNet(features=2, depth=3)
  x = jnp.zeros((1, 8, 8, 3))
  assert apply(module, init(module, x), x).shape == (1, 8, 8, 3)
  with pytest.raises(ValueError, match="divisible by 8"):
    init(module, jnp.zeros((1, 12, 12, 3)))


def test_discriminator_patch_logits():
  image = jax.random.uniform(jax.random.key(0), (2, 32, 48, 3))
  module = PatchDiscriminator(features=4)
  variables = init(module, image, image)
  logits = apply(module, variables, image, -image)
  assert logits.shape == (2, 2, 3, 1)
  assert variables["params"]["Conv_0"]["kernel"].shape == (4, 4, 6, 4)
  assert variables["params"]["Conv_4"]["kernel"].shape == (4, 4, 32, 1)
  # The condition matters.
  assert not np.allclose(logits, apply(module, variables, image, image))


def test_upsample2x_is_nearest_neighbour():
  x = np.arange(2 * 3 * 4 * 2, dtype=np.float32).reshape(2, 3, 4, 2)
  np.testing.assert_array_equal(upsample2x(jnp.asarray(x)), x.repeat(2, axis=1).repeat(2, axis=2))
