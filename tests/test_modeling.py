"""plfm_jax.modeling: building, initialising and wiring the PLFM components."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.plfm import get_config
from plfm_jax import modeling

SIZE = 32
SERIES_LENGTH = 4
PAPER_COUNTS = {"temporal": 1159139, "generator": 66626819, "discriminator": 11047809,
                "head": 4173635}


def tiny_model_config(**overrides) -> ml_collections.ConfigDict:
  config = get_config("demo").model
  config.temporal_features = (4, 4, 4)
  config.generator_features = 4
  config.discriminator_features = 4
  config.head_features = 4
  config.update(overrides)
  return config


def make_batch(seed: int = 0, batch_size: int = 2) -> dict[str, jax.Array]:
  keys = jax.random.split(jax.random.key(seed), 5)
  shape = (batch_size, SIZE, SIZE)
  return {
      "history": jax.random.uniform(keys[0], (batch_size, SERIES_LENGTH - 1, *shape[1:], 3)),
      "target": jax.random.uniform(keys[1], (*shape, 3)),
      "cloudy": jax.random.uniform(keys[2], (*shape, 3)),
      "cloud_mask": (jax.random.uniform(keys[3], (*shape, 1)) > 0.5).astype(jnp.float32),
      "sar": jax.random.uniform(keys[4], (*shape, 1)),
  }


@pytest.fixture(scope="module")
def tiny() -> tuple[modeling.PLFMModels, dict]:
  models = modeling.build_models(tiny_model_config(conv_impl="lax"))
  variables = modeling.init_variables(models, jax.random.key(0), image_size=SIZE,
                                      series_length=SERIES_LENGTH)
  return models, variables


_predict = jax.jit(modeling.predict, static_argnames=("models", "head_inputs"))


def test_paper_config_counts():
  models = modeling.build_models(get_config("paper").model)
  shapes = jax.eval_shape(
      functools.partial(modeling.init_variables, models, image_size=256, series_length=4),
      jax.random.key(0))
  assert {name: modeling.count_variables(v) for name, v in shapes.items()} == PAPER_COUNTS
  assert {name: set(v) for name, v in shapes.items()} == {
      name: {"params", "batch_stats"} for name in PAPER_COUNTS}


def test_build_models_settings():
  models = modeling.build_models(tiny_model_config(dtype="bfloat16", conv_impl="auto"))
  auto = "matmul" if jax.default_backend() == "cpu" else "lax"
  for module in (models.temporal, models.generator, models.discriminator, models.head):
    assert module.impl == auto
    assert module.dtype == jnp.bfloat16 and module.param_dtype == jnp.float32
  assert models.temporal.features == (4, 4, 4)
  assert models.head.features == 4
  with pytest.raises(ValueError, match="dtype"):
    modeling.build_models(tiny_model_config(dtype="float16"))
  with pytest.raises(ValueError, match="conv impl"):
    modeling.build_models(tiny_model_config(conv_impl="fft"))


def test_predict_shapes_ranges_and_composite(tiny):
  models, variables = tiny
  batch = make_batch()
  out = _predict(models, variables, batch)
  assert set(out) == {"temporal", "sar", "fused", "composite"}
  for name, image in out.items():
    assert image.shape == (2, SIZE, SIZE, 3) and image.dtype == jnp.float32, name
    assert float(image.min()) >= 0 and float(image.max()) <= 1, name
    assert float(image.std()) > 0, name
  clear = np.broadcast_to(np.asarray(batch["cloud_mask"]) == 0, out["composite"].shape)
  composite = np.asarray(out["composite"])
  np.testing.assert_array_equal(composite[clear], np.asarray(batch["cloudy"])[clear])
  np.testing.assert_array_equal(composite[~clear], np.asarray(out["fused"])[~clear])
  # Inference uses the running statistics: the result does not depend on the rest of the batch.
  other = make_batch(seed=3)
  mixed = _predict(models, variables, jax.tree.map(lambda a, b: a.at[1:].set(b[1:]), batch, other))
  np.testing.assert_allclose(mixed["fused"][:1], out["fused"][:1], atol=1e-6)


def test_gradients_finite_and_nonzero_for_every_parameter(tiny):
  models, variables = tiny
  batch = make_batch(1)

  def loss(params):
    run = lambda name, *x: getattr(models, name).apply(
        {"params": params[name], "batch_stats": variables[name]["batch_stats"]}, *x,
        train=True, mutable=["batch_stats"])[0]
    signed_target = modeling.to_signed(batch["target"])
    temporal = run("temporal", batch["history"])
    sar = run("generator", modeling.sar_generator_input(batch["sar"]))
    fused = run("head", modeling.head_input(temporal, sar))
    logits = run("discriminator", signed_target, modeling.sar_generator_input(batch["sar"]))
    return (jnp.mean((temporal - batch["target"])**2) + jnp.mean(jnp.abs(sar - signed_target))
            + jnp.mean(jnp.abs(fused - signed_target)) + jnp.mean(jax.nn.softplus(-logits)))

  params = {name: v["params"] for name, v in variables.items()}
  grads = jax.jit(jax.grad(loss))(params)
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    name = jax.tree_util.keystr(path)
    assert np.all(np.isfinite(grad)), name
    assert np.any(grad != 0), name


def test_bfloat16_compute_keeps_float32_params(tiny):
  models32, variables = tiny
  models16 = modeling.build_models(tiny_model_config(conv_impl="lax", dtype="bfloat16"))
  shapes16 = jax.eval_shape(
      functools.partial(modeling.init_variables, models16, image_size=SIZE,
                        series_length=SERIES_LENGTH), jax.random.key(0))
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes16)} == {jnp.dtype(jnp.float32)}
  batch = make_batch(2)
  out16 = _predict(models16, variables, batch)
  out32 = _predict(models32, variables, batch)
  for name in out32:
    assert out16[name].dtype == jnp.float32
    assert np.all(np.isfinite(out16[name])), name
    error = np.abs(np.asarray(out16[name]) - np.asarray(out32[name]))
    assert error.mean() < 0.02 and error.max() < 0.15, (name, error.mean(), error.max())


def test_head_input_channels_and_full_temporal_frame():
  temporal = jnp.linspace(0, 1, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)
  sar_fake = -jnp.ones((2, 8, 8, 3))
  cloudy = jnp.full((2, 8, 8, 3), 0.25)
  mask = jnp.ones((2, 8, 8, 1))
  branches = modeling.head_input(temporal, sar_fake)
  assert branches.shape == (2, 8, 8, 6) == (2, 8, 8, modeling.head_channels("branches"))
  # The whole final frame, every row its own (the reference broadcast one row).
  np.testing.assert_allclose(branches[..., :3], 2 * temporal - 1, atol=1e-6)
  assert not np.allclose(branches[:, 0, :, :3], branches[:, 1, :, :3])
  np.testing.assert_array_equal(branches[..., 3:], sar_fake)
  full = modeling.head_input(temporal, sar_fake, cloudy, mask, head_inputs="branches+cloudy")
  assert full.shape == (2, 8, 8, 10) == (2, 8, 8, modeling.head_channels("branches+cloudy"))
  np.testing.assert_array_equal(full[..., :6], branches)
  np.testing.assert_allclose(full[..., 6:9], -0.5)
  np.testing.assert_array_equal(full[..., 9:], 1)
  with pytest.raises(ValueError, match="needs cloudy"):
    modeling.head_input(temporal, sar_fake, head_inputs="branches+cloudy")
  with pytest.raises(ValueError, match="head_inputs"):
    modeling.head_input(temporal, sar_fake, head_inputs="all")


def test_init_variables_head_channels_follow_head_inputs():
  models = modeling.build_models(tiny_model_config())
  shapes = jax.eval_shape(
      functools.partial(modeling.init_variables, models, image_size=SIZE,
                        series_length=SERIES_LENGTH, head_inputs="branches+cloudy"),
      jax.random.key(0))
  assert shapes["head"]["params"]["Conv_0"]["kernel"].shape == (4, 4, 10, 4)
  assert shapes["temporal"]["params"]["ConvLSTM2D_0"]["kernel"].shape == (3, 3, 3, 16)


def test_sar_generator_input_and_range_maps():
  sar = jnp.array([0.0, 0.5, 1.0]).reshape(1, 1, 3, 1)
  x = modeling.sar_generator_input(sar)
  assert x.shape == (1, 1, 3, 3)
  np.testing.assert_array_equal(x, np.broadcast_to(np.array([-1.0, 0.0, 1.0])[None, None, :, None],
                                                   (1, 1, 3, 3)))
  np.testing.assert_array_equal(modeling.to_unit(modeling.to_signed(sar)), sar)


def test_composite_keeps_clear_pixels_exactly():
  prediction = jnp.full((1, 2, 2, 3), 0.5)
  cloudy = jnp.array([0.1, 0.2, 0.3, 0.4]).reshape(1, 2, 2, 1) * jnp.ones(3)
  mask = jnp.array([0.0, 1.0, 1.0, 0.0]).reshape(1, 2, 2, 1)
  out = np.asarray(modeling.composite(prediction, cloudy, mask))
  np.testing.assert_array_equal(out[0, 0, 0], np.asarray(cloudy)[0, 0, 0])
  np.testing.assert_array_equal(out[0, 1, 1], np.asarray(cloudy)[0, 1, 1])
  np.testing.assert_array_equal(out[0, 0, 1], 0.5)
  np.testing.assert_array_equal(out[0, 1, 0], 0.5)


def test_count_variables():
  tree = {"params": {"a": np.zeros((2, 3)), "b": {"c": np.zeros(4)}},
          "batch_stats": {"m": jax.ShapeDtypeStruct((5,), jnp.float32)}}
  assert modeling.count_variables(tree) == 15
