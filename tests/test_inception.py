"""The FID Inception-v3: architecture, weights file, preprocessing and FID with random weights.

No real weights here (nothing is downloaded): the network runs with `random_params`
(tests/fid_testing.py), which checks the plumbing and the FID's behaviour, not its published
values.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plfm_jax.errors import InputError
from plfm_jax.evaluation import inception
from plfm_jax.evaluation.fid import fid_features, fid_from_features, load_fid_weights
from tests.fid_testing import fid, random_params

REPO = pathlib.Path(__file__).resolve().parents[1]
# Each block's output at 299 x 299, (H, W, C), as the comments of torchvision's
# Inception3._forward give them.
BLOCK_SHAPES = {
    "Conv2d_1a_3x3": (149, 149, 32), "Conv2d_2a_3x3": (147, 147, 32),
    "Conv2d_2b_3x3": (147, 147, 64), "Conv2d_3b_1x1": (73, 73, 80),
    "Conv2d_4a_3x3": (71, 71, 192), "Mixed_5b": (35, 35, 256), "Mixed_5c": (35, 35, 288),
    "Mixed_5d": (35, 35, 288), "Mixed_6a": (17, 17, 768), "Mixed_6b": (17, 17, 768),
    "Mixed_6c": (17, 17, 768), "Mixed_6d": (17, 17, 768), "Mixed_6e": (17, 17, 768),
    "Mixed_7a": (8, 8, 1280), "Mixed_7b": (8, 8, 2048), "Mixed_7c": (8, 8, 2048)}
# torchvision's inception_v3 has 27,161,264 trainable parameters; less AuxLogits (3,326,696)
# and fc (2048 x 1000 + 1000) that leaves the feature extractor's.
TRAINABLE_PARAMETERS = 27_161_264 - 3_326_696 - 2_049_000


@pytest.fixture(scope="module")
def params() -> inception.Params:
  return random_params(seed=0)


@pytest.fixture(scope="module")
def weights(params, tmp_path_factory) -> pathlib.Path:
  path = tmp_path_factory.mktemp("inception") / "inception.npz"
  inception.save_inception(path, params)
  return path


@pytest.fixture(scope="module")
def file_arrays(weights) -> dict[str, np.ndarray]:
  with np.load(weights) as data:
    return dict(data)


def image_sets() -> dict[str, np.ndarray]:
  """Three 32 px images, a noisy copy of them, and three unlike them (smooth colour ramps)."""
  rng = np.random.default_rng(3)
  base = rng.random((3, 32, 32, 3), np.float32)
  noisy = np.clip(base + 0.02 * rng.standard_normal(base.shape), 0, 1)
  ramps = np.linspace(0, 1, 32)[None, None, :, None] * rng.random((3, 1, 1, 3))
  return {"base": base, "noisy": noisy.astype(np.float32),
          "ramps": np.broadcast_to(ramps, base.shape).astype(np.float32)}


def torch_bilinear(images: np.ndarray, size: int) -> np.ndarray:
  """PyTorch's upsample_bilinear2d with align_corners=False, written out in float64."""

  def weights_along(n_in: int) -> np.ndarray:
    src = np.maximum((np.arange(size) + 0.5) * n_in / size - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(int), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    frac = src - low
    w = np.zeros((size, n_in))
    np.add.at(w, (np.arange(size), low), 1 - frac)
    np.add.at(w, (np.arange(size), high), frac)
    return w

  return np.einsum("yh,xw,bhwc->byxc", weights_along(images.shape[1]),
                   weights_along(images.shape[2]), images.astype(np.float64))


def torch_basic_conv(x: np.ndarray, arrays: dict[str, np.ndarray], prefix: str, stride: int,
                     padding: tuple[int, int]) -> np.ndarray:
  """torch's Conv2d (cross-correlation, OIHW weight), BatchNorm(eps=1e-3) and ReLU on NHWC x."""
  w = arrays[f"{prefix}.conv.weight"].astype(np.float64)
  _, _, kh, kw = w.shape
  xp = np.pad(x.astype(np.float64), ((0, 0), padding[:1] * 2, padding[1:] * 2, (0, 0)))
  rows = (xp.shape[1] - kh) // stride + 1
  cols = (xp.shape[2] - kw) // stride + 1
  out = sum(np.einsum("bhwi,oi->bhwo",
                      xp[:, i:i + stride * rows:stride, j:j + stride * cols:stride], w[:, :, i, j])
            for i in range(kh) for j in range(kw))
  bn = {k: arrays[f"{prefix}.bn.{k}"] for k in ("weight", "bias", "running_mean", "running_var")}
  out = (out - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3) * bn["weight"] + bn["bias"]
  return np.maximum(out, 0.0)


def test_architecture_matches_torchvision_layer_table():
  shapes = inception.file_shapes()
  trainable = sum(int(np.prod(s)) for k, s in shapes.items() if k.endswith(("conv.weight",
                                                                           "bn.weight", "bn.bias")))
  assert trainable == TRAINABLE_PARAMETERS == 21_785_568
  assert len(shapes) == 94 * 5  # 94 convolutions: weight, BatchNorm scale, shift, mean, variance
  assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
  assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
  assert shapes["Mixed_7c.branch_pool.bn.running_var"] == (192,)

  def blocks(params, images):
    return inception.FIDInceptionV3().apply({"params": params}, images,
                                            capture_intermediates=True, mutable="intermediates")

  image = jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32)
  abstract_params = jax.eval_shape(inception.FIDInceptionV3().init, jax.random.key(0), image)
  out, state = jax.eval_shape(blocks, abstract_params["params"], image)
  assert out.shape == (2, inception.FEATURES)
  got = {name: value["__call__"][0].shape[1:] for name, value in state["intermediates"].items()
         if name != "__call__"}
  assert got == BLOCK_SHAPES


def test_pooling_of_the_fid_variant():
  x = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)
  pooled = inception._avg_pool_3x3(x)[0, :, :, 0]
  # count_include_pad=False: a corner averages its 4 pixels, an edge its 6, not 9.
  assert pooled[0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)
  assert pooled[0, 1] == pytest.approx((0 + 1 + 2 + 4 + 5 + 6) / 6)
  assert pooled[1, 1] == pytest.approx(5.0)


def test_weights_file_round_trip_in_torch_layout(params, weights, file_arrays):
  assert {k: v.shape for k, v in file_arrays.items()} == inception.file_shapes()
  loaded = inception.load_inception(weights)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  # The file's (out, in, kh, kw) weights mean what they mean in torch, kernels' axes included.
  rng = np.random.default_rng(1)
  for prefix, module, cin in (
      ("Conv2d_1a_3x3", inception.BasicConv2d(32, 3, stride=2), 3),
      ("Mixed_6b.branch7x7_2", inception.BasicConv2d(128, (1, 7), padding=(0, 3)), 128),
      ("Mixed_7b.branch3x3_2b", inception.BasicConv2d(384, (3, 1), padding=(1, 0)), 384)):
    x = rng.standard_normal((1, 9, 11, cin)).astype(np.float32)
    node = loaded
    for part in prefix.split("."):
      node = node[part]
    want = torch_basic_conv(x, file_arrays, prefix, module.stride, inception._pair(module.padding))
    np.testing.assert_allclose(module.apply({"params": node}, x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [5, 11])
def test_preprocess_resizes_like_torch_and_scales_to_minus_one_one(size):
  images = np.random.default_rng(2).random((2, 7, 8, 3), np.float32)
  got = inception.preprocess(images, size)
  np.testing.assert_allclose(got, 2 * torch_bilinear(images, size) - 1, atol=1e-6)


def test_fid_of_random_network_behaves(weights, params):
  sets = image_sets()
  loaded = load_fid_weights(weights)
  features = {name: fid_features(images, loaded) for name, images in sets.items()}
  assert features["base"].shape == (3, inception.FEATURES)
  assert features["base"].dtype == np.float32 and np.isfinite(features["base"]).all()
  assert fid_from_features(features["base"], features["base"]) == pytest.approx(
      0.0, abs=1e-6)
  noisy = fid_from_features(features["base"], features["noisy"])
  unlike = fid_from_features(features["base"], features["ramps"])
  assert 0 < noisy < unlike / 10
  # The whole path, in batches of 2 this time.
  assert fid(sets["base"][:2], sets["noisy"][:2], weights) == pytest.approx(
      fid_from_features(features["base"][:2], features["noisy"][:2]), rel=1e-3)
  # Batches of 2, the last one padded, give the same features.
  np.testing.assert_allclose(inception.extract_features(params, sets["base"], batch_size=2),
                             features["base"], rtol=1e-4, atol=1e-4)


def write_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> pathlib.Path:
  with open(path, "wb") as f:
    np.savez(f, **arrays)
  return path


def unusable_files(tmp_path: pathlib.Path, weights: pathlib.Path,
                   arrays: dict[str, np.ndarray]) -> dict[str, tuple[pathlib.Path, str]]:
  """{case: (file, the start of its problem)}."""
  first_conv = "Conv2d_1a_3x3.conv.weight"
  missing = "Mixed_6b.branch7x7_2.bn.running_mean"
  content = weights.read_bytes()
  truncated = tmp_path / "truncated.npz"
  truncated.write_bytes(content[:len(content) // 2])
  # One flipped byte inside an array: the zip's index is intact, the array's checksum is not.
  damaged = tmp_path / "damaged.npz"
  middle = len(content) // 2
  damaged.write_bytes(content[:middle] + bytes([content[middle] ^ 1]) + content[middle + 1:])
  (tmp_path / "garbage.npz").write_bytes(b"\0not weights")
  np.save(tmp_path / "single.npy", arrays[first_conv])
  return {
      "absent": (tmp_path / "absent.npz", "cannot read the Inception weights file: No such file"),
      "folder": (tmp_path, "cannot read the Inception weights file"),
      "garbage": (tmp_path / "garbage.npz", "is not an .npz Inception weights file"),
      "truncated": (truncated, "is not an .npz Inception weights file"),
      "damaged": (damaged, "cannot read array '"),
      "npy": (tmp_path / "single.npy", "holds a single .npy array"),
      "missing key": (write_npz(tmp_path / "missing.npz", {
          k: v for k, v in arrays.items() if k != missing}), f"has no array '{missing}'"),
      # A conversion that forgot to transpose torch's layout.
      "wrong shape": (write_npz(tmp_path / "shape.npz", {
          **arrays, first_conv: arrays[first_conv].transpose(2, 3, 1, 0)}),
          f"array '{first_conv}' has shape (3, 3, 3, 32), expected (32, 3, 3, 3)"),
      "integers": (write_npz(tmp_path / "int.npz", {
          **arrays, missing: arrays[missing].astype(np.int32)}),
          f"array '{missing}' has dtype int32"),
      "nan": (write_npz(tmp_path / "nan.npz", {
          **arrays, missing: np.full_like(arrays[missing], np.nan)}),
          f"array '{missing}' holds NaN"),
  }


def test_unusable_weights_files_are_one_line_input_errors(tmp_path, weights, file_arrays):
  for case, (path, problem) in unusable_files(tmp_path, weights, file_arrays).items():
    with pytest.raises(InputError) as error:
      inception.load_inception(path)
    assert error.value.path == str(path), case
    assert error.value.problem.startswith(problem), (case, error.value.problem)
    assert "\n" not in str(error.value), case


def test_conversion_script_with_a_stand_in_for_torch(tmp_path, monkeypatch, params, file_arrays):
  """The script's plumbing only: the real .pth and torch.load are not available here."""
  spec = importlib.util.spec_from_file_location(
      "convert_inception_weights", REPO / "scripts" / "convert_inception_weights.py")
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  tensor = lambda array: types.SimpleNamespace(numpy=lambda: array)
  # What the .pth holds besides the network's arrays.
  extra = {"fc.weight": np.zeros((1008, 2048), np.float32),
           "Conv2d_1a_3x3.bn.num_batches_tracked": np.zeros((), np.int64)}
  state = {k: tensor(v) for k, v in {**file_arrays, **extra}.items()}
  monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(
      load=lambda path, map_location, weights_only: state))
  script.main(["convert_inception_weights.py", "pt_inception.pth", str(tmp_path / "converted.npz")])
  jax.tree.map(np.testing.assert_array_equal,
               inception.load_inception(tmp_path / "converted.npz"), params)
