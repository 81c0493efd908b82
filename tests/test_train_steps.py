"""Stage step functions: what each stage updates, and data parallelism equal to one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import plfm as plfm_config
from plfm_jax import modeling
from plfm_jax.train import parallel
from plfm_jax.train import steps

IMAGE = 32


def tiny_config():
  config = plfm_config.get_config("demo")
  config.model.temporal_features = (4, 4, 4)
  config.model.generator_features = 4
  config.model.discriminator_features = 4
  config.model.head_features = 4
  config.data.image_size = IMAGE
  return config


def random_batch(batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  u = lambda *shape: rng.uniform(size=shape).astype(np.float32)
  return {"history": u(batch_size, 3, IMAGE, IMAGE, 3), "target": u(batch_size, IMAGE, IMAGE, 3),
          "cloudy": u(batch_size, IMAGE, IMAGE, 3),
          "cloud_mask": (u(batch_size, IMAGE, IMAGE, 1) > 0.5).astype(np.float32),
          "sar": u(batch_size, IMAGE, IMAGE, 1)}


@pytest.fixture(scope="module")
def setup():
  config = tiny_config()
  models = modeling.build_models(config.model)
  variables = modeling.init_variables(models, jax.random.key(0), image_size=IMAGE,
                                      series_length=4)
  return config, models, variables


def _leaves_changed(a, b) -> list[bool]:
  return [not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]


@pytest.mark.parametrize("stage", ["temporal", "gan", "head", "joint"])
def test_step_updates_exactly_the_trainable_components(setup, stage):
  config, models, variables = setup
  spec = steps.STAGES[stage]
  optimizers = steps.make_optimizers(config.train, spec)
  state = steps.init_state(variables, spec, optimizers)
  frozen = {c: variables[c] for c in spec.frozen}
  before = jax.device_get(state)
  new_state, metrics = jax.jit(lambda s, f, b: steps.train_step(
      s, f, b, models=models, spec=spec, hyper=steps.Hyper(), optimizers=optimizers))(
          state, frozen, random_batch(2))
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


def test_validation_losses_per_sample(setup):
  config, models, variables = setup
  batch = random_batch(3)
  for stage in ("temporal", "gan", "head"):
    validate = jax.jit(lambda v, b: steps.validation_losses(
        v, b, models=models, spec=steps.STAGES[stage], hyper=steps.Hyper()))
    losses = validate(variables, batch)
    assert losses["loss"].shape == (3,)
    one = validate(variables, {k: v[1:2] for k, v in batch.items()})
    np.testing.assert_allclose(losses["loss"][1], one["loss"][0], rtol=1e-5)


_DATA_PARALLEL_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np, optax
    sys.path.insert(0, {tests!r})
    from test_train_steps import random_batch, tiny_config
    from plfm_jax import modeling
    from plfm_jax.train import parallel, steps
    assert jax.device_count() == 8, jax.devices()
    config = tiny_config()
    models = modeling.build_models(config.model)
    variables = modeling.init_variables(models, jax.random.key(0), image_size=32, series_length=4)
    report = {{}}
    for stage in ("gan", "head"):
      spec = steps.STAGES[stage]
      results = []
      for devices in (jax.devices()[:1], jax.devices()):
        mesh = parallel.make_mesh(devices)
        # SGD, not Adam: parameters whose true gradient is zero (conv biases before BatchNorm)
        # get gradients of pure rounding noise, which Adam rescales into full +-lr steps.
        optimizers = {{name: optax.sgd(0.01) for name in spec.trainable}}
        state = parallel.replicate(steps.init_state(variables, spec, optimizers), mesh)
        frozen = parallel.replicate({{c: variables[c] for c in spec.frozen}}, mesh)
        train, _ = steps.jit_steps(models, spec, steps.Hyper(), optimizers,
                                   parallel.replicated(mesh), parallel.batch_sharded(mesh))
        for i in range(3):
          batch = parallel.global_batch(random_batch(8, seed=i), mesh)
          state, _ = train(state, frozen, batch)
        results.append(jax.device_get(state["variables"]))
      diffs = [float(np.max(np.abs(a - b))) for a, b in
               zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]))]
      scale = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(results[0]))
      report[stage] = {{"max_diff": max(diffs), "scale": scale}}
    print(json.dumps(report))
""")


def test_eight_devices_match_one_device():
  # Needs its own process: the device count is fixed when JAX starts.
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "PYTHONPATH": os.pathsep.join([os.path.dirname(tests_dir), tests_dir])}
  script = _DATA_PARALLEL_SCRIPT.format(tests=tests_dir)
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert set(report) == {"gan", "head"}
  for stage, result in report.items():
    assert result["max_diff"] <= 1e-4 * max(1.0, result["scale"]), (stage, result)
