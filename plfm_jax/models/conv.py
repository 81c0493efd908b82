"""The one 2-D convolution every PLFM module uses.

Two implementations of a TF/Keras 'SAME' NHWC x HWIO convolution:
- "lax": `jax.lax.conv_general_dilated`, the right choice on GPU/TPU.
- "matmul": dense matmuls with a custom VJP, for XLA:CPU, whose convolution backward pass runs
  at a fraction of its matmul speed. Stride-1 float32 3x3 and 4x4 convs with >= 64 channels
  on both sides over >= 256 output tiles use Winograd F(4x4, 3x3) / F(3x3, 4x4): a quarter
  of the multiplies, as 36 batched matmuls. Strided convs over >= 1024 output pixels stay on
  lax.conv (measured as fast there). Everything else uses im2col (or col2im) around one matmul
  per pass. See `matmul_route`; `upsample_conv2d` fuses a nearest 2x upsampling.
"""

import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_IMPLS = ("lax", "matmul")


def resolve_conv_impl(impl: str) -> str:
  """Maps "auto" to the fastest implementation for the default backend."""
  if impl == "auto":
    return "matmul" if jax.default_backend() == "cpu" else "lax"
  if impl in _IMPLS:
    return impl
  raise ValueError(f"conv impl must be 'auto', 'lax' or 'matmul', got {impl!r}")


class _Geometry(NamedTuple):
  """Static shape of one convolution: square kernel size, stride and explicit padding.

  Stride-1 geometries always pad k - 1 in total ('SAME'), so their output is the input's size.
  """
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


def _matmul_conv_fwd(x: jax.Array, kernel: jax.Array,
                     g: _Geometry) -> tuple[jax.Array, tuple[jax.Array, ...]]:
  # Only the inputs are kept: im2col is recomputed in the backward pass, which costs one
  # memory pass instead of holding a k*k times larger array until then.
  return _forward(x, kernel, g), (x, kernel)


def _matmul_conv_bwd(g: _Geometry, res: tuple[jax.Array, ...],
                     dy: jax.Array) -> tuple[jax.Array, jax.Array]:
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


# Winograd F(m x m, k x k) (Lavin & Gray, 2016): a 6x6 input tile B^T d B times the transformed
# kernel G g G^T, elementwise per tile position, gives an m x m output tile by A^T (.) A, with
# m = 7 - k. That is 36 instead of m*m*k*k multiplies per output tile (a 4x cut for both 3x3
# and 4x4 kernels), and the 36 products are batched dense matmuls over all tiles.
_WINO_A = 6  # input tile size; larger tiles cut more FLOPs but lose float32 accuracy
# Below this many input or output channels the (memory-bound) tile transforms cost more than
# the matmuls save; measured on XLA:CPU, ConvLSTM gate convs (96..192 -> 128..512) gain 2-4x.
_WINO_MIN_CHANNELS = 64
# Transforming the kernel to 36 x Cin x Cout costs as much memory traffic as the matmuls over
# a few hundred tiles: a 2048 -> 2048 conv over 16 x 16 ran 3x slower than lax.
_WINO_MIN_TILES = 256
# Strided convs with at least this many output pixels stay on lax.conv: there XLA:CPU's strided
# backward ran as fast as im2col or faster (4x4/2 128 -> 256 over 128 x 128: 0.6-0.75x for
# im2col), while below it im2col won (1024 -> 1024 over 16 x 16: 1.5x).
_LAX_MIN_STRIDED_PIXELS = 1024
_Matrix = tuple[tuple[float, ...], ...]


@functools.cache
def _toom_cook(k: int) -> tuple[_Matrix, _Matrix, _Matrix]:
  """B^T (6, 6), G (6, k), A^T (m, 6) for F(m, k), interpolating at 0, +-1, +-2 and infinity."""
  m = _WINO_A + 1 - k
  points = np.array([0.0, 1.0, -1.0, 2.0, -2.0])

  def vandermonde(n: int) -> np.ndarray:
    # Rows evaluate a degree < n polynomial at each point; the last row takes its top
    # coefficient (the point at infinity).
    return np.vstack([points[:, None] ** np.arange(n), np.eye(n)[-1]])

  # Correlation y = T(g) d is the transpose of polynomial multiplication, which is
  # evaluate-multiply-interpolate: y = V_m^T [(V_k g) * (V^-T d)].
  bt, g, at = np.linalg.inv(vandermonde(_WINO_A)).T, vandermonde(k), vandermonde(m).T
  # Moving the Lagrange denominators from B^T into G makes B^T integral (cheaper, exact).
  scale = np.array([np.prod([p - q for q in points if q != p]) for p in points] + [1.0])
  bt, g = np.round(bt * scale[:, None]), g / scale[:, None]
  as_tuple = lambda a: tuple(tuple(float(v) for v in row) for row in a)
  return as_tuple(bt), as_tuple(g), as_tuple(at)


def _lincomb(coefs: tuple[float, ...], parts: list[jax.Array]) -> jax.Array:
  """sum(c * p), skipping zero coefficients so XLA fuses it into one cheap elementwise pass."""
  terms = [p if c == 1 else -p if c == -1 else c * p for c, p in zip(coefs, parts) if c != 0]
  return functools.reduce(jnp.add, terms)


def _wino_input(x: jax.Array, k: int, pad_before: int) -> jax.Array:
  """(N, H, W, C) -> (36, tiles, C): B^T d B for every overlapping 6x6 input tile."""
  bt, _, _ = _toom_cook(k)
  m = _WINO_A + 1 - k
  n, h, w, c = x.shape
  th, tw = -(-h // m), -(-w // m)
  # Zeros after the image up to whole tiles: those outputs are cropped away.
  xp = jnp.pad(x, ((0, 0), (pad_before, th * m + k - 1 - h - pad_before),
                   (pad_before, tw * m + k - 1 - w - pad_before), (0, 0)))

  def windows(a: jax.Array, axis: int, count: int) -> list[jax.Array]:
    return [jax.lax.slice_in_dim(a, r, r + m * (count - 1) + 1, m, axis) for r in range(_WINO_A)]

  rows = windows(xp, 1, th)
  tiles = []
  for bt_row in bt:
    cols = windows(_lincomb(bt_row, rows), 2, tw)
    tiles.extend(_lincomb(bt_col, cols) for bt_col in bt)
  return jnp.stack(tiles).reshape(_WINO_A * _WINO_A, n * th * tw, c)


def _wino_output(prod: jax.Array, k: int, n: int, h: int, w: int) -> jax.Array:
  """(36, tiles, C) -> (N, H, W, C): A^T prod A, the m x m output tiles laid into the image."""
  _, _, at = _toom_cook(k)
  m = _WINO_A + 1 - k
  th, tw = -(-h // m), -(-w // m)
  prod = prod.reshape(_WINO_A, _WINO_A, n, th, tw, -1)
  rows = [_lincomb(at_row, list(prod)) for at_row in at]  # each (6, n, th, tw, C)
  out = jnp.stack([jnp.stack([_lincomb(at_col, list(r)) for at_col in at], axis=3)
                   for r in rows], axis=2)  # (n, th, m, tw, m, C)
  return out.reshape(n, th * m, tw * m, -1)[:, :h, :w]


def _wino_output_grad(dy: jax.Array, k: int) -> jax.Array:
  """Transpose of `_wino_output`: (N, H, W, C) -> (36, tiles, C), A dy_tile A^T per tile."""
  _, _, at = _toom_cook(k)
  m = _WINO_A + 1 - k
  n, h, w, c = dy.shape
  th, tw = -(-h // m), -(-w // m)
  d = jnp.pad(dy, ((0, 0), (0, th * m - h), (0, tw * m - w), (0, 0)))
  d = d.reshape(n, th, m, tw, m, c)
  a_rows = list(zip(*at))
  rows = [_lincomb(a_row, [d[:, :, p] for p in range(m)]) for a_row in a_rows]
  tiles = [_lincomb(a_col, [r[:, :, :, q] for q in range(m)]) for r in rows for a_col in a_rows]
  return jnp.stack(tiles).reshape(_WINO_A * _WINO_A, n * th * tw, c)


def _wino_forward(x: jax.Array, kernel: jax.Array, pad_before: int) -> jax.Array:
  # float32 only (see `matmul_route`), so no accumulation dtype juggling.
  k = kernel.shape[0]
  g = jnp.asarray(_toom_cook(k)[1], x.dtype)
  u = jnp.einsum("xi,ijco,yj->xyco", g, kernel, g, precision=jax.lax.Precision.HIGHEST)
  u = u.reshape(_WINO_A * _WINO_A, *kernel.shape[2:])
  prod = _einsum("tpc,tco->tpo", _wino_input(x, k, pad_before), u, x.dtype)
  return _wino_output(prod, k, *x.shape[:3])


@jax.custom_vjp
def _wino_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 TF 'SAME' conv by Winograd; the odd padding pixel of even kernels goes after."""
  return _wino_forward(x, kernel, (kernel.shape[0] - 1) // 2)


def _wino_conv_fwd(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
  return _wino_forward(x, kernel, (kernel.shape[0] - 1) // 2), (x, kernel)


def _wino_conv_bwd(res: tuple[jax.Array, ...], dy: jax.Array) -> tuple[jax.Array, jax.Array]:
  # Autodiff through the strided tile slicing makes XLA:CPU scatter; these are all matmuls.
  x, kernel = res
  k = kernel.shape[0]
  pad_before = (k - 1) // 2
  # The input gradient is the conv of dy with the flipped kernel and mirrored padding.
  dx = _wino_forward(dy, _flip_t(kernel), k - 1 - pad_before)
  du = _einsum("tpc,tpo->tco", _wino_input(x, k, pad_before), _wino_output_grad(dy, k),
               kernel.dtype)
  g = jnp.asarray(_toom_cook(k)[1], kernel.dtype)
  dk = jnp.einsum("xi,xyco,yj->ijco", g, du.reshape(_WINO_A, _WINO_A, *du.shape[1:]), g,
                  precision=jax.lax.Precision.HIGHEST)
  return dx, dk


_wino_conv.defvjp(_wino_conv_fwd, _wino_conv_bwd)


def matmul_route(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], strides: int,
                 dtype: Any) -> str:
  """Which algorithm impl="matmul" uses for this conv: "winograd", "im2col" or "lax"."""
  n, h, w, _ = x_shape
  k, _, cin, cout = kernel_shape
  if strides > 1 and n * -(-h // strides) * -(-w // strides) >= _LAX_MIN_STRIDED_PIXELS:
    return "lax"
  m = _WINO_A + 1 - k
  # Winograd only in float32: its tile transforms amplify rounding too much for bfloat16.
  if (k in (3, 4) and strides == 1 and jnp.dtype(dtype) == jnp.float32
      and min(cin, cout) >= _WINO_MIN_CHANNELS
      and n * -(-h // m) * -(-w // m) >= _WINO_MIN_TILES):
    return "winograd"
  return "im2col"


def conv2d(x: jax.Array, kernel: jax.Array, *, strides: int = 1,
           impl: str = "lax") -> jax.Array:
  """TF 'SAME' convolution of x (N, H, W, Cin) with kernel (k, k, Cin, Cout).

  impl: "lax", "matmul" (the XLA:CPU-tuned path, see `matmul_route`) or "auto".
  """
  route = "lax"
  if resolve_conv_impl(impl) == "matmul":
    if x.dtype != kernel.dtype:
      raise ValueError(f"matmul conv needs one dtype, got {x.dtype} input, {kernel.dtype} kernel")
    if kernel.shape[0] != kernel.shape[1]:
      raise ValueError(f"matmul conv needs a square kernel, got {kernel.shape[:2]}")
    route = matmul_route(x.shape, kernel.shape, strides, x.dtype)
  if route == "lax":
    # lax "SAME" puts the odd padding pixel after, exactly as TF does.
    return jax.lax.conv_general_dilated(
        x, kernel, (strides, strides), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  if route == "winograd":
    return _wino_conv(x, kernel)
  k = kernel.shape[0]
  g = _Geometry(k, strides, _same_pads(x.shape[1], k, strides), _same_pads(x.shape[2], k, strides))
  return _matmul_conv(x, kernel, g)


# Below this many input pixels upsample_conv2d upsamples and convolves as written: the fused
# kernel (4x the outputs) then costs more memory traffic than the FLOPs it saves (2048 -> 512
# from 16 x 16 ran 0.76x, 512 -> 128 from 64 x 64 2.3x).
_FUSED_UPSAMPLE_MIN_PIXELS = 1024


def _upsample_taps(k: int) -> np.ndarray:
  """(2, k_small, k) 0/1 matrix: which kernel taps fall on which low-resolution pixel.

  After nearest 2x upsampling, output row 2i + p under kernel tap a (TF 'SAME', pad_before
  (k - 1) // 2) reads input row i + floor((p + a - pad_before) / 2). The offsets span
  [lo, hi] with -lo, hi exactly the 'SAME' padding of a k_small = hi - lo + 1 kernel.
  """
  pad_before = (k - 1) // 2
  offsets = [[(p + a - pad_before) // 2 for a in range(k)] for p in range(2)]
  lo, hi = min(map(min, offsets)), max(map(max, offsets))
  return np.array([[[float(o == d) for o in row] for d in range(lo, hi + 1)] for row in offsets])


def upsample2x(x: jax.Array) -> jax.Array:
  """Keras UpSampling2D(2): nearest neighbour, (B, H, W, C) -> (B, 2H, 2W, C)."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


def upsample_conv2d(x: jax.Array, kernel: jax.Array, *, impl: str = "lax") -> jax.Array:
  """conv2d(nearest 2x upsampling of x, kernel), stride 1, without the 4x larger input.

  Each of the four output phases (row, column parity) is a small conv of x whose kernel sums
  the taps that land on the same input pixel (3x3 for a 4x4 kernel), so all four are one conv
  with 4 * Cout outputs followed by depth-to-space: a 4x4 conv then costs 36 instead of 64
  multiplies per low-resolution pixel, and as a 3x3 conv it can run as Winograd. Small inputs
  are upsampled and convolved as written, which is faster there.
  """
  n, h, w, _ = x.shape
  if n * h * w < _FUSED_UPSAMPLE_MIN_PIXELS:
    return conv2d(upsample2x(x), kernel, impl=impl)
  k, _, cin, cout = kernel.shape
  taps = jnp.asarray(_upsample_taps(k), kernel.dtype)
  small = jnp.einsum("pia,qjb,abco->ijcpqo", taps, taps, kernel,
                     precision=jax.lax.Precision.HIGHEST)
  ks = taps.shape[1]
  y = conv2d(x, small.reshape(ks, ks, cin, 4 * cout), impl=impl)
  y = y.reshape(n, h, w, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(n, 2 * h, 2 * w, cout)


class Conv(nn.Module):
  """Keras-style Conv2D ('same' padding, glorot-uniform kernel, zero bias).

  upsample=True applies Keras UpSampling2D(2) (nearest) first, fused (`upsample_conv2d`): the
  same parameters and result as upsampling then convolving, at a fraction of the cost.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  use_bias: bool = True
  impl: str = "lax"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.glorot_uniform()
  bias_init: Callable = nn.initializers.zeros
  upsample: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init,
                        (k, k, x.shape[-1], self.features), self.param_dtype)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if self.upsample:
      if self.strides != 1:
        raise ValueError(f"upsample needs strides=1, got {self.strides}")
      y = upsample_conv2d(x, kernel, impl=self.impl)
    else:
      y = conv2d(x, kernel, strides=self.strides, impl=self.impl)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y
