"""plfm_jax.models.plfm: building, initialising and wiring the PLFM components, and its options."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.plfm import get_config
from plfm_jax.models import gapfill
from plfm_jax.models.plfm import PLFM, OpticalScale, composite, count_variables
from tests.tiny import random_batch, tiny_config

SIZE = 32
SERIES_LENGTH = 4
PAPER_COUNTS = {"temporal": 1159139, "generator": 66626819, "discriminator": 11047809,
                "head": 4173635}


def build(variant: str = "demo", **model) -> tuple[PLFM, dict]:
  config = tiny_config(variant, size=SIZE, conv_impl="lax", **model)
  plfm = PLFM.from_config(config.model)
  return plfm, plfm.init(jax.random.key(0), image_size=SIZE, series_length=SERIES_LENGTH)


@pytest.fixture(scope="module")
def paper():
  return build("paper")


@pytest.fixture(scope="module")
def plus():
  return build("demo")


def _predict(plfm: PLFM, variables: dict, batch: dict) -> dict:
  return jax.jit(plfm.predict)(variables, batch)


def shapes(plfm: PLFM, image_size: int = SIZE) -> dict:
  return jax.eval_shape(functools.partial(plfm.init, image_size=image_size,
                                          series_length=SERIES_LENGTH), jax.random.key(0))


def test_paper_config_counts():
  plfm = PLFM.from_config(get_config("paper").model)
  variables = shapes(plfm, 256)
  assert {name: count_variables(v) for name, v in variables.items()} == PAPER_COUNTS
  assert {name: set(v) for name, v in variables.items()} == {
      name: {"params", "batch_stats"} for name in PAPER_COUNTS}
  assert (plfm.head_inputs, plfm.temporal_prior, plfm.head_output, plfm.standardize,
          plfm.match_history) == ("branches", "none", "image", False, False)


def test_plus_config_builds_its_switches():
  plfm = PLFM.from_config(get_config("plus").model)
  assert plfm.temporal.residual and plfm.head.residual and plfm.standardize
  assert plfm.temporal.norm == plfm.head.norm == "group"
  variables = shapes(plfm, 256)
  # GroupNorm keeps no running averages; the affine head outputs two gains and an offset.
  assert "batch_stats" not in variables["head"]
  assert variables["head"]["params"]["Conv_9"]["kernel"].shape[-1] == 9
  assert variables["head"]["params"]["Conv_0"]["kernel"].shape[2] == plfm.head_channels == 10


def test_from_config_settings_and_errors():
  plfm = PLFM.from_config(tiny_config("paper", dtype="bfloat16", conv_impl="auto").model)
  auto = "matmul" if jax.default_backend() == "cpu" else "lax"
  for module in (plfm.temporal, plfm.generator, plfm.discriminator, plfm.head):
    assert module.impl == auto
    assert module.dtype == jnp.bfloat16 and module.param_dtype == jnp.float32
  assert plfm.temporal.features == (4, 4, 4) and plfm.head.features == 4
  for field, value, message in (("dtype", "float16", "dtype"), ("conv_impl", "fft", "conv impl"),
                                ("head_inputs", "all", "head_inputs"),
                                ("temporal_prior", "last", "temporal_prior"),
                                ("head_output", "mix", "head_output"), ("norm", "layer", "norm")):
    with pytest.raises(ValueError, match=message):
      PLFM.from_config(tiny_config("paper", **{field: value}).model)


def test_predict_shapes_ranges_and_composite(paper):
  plfm, variables = paper
  batch = random_batch(2, SIZE)
  out = _predict(plfm, variables, batch)
  assert set(out) == {"temporal", "sar_branch", "fused", "composite"}
  for name, image in out.items():
    assert image.shape == (2, SIZE, SIZE, 3) and image.dtype == jnp.float32, name
    assert float(image.min()) >= 0 and float(image.max()) <= 1, name
    assert float(image.std()) > 0, name
  clear = np.broadcast_to(batch["cloud_mask"] == 0, out["composite"].shape)
  composite_image = np.asarray(out["composite"])
  np.testing.assert_array_equal(composite_image[clear], batch["cloudy"][clear])
  np.testing.assert_array_equal(composite_image[~clear], np.asarray(out["fused"])[~clear])
  # Inference uses the running statistics: the result does not depend on the rest of the batch.
  other = random_batch(2, SIZE, seed=3)
  mixed = _predict(plfm, variables, {k: np.concatenate([batch[k][:1], other[k][1:]])
                                     for k in batch})
  np.testing.assert_allclose(mixed["fused"][:1], out["fused"][:1], atol=1e-6)


@pytest.mark.parametrize("prior", list(gapfill.METHODS))
def test_untrained_residual_model_equals_its_prior_exactly(prior):
  plfm, variables = build("demo", temporal_prior=prior)
  batch = random_batch(2, SIZE, seed=1)
  out = _predict(plfm, variables, batch)
  expected = gapfill.METHODS[prior](batch["history"], batch["cloudy"], batch["cloud_mask"])
  # (Compiled inside predict, XLA may round differently from the eager call.)
  np.testing.assert_allclose(out["prior"], expected, atol=1e-5)
  np.testing.assert_array_equal(out["temporal"], out["prior"])
  # The affine head starts at zero too: fused is the temporal image, the clear pixels kept.
  assert plfm.keep_clear_pixels
  np.testing.assert_array_equal(
      out["fused"], composite(out["temporal"], batch["cloudy"], batch["cloud_mask"]))


def test_untrained_residual_head_equals_temporal_output():
  plfm, variables = build("demo", head_output="residual", keep_clear_pixels=False)
  out = _predict(plfm, variables, random_batch(2, SIZE, seed=2))
  np.testing.assert_array_equal(out["fused"], out["temporal"])


def test_keep_clear_pixels_copies_the_cloudy_date_where_clear():
  plfm, variables = build("demo")
  # A head that changes every pixel.
  head = jax.tree.map(np.array, variables["head"])
  last = max((k for k in head["params"] if k.startswith("Conv_")), key=lambda k: int(k[5:]))
  head["params"][last]["bias"] = np.full(9, 0.3, np.float32)
  batch = random_batch(2, SIZE, seed=7)
  out = _predict(plfm, {**variables, "head": head}, batch)
  clear = np.broadcast_to(batch["cloud_mask"] == 0, out["fused"].shape)
  np.testing.assert_array_equal(np.asarray(out["fused"])[clear], batch["cloudy"][clear])
  assert not np.allclose(np.asarray(out["fused"])[~clear], np.asarray(out["temporal"])[~clear])
  np.testing.assert_array_equal(out["fused"], out["composite"])


def test_affine_fusion_by_hand():
  plfm, _ = build("demo")
  temporal = jnp.full((1, 1, 2, 3), 0.2)
  cloudy = jnp.array([0.3, 0.9]).reshape(1, 1, 2, 1) * jnp.ones(3)
  scale = OpticalScale(jnp.full((1, 1, 1, 3), 0.1), jnp.full((1, 1, 1, 3), 0.05))
  gains = jnp.concatenate([jnp.full((1, 1, 2, 3), 1.0), jnp.full((1, 1, 2, 3), -0.5),
                           jnp.full((1, 1, 2, 3), 2.0)], axis=-1)
  fused = np.asarray(plfm.fuse(gains, temporal, cloudy, scale))
  # 0.2 + 1 * clip(0.3 - 0.2, +-4 * 0.05) - 0.5 * (0.2 - 0.1) + 0.05 * 2
  np.testing.assert_allclose(fused[0, 0, 0], 0.2 + 0.1 - 0.05 + 0.1, rtol=1e-6)
  # The cloud's difference is clipped at 4 standard deviations: 0.2 + 0.2 - 0.05 + 0.1.
  np.testing.assert_allclose(fused[0, 0, 1], 0.45, rtol=1e-6)
  # With a gain of 1 on the clipped difference and nothing else, a clear pixel is copied.
  copy = jnp.concatenate([jnp.ones((1, 1, 2, 3)), jnp.zeros((1, 1, 2, 6))], axis=-1)
  np.testing.assert_allclose(plfm.fuse(copy, temporal, cloudy, scale)[0, 0, 0], 0.3, rtol=1e-6)


def test_optical_scale_standardises_by_the_history():
  plfm, _ = build("demo")
  batch = random_batch(2, SIZE, seed=4)
  scale = plfm.optical_scale(batch)
  np.testing.assert_allclose(scale.mean[:, 0, 0], batch["history"].mean(axis=(1, 2, 3)),
                             rtol=1e-5)
  z = plfm.temporal_input(batch, scale)
  assert z.shape == batch["history"].shape
  np.testing.assert_allclose(np.asarray(z).mean(axis=(1, 2, 3)), 0, atol=0.1)  # matched
  reference, _ = build("paper")
  assert reference.optical_scale(batch) == OpticalScale(0.5, 0.5)
  np.testing.assert_allclose(OpticalScale(0.5, 0.5).encode(batch["cloudy"]),
                             2 * batch["cloudy"] - 1, atol=1e-6)


def test_gradients_finite_and_nonzero_for_every_parameter(paper):
  plfm, variables = paper
  batch = random_batch(2, SIZE, seed=1)

  def loss(params):
    v = {name: {**variables[name], "params": params[name]} for name in variables}
    out, v = plfm.forward(v, batch, train=frozenset(variables))
    logits, _ = plfm.discriminate(v["discriminator"], batch["target"], batch["sar"], train=True)
    return (jnp.mean((out["temporal"] - batch["target"])**2)
            + jnp.mean(jnp.abs(out["sar_branch"] - batch["target"]))
            + jnp.mean(jnp.abs(out["fused"] - batch["target"])) + jnp.mean(jax.nn.softplus(-logits)))

  params = {name: v["params"] for name, v in variables.items()}
  grads = jax.jit(jax.grad(loss))(params)
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    name = jax.tree_util.keystr(path)
    assert np.all(np.isfinite(grad)), name
    assert np.any(grad != 0), name


def test_bfloat16_compute_keeps_float32_params(paper):
  plfm32, variables = paper
  plfm16 = PLFM.from_config(tiny_config("paper", conv_impl="lax", dtype="bfloat16").model)
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes(plfm16))} == {jnp.dtype(jnp.float32)}
  batch = random_batch(2, SIZE, seed=2)
  out16 = _predict(plfm16, variables, batch)
  out32 = _predict(plfm32, variables, batch)
  for name in out32:
    assert out16[name].dtype == jnp.float32
    assert np.all(np.isfinite(out16[name])), name
    error = np.abs(np.asarray(out16[name]) - np.asarray(out32[name]))
    assert error.mean() < 0.02 and error.max() < 0.15, (name, error.mean(), error.max())


def test_head_input_channels_and_full_temporal_frame(paper, plus):
  temporal = jnp.linspace(0, 1, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)
  sar_branch = jnp.zeros((2, 8, 8, 3))
  batch = {"cloudy": jnp.full((2, 8, 8, 3), 0.25), "cloud_mask": jnp.ones((2, 8, 8, 1))}
  plfm = paper[0]
  branches = plfm.head_input(temporal, sar_branch, batch, OpticalScale(0.5, 0.5))
  assert branches.shape == (2, 8, 8, 6) and plfm.head_channels == 6
  # The whole final frame, every row its own (the reference broadcast one row).
  np.testing.assert_allclose(branches[..., :3], 2 * temporal - 1, atol=1e-6)
  assert not np.allclose(branches[:, 0, :, :3], branches[:, 1, :, :3])
  np.testing.assert_array_equal(branches[..., 3:], -1)
  full = plus[0].head_input(temporal, sar_branch, batch, OpticalScale(0.5, 0.5))
  assert full.shape == (2, 8, 8, 10) and plus[0].head_channels == 10
  np.testing.assert_array_equal(full[..., :6], branches)
  np.testing.assert_allclose(full[..., 6:9], -0.5)
  np.testing.assert_array_equal(full[..., 9:], 1)


def test_sar_generator_input():
  sar = jnp.array([0.0, 0.5, 1.0]).reshape(1, 1, 3, 1)
  x = PLFM.sar_generator_input(sar)
  assert x.shape == (1, 1, 3, 3)
  np.testing.assert_array_equal(x, np.broadcast_to(np.array([-1.0, 0.0, 1.0])[None, None, :, None],
                                                   (1, 1, 3, 3)))


def test_composite_keeps_clear_pixels_exactly():
  prediction = jnp.full((1, 2, 2, 3), 0.5)
  cloudy = jnp.array([0.1, 0.2, 0.3, 0.4]).reshape(1, 2, 2, 1) * jnp.ones(3)
  mask = jnp.array([0.0, 1.0, 1.0, 0.0]).reshape(1, 2, 2, 1)
  out = np.asarray(composite(prediction, cloudy, mask))
  np.testing.assert_array_equal(out[0, 0, 0], np.asarray(cloudy)[0, 0, 0])
  np.testing.assert_array_equal(out[0, 1, 1], np.asarray(cloudy)[0, 1, 1])
  np.testing.assert_array_equal(out[0, 0, 1], 0.5)
  np.testing.assert_array_equal(out[0, 1, 0], 0.5)


def test_count_variables():
  tree = {"params": {"a": np.zeros((2, 3)), "b": {"c": np.zeros(4)}},
          "batch_stats": {"m": jax.ShapeDtypeStruct((5,), jnp.float32)}}
  assert count_variables(tree) == 15


def test_calibration_weighs_the_correction_by_the_clear_pixels():
  rng = np.random.default_rng(0)
  prior = jnp.asarray(rng.uniform(0.1, 0.3, (1, 8, 8, 3)), jnp.float32)
  truth = prior + jnp.asarray(rng.normal(0, 0.02, (1, 8, 8, 3)), jnp.float32)
  mask = np.zeros((1, 8, 8, 1), np.float32)
  mask[:, :4] = 1
  batch = {"cloudy": jnp.where(mask > 0, 0.9, truth), "cloud_mask": jnp.asarray(mask)}
  exact = truth - prior
  np.testing.assert_allclose(PLFM.calibration(exact, prior, batch), 1.0, rtol=1e-5)
  np.testing.assert_allclose(PLFM.calibration(2 * exact, prior, batch), 0.5, rtol=1e-5)
  np.testing.assert_array_equal(PLFM.calibration(-exact, prior, batch), 0.0)
  np.testing.assert_array_equal(PLFM.calibration(jnp.zeros_like(exact), prior, batch), 0.0)
  # Per band: a correction right in band 0 and wrong in the others.
  mixed = exact * jnp.array([1.0, -1.0, -1.0])
  np.testing.assert_allclose(PLFM.calibration(mixed, prior, batch)[0, 0, 0], [1, 0, 0], atol=1e-5)


def test_calibrated_correction_only_in_inference():
  plfm, variables = build("demo")
  assert plfm.calibrate_temporal
  # A non-zero correction: perturb the last convolution of the temporal branch.
  temporal = jax.tree.map(np.array, variables["temporal"])
  last = max(k for k in temporal["params"] if k.startswith("Conv_"))
  temporal["params"][last]["bias"] = np.array([0.5, -0.5, 0.2], np.float32)
  variables = {**variables, "temporal": temporal}
  batch = random_batch(2, SIZE, seed=6)
  forward = jax.jit(plfm.forward, static_argnames="train")
  trained, _ = forward(variables, batch, train=frozenset({"temporal"}))
  inferred, _ = forward(variables, batch)
  scale = plfm.optical_scale(batch)
  correction = trained["temporal"] - trained["prior"]
  assert np.abs(correction).max() > 0.01
  expected = np.clip(trained["prior"] + plfm.calibration(
      scale.std * np.array([0.5, -0.5, 0.2]), trained["prior"], batch)
      * scale.std * np.array([0.5, -0.5, 0.2]), 0, 1)
  np.testing.assert_allclose(inferred["temporal"], expected, atol=1e-5)


def test_without_sar_the_fused_image_is_the_temporal_branchs(plus):
  plfm, variables = plus
  batch = random_batch(2, SIZE)
  optical = {k: v for k, v in batch.items() if k != "sar"}
  out = plfm.predict(variables, optical)
  assert "sar_branch" not in out
  expected = composite(out["temporal"], optical["cloudy"], optical["cloud_mask"])
  np.testing.assert_array_equal(out["fused"], expected)
  np.testing.assert_array_equal(out["composite"], expected)
  # The temporal branch does not read the SAR: it is the same with it.
  np.testing.assert_array_equal(plfm.predict(variables, batch)["temporal"], out["temporal"])
