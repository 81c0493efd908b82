"""The one 2-D convolution every PLFM module uses.

Two implementations of a TF/Keras 'SAME' NHWC x HWIO convolution:
- "lax": `jax.lax.conv_general_dilated`, the right choice on GPU/TPU.
- "matmul": im2col / col2im around one dense matmul per pass, with a custom VJP. XLA:CPU runs
  dense matmuls at ~450 GFLOP/s but its convolution backward pass at only ~100, so expressing
  forward, input gradient and kernel gradient as single large matmuls is much faster there.
"""

import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

_IMPLS = ("lax", "matmul")


def resolve_conv_impl(impl: str) -> str:
  """Maps "auto" to the fastest implementation for the default backend."""
  if impl == "auto":
    return "matmul" if jax.default_backend() == "cpu" else "lax"
  if impl in _IMPLS:
    return impl
  raise ValueError(f"conv impl must be 'auto', 'lax' or 'matmul', got {impl!r}")


class _Geometry(NamedTuple):
  """Static shape of one convolution: square kernel size, stride and explicit padding."""
  k: int
  s: int
  pads_h: tuple[int, int]
  pads_w: tuple[int, int]

  def out_hw(self, h: int, w: int) -> tuple[int, int]:
    return ((h + sum(self.pads_h) - self.k) // self.s + 1,
            (w + sum(self.pads_w) - self.k) // self.s + 1)

  def swapped(self) -> "_Geometry":
    # Stride 1 only: the input gradient of a conv is the conv of the output gradient with the
    # flipped kernel and the padding mirrored.
    return _Geometry(self.k, self.s, self.pads_h[::-1], self.pads_w[::-1])


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
  # TF 'SAME': the odd padding pixel goes after.
  total = max((-(-size // s) - 1) * s + k - size, 0)
  return total // 2, total - total // 2


def _im2col(x: jax.Array, g: _Geometry) -> jax.Array:
  """(N, H, W, C) -> (N, Ho, Wo, k*k, C): the input patch under every output pixel."""
  n, h, w, c = x.shape
  ho, wo = g.out_hw(h, w)
  xp = jnp.pad(x, ((0, 0), g.pads_h, g.pads_w, (0, 0)))
  taps = [
      jax.lax.slice(xp, (0, a, b, 0),
                    (n, a + g.s * (ho - 1) + 1, b + g.s * (wo - 1) + 1, c), (1, g.s, g.s, 1))
      for a in range(g.k) for b in range(g.k)
  ]
  return jnp.stack(taps, axis=3)


def _col2im(cols: jax.Array, g: _Geometry, x_shape: tuple[int, ...]) -> jax.Array:
  """Transpose of `_im2col`: adds every patch entry back onto the input pixel it came from."""
  (x,) = jax.linear_transpose(functools.partial(_im2col, g=g),
                              jax.ShapeDtypeStruct(x_shape, cols.dtype))(cols)
  return x


def _flip_t(kernel: jax.Array) -> jax.Array:
  """(kh, kw, Cin, Cout) -> (kh, kw, Cout, Cin) rotated by 180 degrees."""
  return jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))


def _einsum(spec: str, a: jax.Array, b: jax.Array, out_dtype: Any) -> jax.Array:
  # Low-precision inputs accumulate in float32; float32 stays at full precision.
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32,
                    precision=jax.lax.Precision.HIGHEST).astype(out_dtype)


def _input_grad(dy: jax.Array, kernel: jax.Array, g: _Geometry,
                x_shape: tuple[int, ...]) -> jax.Array:
  """Gradient w.r.t. the input: one matmul to per-tap contributions, then col2im."""
  k, _, cin, cout = kernel.shape
  dcols = _einsum("nhwo,tco->nhwtc", dy, kernel.reshape(k * k, cin, cout), dy.dtype)
  return _col2im(dcols, g, x_shape)


def _forward(x: jax.Array, kernel: jax.Array, g: _Geometry) -> jax.Array:
  k, _, cin, cout = kernel.shape
  if g.s == 1 and cin > cout:
    # Matmul first, then shift-add: the per-tap intermediate has Cout < Cin channels.
    return _input_grad(x, _flip_t(kernel), g.swapped(), x.shape[:3] + (cout,))
  return _einsum("nhwtc,tco->nhwo", _im2col(x, g), kernel.reshape(k * k, cin, cout), x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_conv(x: jax.Array, kernel: jax.Array, g: _Geometry) -> jax.Array:
  return _forward(x, kernel, g)


def _matmul_conv_fwd(x, kernel, g):
  # Only the inputs are kept: im2col is recomputed in the backward pass, which costs one
  # memory pass instead of holding a k*k times larger array until then.
  return _forward(x, kernel, g), (x, kernel)


def _matmul_conv_bwd(g, res, dy):
  x, kernel = res
  k, _, cin, cout = kernel.shape
  if g.s == 1:
    dx = _forward(dy, _flip_t(kernel), g.swapped())
  else:
    dx = _input_grad(dy, kernel, g, x.shape)
  if g.s == 1 and cout < cin:
    # dW[a, b] = x^T @ dy shifted by (a, b): im2col the smaller of x and dy.
    dk = _einsum("nhwc,nhwto->tco", x, _im2col(dy, g.swapped()), kernel.dtype)
    dk = dk.reshape(k, k, cin, cout)[::-1, ::-1]
  else:
    dk = _einsum("nhwtc,nhwo->tco", _im2col(x, g), dy, kernel.dtype).reshape(k, k, cin, cout)
  return dx, dk


_matmul_conv.defvjp(_matmul_conv_fwd, _matmul_conv_bwd)


# Winograd F(4x4, 3x3) (Lavin & Gray, 2016): a 6x6 input tile B^T d B times the transformed
# kernel G g G^T, elementwise per tile position, gives a 4x4 output tile by A^T (.) A. That is
# 36 instead of 144 multiplies per output tile, and the 36 products are batched dense matmuls
# over all tiles, so a 3x3 conv costs about a quarter of its direct FLOPs.
_WINO_M = 4  # output tile size
_WINO_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
            (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_WINO_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
           (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_WINO_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))
_WINO_A = len(_WINO_BT)  # input tile size, 6
# Below this many input or output channels the (memory-bound) tile transforms cost more than
# the matmuls save; measured on XLA:CPU, ConvLSTM gate convs (96..192 -> 128..512) gain 2-4x.
_WINO_MIN_CHANNELS = 64


def _lincomb(coefs: tuple[float, ...], parts: list[jax.Array]) -> jax.Array:
  """sum(c * p), skipping zero coefficients so XLA fuses it into one cheap elementwise pass."""
  terms = [p if c == 1 else -p if c == -1 else c * p for c, p in zip(coefs, parts) if c != 0]
  return functools.reduce(jnp.add, terms)


def _num_tiles(size: int) -> int:
  return -(-size // _WINO_M)


def _wino_input(x: jax.Array) -> jax.Array:
  """(N, H, W, C) -> (36, tiles, C): B^T d B for every overlapping 6x6 input tile."""
  n, h, w, c = x.shape
  th, tw = _num_tiles(h), _num_tiles(w)
  # 'SAME' padding of 1, plus zeros up to whole tiles (those outputs are cropped away).
  xp = jnp.pad(x, ((0, 0), (1, 1 + th * _WINO_M - h), (1, 1 + tw * _WINO_M - w), (0, 0)))

  def windows(a: jax.Array, axis: int, count: int) -> list[jax.Array]:
    return [jax.lax.slice_in_dim(a, r, r + _WINO_M * (count - 1) + 1, _WINO_M, axis)
            for r in range(_WINO_A)]

  rows = windows(xp, 1, th)
  tiles = []
  for bt_row in _WINO_BT:
    cols = windows(_lincomb(bt_row, rows), 2, tw)
    tiles.extend(_lincomb(bt_col, cols) for bt_col in _WINO_BT)
  return jnp.stack(tiles).reshape(_WINO_A * _WINO_A, n * th * tw, c)


def _wino_output(m: jax.Array, n: int, h: int, w: int) -> jax.Array:
  """(36, tiles, C) -> (N, H, W, C): A^T m A, the 4x4 output tiles laid back into the image."""
  th, tw = _num_tiles(h), _num_tiles(w)
  m = m.reshape(_WINO_A, _WINO_A, n, th, tw, -1)
  rows = [_lincomb(at_row, list(m)) for at_row in _WINO_AT]  # each (6, n, th, tw, C)
  out = jnp.stack([jnp.stack([_lincomb(at_col, list(r)) for at_col in _WINO_AT], axis=3)
                   for r in rows], axis=2)  # (n, th, 4, tw, 4, C)
  return out.reshape(n, th * _WINO_M, tw * _WINO_M, -1)[:, :h, :w]


def _wino_output_grad(dy: jax.Array) -> jax.Array:
  """Transpose of `_wino_output`: (N, H, W, C) -> (36, tiles, C), A dy_tile A^T per tile."""
  n, h, w, c = dy.shape
  th, tw = _num_tiles(h), _num_tiles(w)
  d = jnp.pad(dy, ((0, 0), (0, th * _WINO_M - h), (0, tw * _WINO_M - w), (0, 0)))
  d = d.reshape(n, th, _WINO_M, tw, _WINO_M, c)
  at_cols = list(zip(*_WINO_AT))  # rows of A
  rows = [_lincomb(a_row, [d[:, :, p] for p in range(_WINO_M)]) for a_row in at_cols]
  tiles = [_lincomb(a_col, [r[:, :, :, q] for q in range(_WINO_M)])
           for r in rows for a_col in at_cols]
  return jnp.stack(tiles).reshape(_WINO_A * _WINO_A, n * th * tw, c)


def _wino_forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
  g = jnp.asarray(_WINO_G, jnp.float32)
  u = jnp.einsum("xi,ijco,yj->xyco", g, kernel.astype(jnp.float32), g,
                 precision=jax.lax.Precision.HIGHEST)
  u = u.reshape(_WINO_A * _WINO_A, *kernel.shape[2:]).astype(x.dtype)
  m = _einsum("tpc,tco->tpo", _wino_input(x), u, jnp.float32)
  n, h, w, _ = x.shape
  return _wino_output(m, n, h, w).astype(x.dtype)


@jax.custom_vjp
def _wino_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return _wino_forward(x, kernel)


def _wino_conv_fwd(x, kernel):
  return _wino_forward(x, kernel), (x, kernel)


def _wino_conv_bwd(res, dy):
  # Autodiff through the strided tile slicing makes XLA:CPU scatter; these are all matmuls.
  x, kernel = res
  dx = _wino_forward(dy, _flip_t(kernel))
  du = _einsum("tpc,tpo->tco", _wino_input(x), _wino_output_grad(dy), jnp.float32)
  g = jnp.asarray(_WINO_G, jnp.float32)
  dk = jnp.einsum("xi,xyco,yj->ijco", g, du.reshape(_WINO_A, _WINO_A, *du.shape[1:]), g,
                  precision=jax.lax.Precision.HIGHEST)
  return dx, dk.astype(kernel.dtype)


_wino_conv.defvjp(_wino_conv_fwd, _wino_conv_bwd)


def matmul_route(kernel_shape: tuple[int, ...], strides: int, dtype: Any) -> str:
  """Which algorithm impl="matmul" uses for this conv: "winograd" or "im2col"."""
  k, _, cin, cout = kernel_shape
  # Winograd only in float32: its tile transforms amplify rounding too much for bfloat16.
  if (k == 3 and strides == 1 and min(cin, cout) >= _WINO_MIN_CHANNELS
      and jnp.dtype(dtype) == jnp.float32):
    return "winograd"
  return "im2col"


def conv2d(x: jax.Array, kernel: jax.Array, *, strides: int = 1,
           impl: str = "lax") -> jax.Array:
  """TF 'SAME' convolution of x (N, H, W, Cin) with kernel (k, k, Cin, Cout).

  impl: "lax", "matmul" (im2col or Winograd matmuls with a custom VJP, for XLA:CPU) or "auto".
  """
  impl = resolve_conv_impl(impl)
  if impl == "lax":
    # lax "SAME" puts the odd padding pixel after, exactly as TF does.
    return jax.lax.conv_general_dilated(
        x, kernel, (strides, strides), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  if x.dtype != kernel.dtype:
    raise ValueError(f"matmul conv needs one dtype, got {x.dtype} input, {kernel.dtype} kernel")
  k = kernel.shape[0]
  if kernel.shape[1] != k:
    raise ValueError(f"matmul conv needs a square kernel, got {kernel.shape[:2]}")
  if matmul_route(kernel.shape, strides, x.dtype) == "winograd":
    return _wino_conv(x, kernel)
  g = _Geometry(k, strides, _same_pads(x.shape[1], k, strides), _same_pads(x.shape[2], k, strides))
  return _matmul_conv(x, kernel, g)


class Conv(nn.Module):
  """Keras-style Conv2D ('same' padding, glorot-uniform kernel, zero bias)."""
  features: int
  kernel_size: int = 3
  strides: int = 1
  use_bias: bool = True
  impl: str = "lax"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.glorot_uniform()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init,
                        (k, k, x.shape[-1], self.features), self.param_dtype)
    y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype),
               strides=self.strides, impl=self.impl)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y
