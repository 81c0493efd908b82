"""Metrics against scikit-image and independent float64 NumPy references, plus hand-made cases."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
from numpy.lib.stride_tricks import sliding_window_view
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from plfm_jax.errors import InputError
from plfm_jax.evaluation import metrics
from plfm_jax.evaluation.fid import feature_statistics, fid_from_features, frechet_distance
from plfm_jax.evaluation.shifted import shifted_metrics
from tests.fid_testing import fid

SSIM_KW = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1,
               channel_axis=-1)
# One non-square shape for most tests: H/W mix-ups show, and jit compiles it once per function.
SHAPE = (2, 28, 30, 3)
STANDARD_KEYS = {"psnr", "ssim", "sam", "rmse", "mae"}
SHIFTED_KEYS = {"psnr", "ssim", "rmse", "sam", "uqi", "dd", "cc", "mse"}


def _textured(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
  return rng.uniform(0.05, 0.95, shape)


def _smooth(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
  """Blurred noise stretched to [0.1, 0.9]: low local variance, the hard case for float32 SSIM."""
  x = scipy.ndimage.gaussian_filter(rng.random(shape), sigma=(0, 4, 4, 0))
  x = (x - x.min()) / (x.max() - x.min())
  return 0.1 + 0.8 * x


def _noisy(rng: np.random.Generator, target: np.ndarray, scale: float) -> np.ndarray:
  return np.clip(target + scale * rng.standard_normal(target.shape), 0.0, 1.0)


def _f32(*arrays: np.ndarray) -> list[np.ndarray]:
  return [a.astype(np.float32) for a in arrays]


def _numpy(results: dict[str, jax.Array]) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in results.items()}


# -- float64 references for what skimage does not provide ---------------------------------------


def _sam_reference(pred: np.ndarray, target: np.ndarray) -> float:
  """Mean angle in degrees over pixels where both (H, W, C) spectra are non-zero."""
  dot = (pred * target).sum(-1)
  norms = np.linalg.norm(pred, axis=-1) * np.linalg.norm(target, axis=-1)
  ok = norms > 0
  return float(np.degrees(np.arccos(np.clip(dot[ok] / norms[ok], -1, 1))).mean())


def _uqi_reference(pred: np.ndarray, target: np.ndarray, ws: int = 8) -> float:
  """Wang & Bovik's qindex.m on (H, W, C): Q per valid ws x ws window, their zero rules, mean."""
  values = []
  for c in range(target.shape[-1]):
    x = sliding_window_view(target[..., c], (ws, ws)).reshape(-1, ws * ws)
    y = sliding_window_view(pred[..., c], (ws, ws)).reshape(-1, ws * ws)
    mx, my = x.mean(1), y.mean(1)
    xc, yc = x - mx[:, None], y - my[:, None]
    variances = (xc**2).mean(1) + (yc**2).mean(1)
    means = mx**2 + my**2
    q = np.ones_like(mx)
    flat = (variances == 0) & (means != 0)
    q[flat] = 2 * mx[flat] * my[flat] / means[flat]
    full = variances * means != 0
    q[full] = 4 * (xc * yc).mean(1)[full] * mx[full] * my[full] / (variances * means)[full]
    values.append(q.mean())
  return float(np.mean(values))


def _cc_reference(pred: np.ndarray, target: np.ndarray) -> float:
  return float(np.mean([np.corrcoef(target[..., c].ravel(), pred[..., c].ravel())[0, 1]
                        for c in range(target.shape[-1])]))


def _shifted_reference(pred: np.ndarray, target: np.ndarray, border: int,
                       max_shift: int) -> dict[str, float]:
  """Brute force over shifts, as the reference code: prediction pixel (i + dy, j + dx) vs (i, j)."""
  h, w = target.shape[:2]
  inner = target[border:h - border, border:w - border]
  scores: dict[str, list[float]] = {k: [] for k in SHIFTED_KEYS}
  for dy in range(-max_shift, max_shift + 1):
    for dx in range(-max_shift, max_shift + 1):
      crop = pred[border + dy:h - border + dy, border + dx:w - border + dx]
      mse = float(((crop - inner)**2).mean())
      scores["mse"].append(mse)
      scores["rmse"].append(math.sqrt(mse))
      scores["psnr"].append(peak_signal_noise_ratio(inner, crop, data_range=1))
      scores["dd"].append(float(np.abs(crop - inner).mean()))
      scores["ssim"].append(structural_similarity(inner, crop, **SSIM_KW))
      scores["sam"].append(_sam_reference(crop, inner))
      scores["uqi"].append(_uqi_reference(crop, inner))
      scores["cc"].append(_cc_reference(crop, inner))
  best_high = {"psnr", "ssim", "uqi", "cc"}
  return {k: (max(v) if k in best_high else min(v)) for k, v in scores.items()}


# -- literature-standard metrics -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["textured", "smooth"])
def test_standard_metrics_match_skimage_and_numpy(kind: str):
  rng = np.random.default_rng(0)
  target = (_textured if kind == "textured" else _smooth)(rng, (2, 32, 40, 3))
  pred = _noisy(rng, target, 0.05)
  got = metrics.standard_metrics(*_f32(pred, target))
  assert set(got) == STANDARD_KEYS
  for i in range(2):
    assert got["psnr"][i] == pytest.approx(
        peak_signal_noise_ratio(target[i], pred[i], data_range=1), abs=1e-4)
    assert got["ssim"][i] == pytest.approx(
        structural_similarity(target[i], pred[i], **SSIM_KW), abs=1e-4)
    assert got["rmse"][i] == pytest.approx(np.sqrt(((pred[i] - target[i])**2).mean()), rel=1e-5)
    assert got["mae"][i] == pytest.approx(np.abs(pred[i] - target[i]).mean(), rel=1e-5)
    assert got["sam"][i] == pytest.approx(_sam_reference(pred[i], target[i]), abs=1e-3)


def test_identical_images_score_perfectly():
  target = _f32(_textured(np.random.default_rng(1), SHAPE))[0]
  got = metrics.standard_metrics(target, target)
  np.testing.assert_array_equal(got["psnr"], np.inf)
  np.testing.assert_array_equal(got["rmse"], 0.0)
  np.testing.assert_array_equal(got["mae"], 0.0)
  np.testing.assert_allclose(got["ssim"], 1.0, atol=1e-6)
  np.testing.assert_allclose(got["sam"], 0.0, atol=1e-3)
  shifted = shifted_metrics(target, target)
  np.testing.assert_array_equal(shifted["psnr"], np.inf)
  for key in ("mse", "rmse", "dd"):
    np.testing.assert_array_equal(shifted[key], 0.0)
  for key in ("ssim", "uqi", "cc"):
    np.testing.assert_allclose(shifted[key], 1.0, atol=1e-5)
  np.testing.assert_allclose(shifted["sam"], 0.0, atol=1e-3)


@pytest.mark.parametrize("pred_rgb, target_rgb, degrees", [
    ((1.0, 0.0, 0.0), (1.0, 1.0, 0.0), 45.0),
    ((0.2, 0.2, 0.2), (0.9, 0.0, 0.0), math.degrees(math.acos(1 / math.sqrt(3)))),
    ((0.1, 0.2, 0.3), (0.3, 0.6, 0.9), 0.0),  # same direction, other brightness
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.501), math.degrees(math.acos(
        (0.25 * 2 + 0.5 * 0.501) / (math.sqrt(0.75) * math.sqrt(0.5 + 0.501**2))))),
])
def test_sam_of_constant_spectra_is_their_angle(pred_rgb, target_rgb, degrees):
  pred = np.broadcast_to(np.float32(pred_rgb), (1, 16, 16, 3))
  target = np.broadcast_to(np.float32(target_rgb), (1, 16, 16, 3))
  assert metrics.sam(pred, target)[0] == pytest.approx(degrees, abs=2e-3)


def test_sam_leaves_out_zero_spectra_without_nan():
  pred = np.full((2, 16, 16, 3), 0.5, np.float32)
  target = np.zeros_like(pred)
  target[0, :8] = (0.5, 0.5, 0.0)  # half the pixels have a spectrum: angle acos(2/sqrt(6))
  got = np.asarray(metrics.sam(pred, target))
  assert got[0] == pytest.approx(math.degrees(math.acos(2 / math.sqrt(6))), abs=2e-3)
  assert np.isnan(got[1])  # no pixel has both spectra


def test_uniform_offset_gives_offset_errors():
  target = 0.8 * _textured(np.random.default_rng(2), (1, 16, 16, 3)).astype(np.float32)
  got = metrics.standard_metrics(target + np.float32(0.1), target)
  assert got["mae"][0] == pytest.approx(0.1, abs=1e-6)
  assert got["rmse"][0] == pytest.approx(0.1, abs=1e-6)
  assert got["psnr"][0] == pytest.approx(20.0, abs=1e-4)


def test_errors_inside_the_cloud_change_only_cloud_metrics():
  rng = np.random.default_rng(3)
  target = _textured(rng, (1, 32, 32, 3)).astype(np.float32)
  mask = np.zeros((1, 32, 32, 1), np.float32)
  mask[:, 8:20, 10:26] = 1
  pred = np.where(mask > 0, _noisy(rng, target, 0.2), target).astype(np.float32)
  got = metrics.standard_metrics(pred, target, mask)
  assert set(got) == STANDARD_KEYS | {f"{k}_{r}" for k in STANDARD_KEYS for r in ("cloud", "clear")}
  assert got["rmse_clear"][0] == 0.0 and got["mae_clear"][0] == 0.0
  assert got["psnr_clear"][0] == np.inf
  assert got["sam_clear"][0] == pytest.approx(0.0, abs=1e-3)
  cloud = mask[0, ..., 0] > 0
  assert got["rmse_cloud"][0] == pytest.approx(
      np.sqrt(((pred[0] - target[0])[cloud]**2).mean()), rel=1e-5)
  assert got["mae_cloud"][0] > 0.05 and got["sam_cloud"][0] > 1.0
  # Masked SSIM averages skimage's full SSIM map over the region, inside the 5-pixel margin.
  _, full = structural_similarity(target[0].astype(np.float64), pred[0].astype(np.float64),
                                  full=True, **SSIM_KW)
  full = full.mean(-1)[5:-5, 5:-5]
  inner_cloud = cloud[5:-5, 5:-5]
  assert got["ssim_cloud"][0] == pytest.approx(full[inner_cloud].mean(), abs=1e-4)
  assert got["ssim_clear"][0] == pytest.approx(full[~inner_cloud].mean(), abs=1e-4)
  assert got["ssim_cloud"][0] < got["ssim_clear"][0]


def test_empty_region_gives_nan_and_average_leaves_it_out():
  rng = np.random.default_rng(4)
  target = _textured(rng, (2, 16, 16, 3)).astype(np.float32)
  pred = _noisy(rng, target, 0.1).astype(np.float32)
  mask = np.zeros((2, 16, 16), bool)
  mask[1] = True  # sample 0 is all clear, sample 1 all cloud
  got = _numpy(metrics.standard_metrics(pred, target, mask))
  for key in STANDARD_KEYS:
    assert np.isnan(got[f"{key}_cloud"][0]) and np.isfinite(got[f"{key}_cloud"][1])
    assert np.isfinite(got[f"{key}_clear"][0]) and np.isnan(got[f"{key}_clear"][1])
    assert got[f"{key}_cloud"][1] == pytest.approx(got[key][1], rel=1e-5)
  means = metrics.average(got)
  assert means["rmse_cloud"] == pytest.approx(float(got["rmse"][1]), rel=1e-6)
  assert means["rmse"] == pytest.approx(float(np.mean(got["rmse"])), rel=1e-6)
  assert math.isnan(metrics.average({"x": np.array([np.nan, np.nan])})["x"])


def test_bad_shapes_are_refused():
  image = np.zeros((1, 16, 16, 3), np.float32)
  with pytest.raises(ValueError, match="differ in shape"):
    metrics.rmse(image, image[:, :8])
  with pytest.raises(ValueError, match="region must be"):
    metrics.rmse(image, image, np.zeros((1, 8, 8)))
  with pytest.raises(ValueError, match="smaller than"):
    metrics.ssim(image[:, :8, :8], image[:, :8, :8])
  with pytest.raises(ValueError, match="max_shift <= border"):
    shifted_metrics(image, image, border=2, max_shift=3)
  with pytest.raises(ValueError, match="after cropping"):
    shifted_metrics(image, image)


# -- the shifted protocol ------------------------------------------------------------------------


def test_shifted_metrics_match_brute_force_reference():
  rng = np.random.default_rng(5)
  target = _smooth(rng, SHAPE) * 0.5 + _textured(rng, SHAPE) * 0.5
  pred = _noisy(rng, np.roll(target, (1, -2), axis=(1, 2)), 0.05)
  got = shifted_metrics(*_f32(pred, target))
  assert set(got) == SHIFTED_KEYS
  for i in range(2):
    want = _shifted_reference(pred[i], target[i], border=5, max_shift=3)
    for key, value in want.items():
      assert got[key][i] == pytest.approx(value, rel=1e-4, abs=1e-4), key


def test_shifted_metrics_recover_a_known_displacement():
  rng = np.random.default_rng(6)
  target = _textured(rng, SHAPE).astype(np.float32)
  pred = np.roll(target, (2, -3), axis=(1, 2))  # prediction pixel (i + 2, j - 3) shows (i, j)
  plain = _numpy(metrics.standard_metrics(pred, target))
  got = _numpy(shifted_metrics(pred, target))
  np.testing.assert_array_equal(got["psnr"], np.inf)
  np.testing.assert_array_equal(got["rmse"], 0.0)
  np.testing.assert_array_equal(got["dd"], 0.0)
  for key in ("ssim", "uqi", "cc"):
    np.testing.assert_allclose(got[key], 1.0, atol=1e-5)
  np.testing.assert_allclose(got["sam"], 0.0, atol=1e-3)
  assert (plain["ssim"] < 0.2).all() and (plain["rmse"] > 0.2).all()
  # Three pixels is the limit: a 4-pixel displacement is not undone.
  far = shifted_metrics(np.roll(target, 4, axis=1), target)
  assert (np.asarray(far["ssim"]) < 0.2).all()


def test_uqi_follows_wang_bovik_on_flat_and_textured_windows():
  rng = np.random.default_rng(7)
  target = _textured(rng, (1, 24, 24, 3))
  pred = _noisy(rng, target, 0.1)
  # Flat patches at dyadic values, so that the float64 reference sees exact zero variances:
  # both flat and equal (Q = 1), both flat and different (luminance term only), both black.
  target[0, :10, :10], pred[0, :10, :10] = 0.5, 0.5
  target[0, :10, 14:], pred[0, :10, 14:] = 0.25, 0.75
  target[0, 14:, :10], pred[0, 14:, :10] = 0.0, 0.0
  got = shifted_metrics(*_f32(pred, target), border=0, max_shift=0)
  assert got["uqi"][0] == pytest.approx(_uqi_reference(pred[0], target[0]), abs=1e-4)


@pytest.mark.parametrize("scene", ["low_contrast", "dark_and_bright"])
def test_similarity_keeps_float64_accuracy_on_low_variance_windows(scene: str):
  # Window variances of 1e-7..1e-4 next to means of 0.03..0.8: E[x^2] - E[x]^2 in float32 cancels
  # most of its digits there unless the moments are centred.
  rng = np.random.default_rng(12)
  if scene == "low_contrast":
    target = 0.5 + 0.01 * (_smooth(rng, (1, 24, 24, 3)) - 0.5)
    pred = target + 0.003 * (_smooth(rng, (1, 24, 24, 3)) - 0.5)
  else:
    target = 0.3 + 0.5 * _textured(rng, (1, 24, 24, 3))
    target[:, :, :12] = 0.03 + 0.01 * rng.standard_normal((1, 24, 12, 3))
    pred = target + 0.003 * rng.standard_normal(target.shape)
  got = shifted_metrics(*_f32(pred, target), border=0, max_shift=0)
  assert got["uqi"][0] == pytest.approx(_uqi_reference(pred[0], target[0]), abs=1e-4)
  assert got["ssim"][0] == pytest.approx(
      structural_similarity(target[0], pred[0], **SSIM_KW), abs=1e-5)


def test_cc_leaves_out_constant_bands():
  rng = np.random.default_rng(8)
  target = _textured(rng, (1, 24, 24, 3)).astype(np.float32)
  pred = target.copy()
  pred[..., 2] = 0.5  # no correlation exists for this band; the other two correlate perfectly
  got = shifted_metrics(pred, target, border=0, max_shift=0)
  assert got["cc"][0] == pytest.approx(1.0, abs=1e-5)


def test_batches_equal_per_sample_results_under_jit():
  rng = np.random.default_rng(9)
  target = _textured(rng, (3, 16, 16, 3)).astype(np.float32)
  pred = _noisy(rng, target, 0.1).astype(np.float32)
  mask = rng.random((3, 16, 16, 1)) > 0.5
  standard = jax.jit(metrics.standard_metrics)
  shifted = jax.jit(lambda p, t: shifted_metrics(p, t, border=2, max_shift=1))
  batch_standard = _numpy(standard(pred, target, mask))
  batch_shifted = _numpy(shifted(pred, target))
  for i in range(3):
    one = slice(i, i + 1)
    for key, value in standard(pred[one], target[one], mask[one]).items():
      assert value[0] == pytest.approx(batch_standard[key][i], rel=1e-5, abs=1e-6), key
    for key, value in shifted(pred[one], target[one]).items():
      assert value[0] == pytest.approx(batch_shifted[key][i], rel=1e-5, abs=1e-6), key


# -- FID -----------------------------------------------------------------------------------------


def test_frechet_distance_of_diagonal_gaussians_has_closed_form():
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  var1, var2 = np.array([1.0, 4.0, 0.0]), np.array([9.0, 1.0, 2.0])
  want = ((mu1 - mu2)**2).sum() + ((np.sqrt(var1) - np.sqrt(var2))**2).sum()
  assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(want)


def test_frechet_distance_matches_sqrtm_formula():
  rng = np.random.default_rng(10)
  a, b = rng.standard_normal((2, 6, 6))
  sigma1, sigma2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
  mu1, mu2 = rng.standard_normal((2, 6))
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
  want = ((mu1 - mu2)**2).sum() + np.trace(sigma1 + sigma2 - 2 * covmean)
  assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(want, rel=1e-8)
  assert frechet_distance(mu1, sigma1, mu1, sigma1) == pytest.approx(0.0, abs=1e-9)


def test_fid_from_features_needs_two_samples_per_set():
  rng = np.random.default_rng(11)
  features = rng.standard_normal((50, 4))
  shifted = features + np.array([3.0, 0.0, 0.0, 0.0])
  assert fid_from_features(features, shifted) == pytest.approx(9.0, rel=1e-9)
  with pytest.raises(ValueError, match="at least 2"):
    fid_from_features(features[:1], features)


def test_fid_from_features_with_fewer_samples_than_dimensions_matches_the_statistics():
  rng = np.random.default_rng(12)
  pred, target = rng.standard_normal((5, 8)), 2.0 * rng.standard_normal((4, 8)) + 0.5
  want = frechet_distance(*feature_statistics(pred),
                                  *feature_statistics(target))
  assert fid_from_features(pred, target) == pytest.approx(want, rel=1e-6)
  assert fid_from_features(pred, pred) == pytest.approx(0.0, abs=1e-12)


def test_fid_refuses_single_images_and_missing_weights(tmp_path):
  images = np.zeros((2, 8, 8, 3), np.float32)
  with pytest.raises(ValueError, match="at least 2 images"):
    fid(images[:1], images, "weights.npz")
  with pytest.raises(InputError) as missing_option:
    fid(images, images, None)
  assert missing_option.value.path == "--fid_weights"
  with pytest.raises(InputError) as missing_file:
    fid(images, images, tmp_path / "absent.npz")
  assert missing_file.value.path == str(tmp_path / "absent.npz")
  weights = tmp_path / "inception.npz"
  weights.write_bytes(b"\0")
  with pytest.raises(InputError, match="not an .npz"):
    fid(images, images, weights)
