"""The convolution: both implementations against each other, lax against NumPy, the module."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plfm_jax.models import conv as conv_lib
from plfm_jax.models.conv import Conv, conv2d, resolve_conv_impl

# (kernel, stride, (H, W), (Cin, Cout)): kernel sizes 1, 3, 4, strides 1 and 2, odd and even
# sizes. 3x3 and 4x4 at stride 1 with >= 64 channels each side run Winograd (given the
# tiny_thresholds fixture), the rest im2col; at stride 1 with Cin > Cout im2col runs
# matmul-first-then-col2im.
CASES = [
    (1, 2, (5, 6), (4, 2)),
    (3, 1, (7, 9), (3, 5)),
    (3, 2, (7, 9), (6, 4)),
    (3, 1, (9, 7), (64, 72)),
    (4, 1, (5, 6), (80, 64)),
    (4, 1, (8, 8), (5, 3)),
    (4, 1, (5, 6), (2, 6)),
    (4, 2, (7, 9), (3, 8)),
    (4, 2, (8, 8), (8, 3)),
]


def _inputs(k: int, s: int, hw: tuple[int, int], ch: tuple[int, int], dtype, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(2, *hw, ch[0])), dtype)
  kernel = jnp.asarray(rng.normal(size=(k, k, *ch)) / np.sqrt(k * k * ch[0]), dtype)
  out_hw = tuple(-(-d // s) for d in hw)
  cotangent = jnp.asarray(rng.normal(size=(2, *out_hw, ch[1])), dtype)
  return x, kernel, cotangent


def _value_and_grads(impl: str, s: int, x, kernel, cotangent):
  """Forward output and the gradients of <conv(x, kernel), cotangent> w.r.t. x and kernel."""

  def loss(x, kernel):
    y = conv2d(x, kernel, strides=s, impl=impl)
    return jnp.sum(y.astype(jnp.float32) * cotangent.astype(jnp.float32)), y

  (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, kernel)
  return (y, *grads)


def _assert_close(actual, expected, rel: float):
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  assert actual.shape == expected.shape and actual.dtype == expected.dtype
  np.testing.assert_allclose(actual, expected, rtol=0, atol=rel * np.abs(expected).max())


@pytest.fixture
def tiny_thresholds(monkeypatch):
  """Lets im2col, Winograd and fused upsampling run on the tests' tiny images (not worth it
  there)."""
  monkeypatch.setattr(conv_lib, "_LAX_MAX_SMALL_PIXELS", 0)
  monkeypatch.setattr(conv_lib, "_WINO_MIN_PIXELS", 1)
  monkeypatch.setattr(conv_lib, "_FUSED_UPSAMPLE_MIN_PIXELS", 1)


@pytest.mark.parametrize("k,s,hw,ch", CASES)
def test_matmul_matches_lax_float32(k, s, hw, ch, tiny_thresholds):
  expected_route = "winograd" if min(ch) >= 64 else "im2col"
  assert conv_lib.matmul_route((2, *hw, ch[0]), (k, k, *ch), s, jnp.float32) == expected_route
  args = _inputs(k, s, hw, ch, jnp.float32)
  for got, want in zip(_value_and_grads("matmul", s, *args), _value_and_grads("lax", s, *args)):
    assert got.dtype == want.dtype
    _assert_close(got, want, rel=5e-5)


@pytest.mark.parametrize("k,s,hw,ch", [(3, 1, (8, 8), (64, 64)), (4, 2, (7, 9), (4, 6))])
def test_matmul_matches_lax_bfloat16(k, s, hw, ch, tiny_thresholds):
  args = _inputs(k, s, hw, ch, jnp.bfloat16)
  # The reference is float32 lax on the same bfloat16-representable values.
  want_all = _value_and_grads("lax", s, *(a.astype(jnp.float32) for a in args))
  for got, want in zip(_value_and_grads("matmul", s, *args), want_all):
    assert got.dtype == jnp.bfloat16
    _assert_close(got.astype(jnp.float32), want, rel=2e-2)


@pytest.mark.parametrize("impl,k,ch", [("lax", 4, (3, 5)), ("matmul", 4, (64, 16))])
def test_fused_upsample_conv2d_matches_upsampling_then_conv(impl, k, ch, tiny_thresholds):
  x, kernel, cotangent = _inputs(k, 1, (5, 6), ch, jnp.float32)
  cotangent = jnp.repeat(jnp.repeat(cotangent, 2, axis=1), 2, axis=2)

  def loss(conv, x, kernel):
    y = conv(x, kernel)
    return jnp.sum(y * cotangent), y

  def upsample_then_conv(x, kernel):
    return conv2d(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2), kernel)

  def fused(x, kernel):
    return conv_lib.upsample_conv2d(x, kernel, impl=impl)

  results = [jax.jit(jax.value_and_grad(loss, argnums=(1, 2), has_aux=True), static_argnums=0)(
      conv, x, kernel) for conv in (fused, upsample_then_conv)]
  (_, got_y), got_grads = results[0]
  (_, want_y), want_grads = results[1]
  for got, want in zip((got_y, *got_grads), (want_y, *want_grads)):
    _assert_close(got, want, rel=5e-5)


@pytest.mark.parametrize("batch,expected_chunks", [(4, 4), (6, 6), (2, 2)])
def test_winograd_over_batch_chunks_matches_lax(batch, expected_chunks, tiny_thresholds,
                                                monkeypatch):
  # One image per chunk: the batch runs as a sequential loop, gradients summed over it.
  monkeypatch.setattr(conv_lib, "_WINO_CHUNK_PIXELS", 9 * 7)
  x, kernel, cotangent = _inputs(3, 1, (9, 7), (64, 72), jnp.float32)
  x = jnp.concatenate([x] * (batch // 2), axis=0) * jnp.arange(1, batch + 1)[:, None, None, None]
  cotangent = jnp.concatenate([cotangent] * (batch // 2), axis=0)
  assert conv_lib._batch_chunks(x) == expected_chunks
  for got, want in zip(_value_and_grads("matmul", 1, x, kernel, cotangent),
                       _value_and_grads("lax", 1, x, kernel, cotangent)):
    _assert_close(got, want, rel=5e-5)


def test_batch_chunks_divide_the_batch(monkeypatch):
  monkeypatch.setattr(conv_lib, "_WINO_CHUNK_PIXELS", 2 * 10 * 10)
  chunks = {n: conv_lib._batch_chunks(jnp.zeros((n, 10, 10, 1))) for n in (1, 2, 3, 5, 6, 8)}
  # At most 2 images per chunk, as few chunks as divide the batch evenly.
  assert chunks == {1: 1, 2: 1, 3: 3, 5: 5, 6: 3, 8: 4}


def _numpy_same_conv(x: np.ndarray, kernel: np.ndarray, s: int) -> np.ndarray:
  """TF 'SAME' written out: the odd padding pixel goes after, outputs ceil(size / stride)."""
  k = kernel.shape[0]
  pads = []
  for size in x.shape[1:3]:
    total = max((-(-size // s) - 1) * s + k - size, 0)
    pads.append((total // 2, total - total // 2))
  xp = np.pad(x, ((0, 0), *pads, (0, 0)))
  ho, wo = -(-x.shape[1] // s), -(-x.shape[2] // s)
  y = np.zeros((x.shape[0], ho, wo, kernel.shape[3]))
  for i in range(ho):
    for j in range(wo):
      patch = xp[:, i * s:i * s + k, j * s:j * s + k, :]
      y[:, i, j] = np.einsum("nabc,abco->no", patch, kernel)
  return y


@pytest.mark.parametrize("k,s,hw", [(4, 2, (7, 8)), (4, 1, (5, 6)), (3, 2, (6, 7))])
def test_lax_matches_numpy_tf_same(k, s, hw):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, *hw, 2))
  kernel = rng.normal(size=(k, k, 2, 3))
  got = conv2d(jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32), strides=s)
  np.testing.assert_allclose(np.asarray(got), _numpy_same_conv(x, kernel, s), atol=1e-5)


# Module tests jit whole functions: eager dispatch compiles every small op separately.


def test_conv_module_params_bias_and_jit():
  x = jnp.ones((1, 8, 8, 5))
  module = Conv(features=7, kernel_size=4, strides=2)
  params = jax.jit(module.init)(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, params) == {"params": {"kernel": (4, 4, 5, 7), "bias": (7,)}}
  assert not np.any(params["params"]["bias"])
  params["params"]["bias"] = jnp.arange(7.0)
  y, no_bias = jax.jit(lambda p, x: (
      module.apply(p, x), conv2d(x, p["params"]["kernel"], strides=2)))(params, x)
  assert y.shape == (1, 4, 4, 7)
  np.testing.assert_allclose(y, no_bias + jnp.arange(7.0), atol=1e-5)
  unbiased = jax.eval_shape(Conv(features=7, use_bias=False).init, jax.random.key(0), x)
  assert set(unbiased["params"]) == {"kernel"}


def test_conv_module_upsample():
  x = jax.random.normal(jax.random.key(1), (1, 3, 4, 2))
  module = Conv(features=3, kernel_size=4, upsample=True)
  params = jax.jit(module.init)(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, params)["params"]["kernel"] == (4, 4, 2, 3)
  upsampled = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  y, want = jax.jit(lambda p: (
      module.apply(p, x), Conv(features=3, kernel_size=4).apply(p, upsampled)))(params)
  np.testing.assert_allclose(y, want, atol=1e-5)
  with pytest.raises(ValueError, match="strides=1"):
    jax.eval_shape(Conv(features=3, strides=2, upsample=True).init, jax.random.key(0), x)


def test_conv_module_keras_glorot_uniform_init():
  k, cin, cout = 3, 40, 60
  module = Conv(features=cout, kernel_size=k)
  kernel = jax.jit(module.init)(jax.random.key(0), jnp.ones((1, 4, 4, cin)))["params"]["kernel"]
  bound = np.sqrt(6 / (k * k * (cin + cout)))  # Keras: fans include the receptive field
  assert np.abs(kernel).max() <= bound
  assert np.abs(kernel).max() > 0.99 * bound
  assert np.std(kernel) == pytest.approx(bound / np.sqrt(3), rel=0.02)


def test_conv_module_bfloat16_compute_float32_params():
  x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
  module = Conv(features=4, impl="matmul", dtype=jnp.bfloat16)
  params = jax.eval_shape(module.init, jax.random.key(0), x)
  assert params["params"]["kernel"].dtype == jnp.float32
  assert jax.eval_shape(module.apply, params, x).dtype == jnp.bfloat16


def test_matmul_route_on_plfm_shapes():
  f32 = jnp.float32
  assert conv_lib.matmul_route((1, 256, 256, 131), (3, 3, 131, 512), 1, f32) == "winograd"
  assert conv_lib.matmul_route((1, 256, 256, 131), (3, 3, 131, 512), 1, jnp.bfloat16) == "im2col"
  assert conv_lib.matmul_route((1, 256, 256, 32), (3, 3, 32, 3), 1, f32) == "im2col"
  assert conv_lib.matmul_route((1, 16, 16, 2048), (3, 3, 2048, 2048), 1, f32) == "im2col"
  assert conv_lib.matmul_route((1, 32, 32, 1024), (3, 3, 1024, 1024), 1, f32) == "winograd"
  assert conv_lib.matmul_route((1, 128, 128, 512), (4, 4, 512, 128), 1, f32) == "winograd"
  assert conv_lib.matmul_route((1, 128, 128, 128), (4, 4, 128, 256), 2, f32) == "lax"
  assert conv_lib.matmul_route((1, 16, 16, 1024), (4, 4, 1024, 1024), 2, f32) == "im2col"
  # The demo's ConvLSTM at 64 px: small, lax; wider at the same size: im2col.
  assert conv_lib.matmul_route((4, 64, 64, 19), (3, 3, 19, 64), 1, f32) == "lax"
  assert conv_lib.matmul_route((4, 64, 64, 32), (3, 3, 32, 128), 1, f32) == "im2col"


def test_resolve_conv_impl(monkeypatch):
  assert resolve_conv_impl("lax") == "lax"
  assert resolve_conv_impl("matmul") == "matmul"
  monkeypatch.setattr(conv_lib.jax, "default_backend", lambda: "cpu")
  assert resolve_conv_impl("auto") == "matmul"
  assert resolve_conv_impl("auto", training=False) == "lax"
  assert resolve_conv_impl("matmul", training=False) == "matmul"
  monkeypatch.setattr(conv_lib.jax, "default_backend", lambda: "gpu")
  assert resolve_conv_impl("auto") == "lax"
  with pytest.raises(ValueError, match="conv impl"):
    resolve_conv_impl("winograd")
  with pytest.raises(ValueError, match="conv impl"):
    conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)), impl="cudnn")
