"""The one 2-D convolution every PLFM module uses.

Two implementations of a TF/Keras 'SAME' NHWC x HWIO convolution:
- "lax": `jax.lax.conv_general_dilated`, the right choice on GPU/TPU.
- "matmul": dense matmuls with a custom VJP, for XLA:CPU, whose convolution backward pass runs
  at a fraction of its matmul speed. Stride-1 float32 3x3 and 4x4 convs with >= 64 channels
  on both sides over >= 1024 output pixels use Winograd F(6x6, 3x3) / F(5x5, 4x4): a fifth of
  the multiplies (a third for 4x4), as 64 batched matmuls. Small convs (images up to 64 x 64
  with few channels) and strided convs over >= 1024 output pixels stay on lax.conv (measured
  as fast there). Everything else uses im2col (or col2im) around one matmul per pass. See
  `matmul_route`; `upsample_conv2d` fuses a nearest 2x upsampling.
"""

import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_IMPLS = ("lax", "matmul")


def resolve_conv_impl(impl: str, *, training: bool = True) -> str:
  """Maps "auto" to the fastest implementation for the default backend: on CPU the matmul
  routes for training, whose gain is their gradients (XLA:CPU's own convolution gradients are
  many times slower), and XLA's convolutions for inference, whose forward pass alone is faster
  (1.1x at 64 px to 2.3x at 512 px windows, 2 AMD EPYC cores); elsewhere XLA's convolutions."""
  if impl == "auto":
    return "matmul" if training and jax.default_backend() == "cpu" else "lax"
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


# Winograd F(m x m, k x k) (Lavin & Gray, 2016): an 8x8 input tile B^T d B times the transformed
# kernel G g G^T, elementwise per tile position, gives an m x m output tile by A^T (.) A, with
# m = 9 - k. That is 64 instead of m*m*k*k multiplies per output tile (5.1x fewer for 3x3
# kernels, 3.1x for 4x4), and the 64 products are batched dense matmuls over all tiles.
#
# Layout: a transformed tensor is (64, tiles, C), position index 8 * row + column of the 8x8
# tile, tiles in (N, tile row, tile column) order. The transforms are written for XLA:CPU, where
# a fusion that stacks many arithmetic pieces recomputes shared work per piece and selects an
# operand per element: the input transform is two separable passes (columns, then rows) whose
# pieces are plain strided windows, and the output transform and its transpose are one small
# dense matmul each (kron(A^T, A^T) against all tiles at once) plus a transpose.

# Input tile size. 8 (interpolation points 0, +-1, +-2, +-1/2) ran the ConvLSTM convs 5-28%
# faster than 6 at twice the rounding error (about 1e-5 of the output's scale, float32).
_WINO_A = 8
# Below this many input or output channels the (memory-bound) tile transforms cost more than
# the matmuls save; measured on XLA:CPU, ConvLSTM gate convs (96..192 -> 128..512) gain 2-4x.
_WINO_MIN_CHANNELS = 64
# Transforming the kernel to 64 x Cin x Cout and the matmuls over few tiles cost more than the
# multiplies saved on small images: a 2048 -> 2048 conv over 16 x 16 ran 2x slower than
# im2col, 512 -> 512 over 64 x 64 2.8x faster (forward + backward). Lowering the bound from
# 4096 to 1024 made whole GAN train steps 10-15% faster at batch 1 and 8, head steps 8%.
_WINO_MIN_PIXELS = 1024
# Strided convs with at least this many output pixels stay on lax.conv: there XLA:CPU's strided
# backward ran as fast as im2col or faster (4x4/2 128 -> 256 over 128 x 128: 0.6-0.75x for
# im2col), while below it im2col won (1024 -> 1024 over 16 x 16: 1.5x).
_LAX_MIN_STRIDED_PIXELS = 1024
# Small convs (images up to 64 x 64, Cin * Cout up to 32 * 64) stay on lax.conv as well: there
# it ran forward + backward as fast as im2col or up to 2.5x faster, and compiles in a third of
# the time (the demo's and the tests' models).
_LAX_MAX_SMALL_PIXELS = 64 * 64
_LAX_MAX_SMALL_CHANNELS = 32 * 64
_Matrix = tuple[tuple[float, ...], ...]


@functools.cache
def _toom_cook(k: int) -> tuple[_Matrix, _Matrix, _Matrix]:
  """B^T (8, 8), G (8, k), A^T (m, 8) for F(m, k), interpolating at 0, +-1, +-2, +-1/2 and
  infinity."""
  m = _WINO_A + 1 - k
  points = np.array([0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5])

  def vandermonde(n: int) -> np.ndarray:
    # Rows evaluate a degree < n polynomial at each point; the last row takes its top
    # coefficient (the point at infinity).
    return np.vstack([points[:, None] ** np.arange(n), np.eye(n)[-1]])

  # Correlation y = T(g) d is the transpose of polynomial multiplication, which is
  # evaluate-multiply-interpolate: y = V_m^T [(V_k g) * (V^-T d)].
  bt, g, at = np.linalg.inv(vandermonde(_WINO_A)).T, vandermonde(k), vandermonde(m).T
  # Moving the Lagrange denominators from B^T into G keeps B^T's entries small and exact in
  # binary (multiples of 1/4).
  scale = np.array([np.prod([p - q for q in points if q != p]) for p in points] + [1.0])
  bt, g = np.round(bt * scale[:, None] * 4) / 4, g / scale[:, None]
  as_tuple = lambda a: tuple(tuple(float(v) for v in row) for row in a)
  return as_tuple(bt), as_tuple(g), as_tuple(at)


def _lincomb(coefs: tuple[float, ...], parts: list[jax.Array]) -> jax.Array:
  """sum(c * p), skipping zero coefficients so XLA fuses it into one cheap elementwise pass."""
  terms = [p if c == 1 else -p if c == -1 else c * p for c, p in zip(coefs, parts) if c != 0]
  return functools.reduce(jnp.add, terms)


def _tiling(k: int, h: int, w: int) -> tuple[int, int, int]:
  """(m, tile rows, tile columns) of F(m x m, k x k) over an h x w output."""
  m = _WINO_A + 1 - k
  return m, -(-h // m), -(-w // m)


def _windows(x: jax.Array, axis: int, m: int, count: int) -> list[jax.Array]:
  """The 8 strided views x[r + m * j] (j < count) along `axis`, r = 0..7."""
  return [jax.lax.slice_in_dim(x, r, r + m * (count - 1) + 1, m, axis) for r in range(_WINO_A)]


def _overlap_add(parts: list[jax.Array], axis: int, m: int) -> jax.Array:
  """Transpose of `_windows`: adds parts[r][j] at position r + m * j along `axis`.

  Tiles overlap by 8 - m <= m positions, so block j (positions m*j .. m*j + m - 1) is
  parts[p][j] plus, for p < 8 - m, parts[p + m][j - 1]: two shifted stacks, no scatter.
  """
  def blocks(pieces: list[jax.Array], shift: int) -> jax.Array:
    pads = [(0, 0)] * (pieces[0].ndim + 1)
    pads[axis] = (shift, 1 - shift)
    return jnp.pad(jnp.stack(pieces, axis=axis + 1), pads)

  zeros = [jnp.zeros_like(parts[0])] * (2 * m - _WINO_A)
  out = blocks(parts[:m], 0) + blocks(parts[m:] + zeros, 1)
  shape = list(out.shape)
  shape[axis:axis + 2] = [shape[axis] * shape[axis + 1]]
  return jax.lax.slice_in_dim(out.reshape(shape), 0, m * (parts[0].shape[axis] - 1) + _WINO_A,
                              axis=axis)


def _stacked_lincombs(mat: _Matrix, parts: list[jax.Array]) -> jax.Array:
  return jnp.stack([_lincomb(row, parts) for row in mat])


def _wino_input(x: jax.Array, k: int, pad_before: int) -> jax.Array:
  """(N, H, W, C) -> (64, tiles, C): B^T d B for every overlapping 8x8 input tile."""
  bt, _, _ = _toom_cook(k)
  n, h, w, c = x.shape
  m, th, tw = _tiling(k, h, w)
  # Zeros after the image up to whole tiles: those outputs are cropped away.
  xp = jnp.pad(x, ((0, 0), (pad_before, th * m + k - 1 - h - pad_before),
                   (pad_before, tw * m + k - 1 - w - pad_before), (0, 0)))
  cols = _stacked_lincombs(bt, _windows(xp, 2, m, tw))  # (8 col, N, H + k - 1, tw, C)
  tiles = _stacked_lincombs(bt, _windows(cols, 2, m, th))  # (8 row, 8 col, N, th, tw, C)
  return tiles.reshape(_WINO_A * _WINO_A, n * th * tw, c)


def _wino_input_transpose(v: jax.Array, k: int, pad_before: int,
                          x_shape: tuple[int, ...]) -> jax.Array:
  """Transpose of `_wino_input`: (64, tiles, C) -> (N, H, W, C), overlapping tiles added."""
  b = tuple(zip(*_toom_cook(k)[0]))
  n, h, w, c = x_shape
  m, th, tw = _tiling(k, h, w)
  v = v.reshape(_WINO_A, _WINO_A, n, th, tw, c)
  rows = _overlap_add(list(_stacked_lincombs(b, list(v))), 2, m)  # (8 col, N, H', tw, C)
  x = _overlap_add(list(_stacked_lincombs(b, list(rows))), 2, m)  # (N, H', W', C)
  return x[:, pad_before:pad_before + h, pad_before:pad_before + w]


def _output_matrix(k: int, dtype: Any) -> jax.Array:
  """kron(A^T, A^T): (m*m output pixels, 64 tile positions), both row-major."""
  at = np.array(_toom_cook(k)[2])
  return jnp.asarray(np.kron(at, at), dtype)


def _small_matmul(mat: jax.Array, x: jax.Array) -> jax.Array:
  """mat (P, Q) applied along the leading axis of x (Q, ...) -> (P, ...)."""
  y = jnp.dot(mat, x.reshape(x.shape[0], -1), precision=jax.lax.Precision.HIGHEST)
  return y.reshape(mat.shape[0], *x.shape[1:])


def _wino_output(prod: jax.Array, k: int, n: int, h: int, w: int) -> jax.Array:
  """(64, tiles, C) -> (N, H, W, C): A^T prod A, the m x m output tiles laid into the image."""
  m, th, tw = _tiling(k, h, w)
  out = _small_matmul(_output_matrix(k, prod.dtype), prod).reshape(m, m, n, th, tw, -1)
  out = out.transpose(2, 3, 0, 4, 1, 5)  # (N, th, m, tw, m, C)
  return out.reshape(n, th * m, tw * m, -1)[:, :h, :w]


def _wino_output_transpose(dy: jax.Array, k: int) -> jax.Array:
  """Transpose of `_wino_output`: (N, H, W, C) -> (64, tiles, C), A dy_tile A^T per tile."""
  n, h, w, c = dy.shape
  m, th, tw = _tiling(k, h, w)
  d = jnp.pad(dy, ((0, 0), (0, th * m - h), (0, tw * m - w), (0, 0)))
  d = d.reshape(n, th, m, tw, m, c).transpose(2, 4, 0, 1, 3, 5)  # (m, m, N, th, tw, C)
  return _small_matmul(_output_matrix(k, dy.dtype).T, d.reshape(m * m, n * th * tw, c))


def _kernel_matrix(k: int, dtype: Any) -> jax.Array:
  """kron(G, G): (64 tile positions, k*k kernel taps), both row-major."""
  g = np.array(_toom_cook(k)[1])
  return jnp.asarray(np.kron(g, g), dtype)


def _wino_kernel(kernel: jax.Array) -> jax.Array:
  """(k, k, Cin, Cout) -> (64, Cin, Cout): G g G^T per channel pair."""
  k = kernel.shape[0]
  return _small_matmul(_kernel_matrix(k, kernel.dtype), kernel.reshape(k * k, *kernel.shape[2:]))


def _wino_kernel_transpose(du: jax.Array, k: int) -> jax.Array:
  """Transpose of `_wino_kernel`: (64, Cin, Cout) -> (k, k, Cin, Cout)."""
  return _small_matmul(_kernel_matrix(k, du.dtype).T, du).reshape(k, k, *du.shape[1:])


# The transformed tensors are 1.8x the image per channel; one conv over a large batch would
# hold several at once. Batches beyond this many pixels run in sequential chunks (`lax.map`)
# of at most this size, which bounds that working memory without shrinking the matmuls much.
_WINO_CHUNK_PIXELS = 256 * 256


def _batch_chunks(x: jax.Array) -> int:
  """How many sequential chunks a Winograd conv splits x's batch into (a divisor of N)."""
  n, h, w, _ = x.shape
  per_chunk = max(1, _WINO_CHUNK_PIXELS // (h * w))
  return next(c for c in range(-(-n // per_chunk), n + 1) if n % c == 0)


def _chunked(fn: Callable[..., Any], chunks: int, *batched: jax.Array) -> Any:
  """fn over `chunks` equal slices of the batch axis of every array, sequentially; results are
  stacked on a leading chunk axis (or returned as is for one chunk)."""
  if chunks == 1:
    return jax.tree.map(lambda a: a[None], fn(*batched))
  split = [a.reshape(chunks, a.shape[0] // chunks, *a.shape[1:]) for a in batched]
  return jax.lax.map(lambda args: fn(*args), split)


def _merge_chunks(a: jax.Array) -> jax.Array:
  return a.reshape(a.shape[0] * a.shape[1], *a.shape[2:])


def _wino_forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
  # float32 only (see `matmul_route`), so no accumulation dtype juggling.
  k = kernel.shape[0]
  u = _wino_kernel(kernel)

  def one_chunk(x: jax.Array) -> jax.Array:
    prod = _einsum("tpc,tco->tpo", _wino_input(x, k, (k - 1) // 2), u, x.dtype)
    return _wino_output(prod, k, *x.shape[:3])

  return _merge_chunks(_chunked(one_chunk, _batch_chunks(x), x))


@jax.custom_vjp
def _wino_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 TF 'SAME' conv by Winograd; the odd padding pixel of even kernels goes after."""
  return _wino_forward(x, kernel)


def _wino_conv_fwd(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
  # Only the inputs are kept: the input transform is recomputed in the backward pass instead
  # of holding a 1.8x larger array until then.
  return _wino_forward(x, kernel), (x, kernel)


def _wino_conv_bwd(res: tuple[jax.Array, ...], dy: jax.Array) -> tuple[jax.Array, jax.Array]:
  # Both gradients start from the one transformed output gradient A dy A^T: the input gradient
  # is the forward pass transposed (its matmul, then the input transform transposed), the
  # kernel gradient the tile-wise products with the transformed input. Autodiff through the
  # strided tile slicing would make XLA:CPU scatter.
  x, kernel = res
  k = kernel.shape[0]
  pad_before = (k - 1) // 2
  u = _wino_kernel(kernel)

  def one_chunk(x: jax.Array, dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    dprod = _wino_output_transpose(dy, k)
    dtiles = _einsum("tpo,tco->tpc", dprod, u, x.dtype)
    dx = _wino_input_transpose(dtiles, k, pad_before, x.shape)
    du = _einsum("tpc,tpo->tco", _wino_input(x, k, pad_before), dprod, jnp.float32)
    return dx, du

  dx, du = _chunked(one_chunk, _batch_chunks(x), x, dy)
  return _merge_chunks(dx), _wino_kernel_transpose(du.sum(0).astype(kernel.dtype), k)


_wino_conv.defvjp(_wino_conv_fwd, _wino_conv_bwd)


def matmul_route(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], strides: int,
                 dtype: Any) -> str:
  """Which algorithm impl="matmul" uses for this conv: "winograd", "im2col" or "lax"."""
  n, h, w, _ = x_shape
  k, _, cin, cout = kernel_shape
  if h * w <= _LAX_MAX_SMALL_PIXELS and cin * cout <= _LAX_MAX_SMALL_CHANNELS:
    return "lax"
  if strides > 1 and n * -(-h // strides) * -(-w // strides) >= _LAX_MIN_STRIDED_PIXELS:
    return "lax"
  # Winograd only in float32: its tile transforms amplify rounding too much for bfloat16.
  if (k in (3, 4) and strides == 1 and jnp.dtype(dtype) == jnp.float32
      and min(cin, cout) >= _WINO_MIN_CHANNELS and n * h * w >= _WINO_MIN_PIXELS):
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
  taps = _upsample_taps(k)
  ks = taps.shape[1]
  # One small matmul sums the taps ((ks, ks, 2, 2) <- (k, k)), then one transpose puts the
  # phases beside Cout; an einsum over the four axes ran 3x slower on XLA:CPU.
  fold = jnp.asarray(np.einsum("pia,qjb->ijpqab", taps, taps).reshape(ks * ks * 4, k * k),
                     kernel.dtype)
  small = _small_matmul(fold, kernel.reshape(k * k, cin, cout))
  small = small.reshape(ks, ks, 2, 2, cin, cout).transpose(0, 1, 4, 2, 3, 5)
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
