"""Stage step functions: what each stage updates, and data parallelism equal to one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from plfm_jax.models.plfm import PLFM
from plfm_jax.train import losses
from plfm_jax import stages
from plfm_jax.train import steps
from tests.tiny import random_batch, tiny_config

IMAGE = 32


def build(variant: str = "paper", **model) -> tuple:
  config = tiny_config(variant, size=IMAGE, **model)
  plfm = PLFM.from_config(config.model)
  return config, plfm, plfm.init(jax.random.key(0), image_size=IMAGE, series_length=4)


@pytest.fixture(scope="module")
def setup():
  return build("paper")


def _leaves_changed(a, b) -> list[bool]:
  return [not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]


@pytest.mark.parametrize("stage", ["temporal", "gan", "head", "joint"])
def test_step_updates_exactly_the_trainable_components(setup, stage):
  config, plfm, variables = setup
  spec = stages.STAGES[stage]
  optimizers = steps.make_optimizers(config.train, spec)
  state = steps.init_state(variables, spec, optimizers)
  frozen = {c: variables[c] for c in spec.frozen}
  before = jax.device_get(state)
  new_state, metrics = jax.jit(lambda s, f, b: steps.train_step(
      s, f, b, model=plfm, spec=spec, hyper=steps.Hyper(), optimizers=optimizers))(
          state, frozen, random_batch(2, IMAGE))
  assert int(new_state["step"]) == 1
  assert set(new_state["variables"]) == set(spec.trainable)
  for name in spec.trainable:
    changed = _leaves_changed(before["variables"][name]["params"],
                              new_state["variables"][name]["params"])
    assert all(changed), f"{stage}: some {name} parameters did not move"
  assert all(np.isfinite(float(v)) for v in metrics.values())
  expected = {"temporal": {"temporal_huber"},
              "gan": {"discriminator_bce", "generator_l1", "generator_adversarial"},
              "head": {"head_l1"},
              "joint": {"temporal_huber", "discriminator_bce", "generator_l1",
                        "generator_adversarial", "head_l1"}}[stage]
  assert set(metrics) == expected | {"loss"}


@pytest.mark.parametrize("cloud_loss_weight", [1.0, 4.0])
def test_validation_losses_per_sample(setup, cloud_loss_weight):
  config, plfm, variables = setup
  batch = random_batch(3, IMAGE)
  hyper = steps.Hyper(cloud_loss_weight=cloud_loss_weight)
  for stage in ("temporal", "gan", "head"):
    validate = jax.jit(lambda v, b: steps.validation_losses(
        v, b, model=plfm, spec=stages.STAGES[stage], hyper=hyper))
    values = validate(variables, batch)
    assert values["loss"].shape == (3,)
    one = validate(variables, {k: v[1:2] for k, v in batch.items()})
    np.testing.assert_allclose(values["loss"][1], one["loss"][0], rtol=1e-5)


def test_cloud_weighted_losses_by_hand():
  prediction = np.zeros((1, 2, 2, 3), np.float32)
  target = np.array([0.1, 0.2, 0.3, 0.4], np.float32).reshape(1, 2, 2, 1) * np.ones(3, np.float32)
  mask = np.array([1, 0, 0, 0], np.float32).reshape(1, 2, 2, 1)
  assert losses.pixel_weights(mask, 1.0) is None
  weights = losses.pixel_weights(mask, 4.0)
  np.testing.assert_allclose(weights.ravel(), [4, 1, 1, 1])
  # (4 * 0.1 + 0.2 + 0.3 + 0.4) / 7 per channel.
  np.testing.assert_allclose(losses.l1(prediction, target, weights), 1.3 / 7, rtol=1e-6)
  np.testing.assert_allclose(losses.l1(prediction, target), 0.25, rtol=1e-6)
  np.testing.assert_allclose(losses.huber(prediction, target, 1.0, weights),
                             (4 * 0.005 + 0.02 + 0.045 + 0.08) / 7, rtol=1e-5)


def test_learning_rate_warmup_and_cosine_decay():
  config = tiny_config("paper")
  assert steps.learning_rate(config.train, 100) == config.train.learning_rate
  config.train.warmup_steps = 10
  schedule = steps.learning_rate(config.train, 110)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10), schedule(60), schedule(110)],
                             np.array([0, 0.5, 1, 0.5, 0]) * config.train.learning_rate,
                             atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("model", [
    {},  # every switch of `plus` (the demo variant)
    {"head_output": "residual", "norm": "batch", "standardize": False,
     "temporal_prior": "matched_mean", "match_history": False},
])
def test_plus_switches_jit_train_and_stay_finite(model):
  config, plfm, variables = build("demo", **model)
  spec = stages.STAGES["joint"]
  optimizers = steps.make_optimizers(config.train, spec, total_steps=200)
  state = steps.init_state(variables, spec, optimizers)
  train = jax.jit(lambda s, b: steps.train_step(s, {}, b, model=plfm, spec=spec,
                                                hyper=steps.Hyper.from_config(config.train),
                                                optimizers=optimizers))
  batch = random_batch(2, IMAGE, seed=5)
  batch["target"] = (0.7 * batch["history"][:, -1] + 0.1).astype(np.float32)
  history = []
  for _ in range(4):
    state, metrics = train(state, batch)
    history.append(jax.device_get(metrics))
  for metrics in history:
    assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  # The warm-up's first step has a learning rate of 0; then the residual outputs move.
  assert history[-1]["head_l1"] != history[1]["head_l1"]
  assert history[-1]["temporal_huber"] != history[1]["temporal_huber"]
  predicted = jax.jit(plfm.predict)(state["variables"], batch)
  assert all(np.all(np.isfinite(v)) for v in predicted.values())


_DATA_PARALLEL_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np, optax
    sys.path.insert(0, {repo!r})
    from tests.tiny import random_batch, tiny_config
    from plfm_jax.models.plfm import PLFM
    from plfm_jax import sharding, stages
    from plfm_jax.train import steps
    assert jax.device_count() == 8, jax.devices()
    config = tiny_config("paper")
    plfm = PLFM.from_config(config.model)
    variables = plfm.init(jax.random.key(0), image_size=32, series_length=4)
    report = {{}}
    for stage in ("gan", "head"):
      spec = stages.STAGES[stage]
      results = []
      # SGD, not Adam: parameters whose true gradient is zero (conv biases before BatchNorm)
      # get gradients of pure rounding noise, which Adam rescales into full +-lr steps.
      optimizers = {{name: optax.sgd(0.01) for name in spec.trainable}}
      start = jax.device_get(steps.init_state(variables, spec, optimizers)["variables"])
      for devices in (jax.devices()[:1], jax.devices()):
        mesh = sharding.make_mesh(devices)
        state = sharding.replicate(steps.init_state(variables, spec, optimizers), mesh)
        frozen = sharding.replicate({{c: variables[c] for c in spec.frozen}}, mesh)
        train, _ = steps.jit_steps(plfm, spec, steps.Hyper(), optimizers,
                                   sharding.replicated(mesh), sharding.batch_sharded(mesh))
        for i in range(3):
          batch = sharding.global_batch(random_batch(8, 32, seed=i), mesh)
          state, _ = train(state, frozen, batch)
        results.append(jax.device_get(state["variables"]))
      one, eight, start = (jax.tree.leaves(x) for x in (*results, start))
      squares = lambda pairs: sum(float(np.sum(np.square(a - b))) for a, b in pairs)
      report[stage] = {{"difference": squares(zip(one, eight)) ** 0.5,
                        "update": squares(zip(one, start)) ** 0.5}}
    print(json.dumps(report))
""")


@pytest.mark.slow
def test_eight_devices_match_one_device():
  # Needs its own process: the device count is fixed when JAX starts.
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "PYTHONPATH": repo}
  script = _DATA_PARALLEL_SCRIPT.format(repo=repo)
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert set(report) == {"gan", "head"}
  # The updates agree to 1%: a batch statistic or a loss taken per device instead of over the
  # global batch moves them by their own size. Not to float32 rounding: the GAN stage amplifies
  # the rounding of per-device convolutions to 0.07% of its update after one step and 0.4%
  # after three on a 2-core AVX2 machine (the head stage: 1e-7), less on AVX-512.
  for stage, result in report.items():
    assert result["update"] > 0, (stage, result)
    assert result["difference"] <= 1e-2 * result["update"], (stage, result)


def test_early_stopping_counts_epochs_without_a_better_loss():
  from plfm_jax.train.trainer import EarlyStopping
  stopping = EarlyStopping(patience=2)
  assert stopping.update(1.0) and stopping.best_loss == 1.0
  assert not stopping.update(1.0) and stopping.bad_epochs == 1 and not stopping.stopped
  assert stopping.update(0.5) and stopping.bad_epochs == 0
  assert not stopping.update(0.7) and not stopping.update(0.6)
  assert stopping.stopped and stopping.best_loss == 0.5


def test_every_component_is_held_by_the_first_stage_that_trains_it():
  assert stages.COMPONENT_STAGE == {"temporal": "temporal", "generator": "gan",
                                    "discriminator": "gan", "head": "head"}
  assert list(stages.STAGES) == ["temporal", "gan", "head", "joint"]
  # Every component a stage reads frozen or starts from comes from an earlier stage.
  order = list(stages.STAGES)
  for spec in stages.STAGES.values():
    for component in (*spec.frozen, *spec.warm_start):
      assert order.index(stages.COMPONENT_STAGE[component]) < order.index(spec.name)


def test_each_stage_is_validated_on_the_output_of_its_last_component():
  assert {name: spec.output for name, spec in stages.STAGES.items()} == {
      "temporal": "temporal", "gan": "sar_branch", "head": "fused", "joint": "fused"}
