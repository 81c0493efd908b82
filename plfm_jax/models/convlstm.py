"""Temporal branch of PLFM: stacked ConvLSTM layers with Keras ConvLSTM2D's parameterisation.

Flax's `nn.ConvLSTMCell` has two biased convolutions per step, so its parameter count differs
from the reference; `ConvLSTM2D` here keeps Keras's layout (one input kernel, one recurrent
kernel, one bias of 4 * features, gate order i, f, c, o) and initialisation.

Speed: XLA:CPU runs a convolution inside a `scan` body on a very slow path, so the short time
loop is unrolled in Python by default; the input and recurrent convolutions of a step run as
one convolution over [x_t, h_{t-1}], and the first step, whose state is zero, skips the
recurrent part.

Memory: the gate nonlinearities and the cell update are rematerialised in the backward pass
(`_cell_update` under `jax.checkpoint`), so a step keeps only its convolution output and the
previous cell state for the backward pass instead of every intermediate of the update.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from plfm_jax.models.conv import Conv, conv2d
from plfm_jax.models.norm import norm_layer

TIME_LOOPS = ("unroll", "scan")

# Keras BatchNormalization defaults; the reference sets no momentum on the temporal branch.
_BN_MOMENTUM = 0.99
_BN_EPSILON = 1e-3


def unit_forget_bias(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
  """Keras `unit_forget_bias`: zeros except ones on the forget-gate quarter (order i, f, c, o)."""
  del key
  features = shape[0] // 4
  return jnp.zeros(shape, dtype).at[features:2 * features].set(1)


def _cell_update(z: jax.Array, c: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """Keras ConvLSTM2D's update (relu activation) from the gate pre-activations z (order i, f,
  c, o) and the previous cell state (None: zero): (h, c)."""
  i, f, g, o = jnp.split(z, 4, axis=-1)
  c = nn.sigmoid(i) * nn.relu(g) + (0 if c is None else nn.sigmoid(f) * c)
  return nn.sigmoid(o) * nn.relu(c), c


_GATES = "convlstm_gates"


@functools.partial(jax.checkpoint, static_argnums=(5,),
                   policy=jax.checkpoint_policies.save_only_these_names(_GATES))
def _step(x_t: jax.Array, h: jax.Array | None, c: jax.Array | None, kernel: jax.Array,
          bias: jax.Array, impl: str) -> tuple[jax.Array, jax.Array]:
  """One time step (h, c) <- (x_t, h, c); h and c None at t = 0, where they are zero and the
  recurrent half of `kernel` is left out."""
  inputs = x_t if h is None else jnp.concatenate([x_t, h], axis=-1)
  z = conv2d(inputs, kernel[:, :, :inputs.shape[-1]], impl=impl) + bias
  return _cell_update(checkpoint_name(z, _GATES), c)


class ConvLSTM2D(nn.Module):
  """One ConvLSTM layer over a (B, T, H, W, C) sequence with zero initial state.

  Attributes:
    features: hidden channels F.
    kernel_size: square kernel of both convolutions ('same' padding, stride 1).
    return_sequences: return every hidden state (B, T, H, W, F), else the last one (B, H, W, F).
    time_loop: "unroll" (Python loop; fast for short series on XLA:CPU) or "scan" (lax.scan;
      constant compile time for long series).
    impl: convolution implementation passed to `conv2d` ("lax" or "matmul").
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  features: int
  kernel_size: int = 3
  return_sequences: bool = True
  time_loop: str = "unroll"
  impl: str = "lax"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.time_loop not in TIME_LOOPS:
      raise ValueError(f"time_loop must be one of {TIME_LOOPS}, got {self.time_loop!r}")
    k, f = self.kernel_size, self.features
    kernel = self.param("kernel", nn.initializers.glorot_uniform(),
                        (k, k, x.shape[-1], 4 * f), self.param_dtype)
    recurrent_kernel = self.param("recurrent_kernel", nn.initializers.orthogonal(),
                                  (k, k, f, 4 * f), self.param_dtype)
    bias = self.param("bias", unit_forget_bias, (4 * f,), self.param_dtype)
    x, kernel, recurrent_kernel, bias = nn.dtypes.promote_dtype(
        x, kernel, recurrent_kernel, bias, dtype=self.dtype)
    # Concatenated at call time so the parameters keep Keras's names and shapes.
    joint_kernel = jnp.concatenate([kernel, recurrent_kernel], axis=2)

    def step(carry: tuple[jax.Array, jax.Array],
             x_t: jax.Array) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
      h, c = _step(x_t, *carry, joint_kernel, bias, self.impl)
      return (h, c), h

    h, c = _step(x[:, 0], None, None, joint_kernel, bias, self.impl)
    carry = (h, c)
    if self.time_loop == "unroll":
      hs = [h]
      for t in range(1, x.shape[1]):
        carry, h_t = step(carry, x[:, t])
        hs.append(h_t)
      sequence = jnp.stack(hs, axis=1)
    else:
      carry, rest = jax.lax.scan(step, carry, jnp.swapaxes(x[:, 1:], 0, 1))
      sequence = jnp.concatenate([h[:, None], jnp.swapaxes(rest, 0, 1)], axis=1)
    # XLA drops the unused sequence when only the final state is returned.
    return sequence if self.return_sequences else carry[0]


class TemporalBranch(nn.Module):
  """ConvLSTM stack -> Conv(3x3, sigmoid): (B, T, H, W, C) earlier dates -> (B, H, W, 3) in [0, 1].

  A normalisation layer follows every ConvLSTM layer but the last, normalising over the whole
  sequence; the last layer returns only its final hidden state.

  Attributes:
    features: ConvLSTM filters per layer (reference: 128, 64, 32).
    out_features: output channels.
    residual: the last convolution is linear and zero-initialised: the output is a correction
      to be added to a prior (zero before training) instead of an image.
    norm: "batch" (reference) or "group", see `norm_layer`.
    time_loop: "unroll" or "scan", see `ConvLSTM2D`.
    impl: convolution implementation ("lax" or "matmul").
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  features: Sequence[int] = (128, 64, 32)
  out_features: int = 3
  residual: bool = False
  norm: str = "batch"
  time_loop: str = "unroll"
  impl: str = "lax"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for index, features in enumerate(self.features):
      last = index == len(self.features) - 1
      x = ConvLSTM2D(features, return_sequences=not last, time_loop=self.time_loop,
                     impl=self.impl, dtype=self.dtype, param_dtype=self.param_dtype)(x)
      if not last:
        x = norm_layer(self.norm, features, train=train, momentum=_BN_MOMENTUM,
                       epsilon=_BN_EPSILON, dtype=self.dtype, param_dtype=self.param_dtype)(x)
    init = dict(kernel_init=nn.initializers.zeros) if self.residual else {}
    x = Conv(self.out_features, kernel_size=3, impl=self.impl, dtype=self.dtype,
             param_dtype=self.param_dtype, **init)(x)
    return x if self.residual else nn.sigmoid(x)
