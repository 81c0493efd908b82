"""The tiny model settings and random batches the tests share."""

from __future__ import annotations

import functools
import pathlib

import jax
import ml_collections
import numpy as np

from configs.plfm import get_config

# Widths of every tiny model: fast to compile and run on 2 CPU cores.
TINY_MODEL = {"temporal_features": (4, 4, 4), "generator_features": 4,
              "discriminator_features": 4, "head_features": 4}


def tiny_config(variant: str = "demo", *, size: int = 32, **model) -> ml_collections.ConfigDict:
  """`variant` (default demo, i.e. plus) with tiny widths and `size` px crops; `model` overrides
  fields of the model section."""
  config = get_config(variant)
  config.model.update({**TINY_MODEL, **model})
  config.data.crop_size = size
  return config


def tiny_flags(size: int = 32) -> list[str]:
  """The command-line overrides of `tiny_config` for train.py and evaluate.py (stored patches of
  `size` px, read whole)."""
  values = {**{f"model.{k}": v for k, v in TINY_MODEL.items()},
            "data.synthetic_size": size, "data.crop_size": size}
  return [f"--config.{k}={''.join(str(v).split())}" for k, v in values.items()]


def random_batch(batch_size: int = 2, size: int = 32, *, dates: int = 3,
                 seed: int = 0) -> dict[str, np.ndarray]:
  """A float32 batch with the input pipeline's keys and ranges (docs/architecture.md)."""
  rng = np.random.default_rng(seed)
  uniform = lambda *shape: rng.uniform(size=shape).astype(np.float32)
  low = rng.uniform(0, 1000, (batch_size, dates + 1))
  scale = np.stack([low, rng.uniform(500, 5000, low.shape)], -1).astype(np.float32)
  history = uniform(batch_size, dates, size, size, 3)
  cloud_mask = (uniform(batch_size, size, size, 1) > 0.5).astype(np.float32)
  return {"history": history,
          "history_mask": np.zeros((batch_size, dates, size, size, 1), np.float32),
          "history_input": history.copy(),
          "target": uniform(batch_size, size, size, 3),
          "cloudy": uniform(batch_size, size, size, 3),
          "cloud_mask": cloud_mask,
          "truth_mask": cloud_mask.copy(),
          "sar": uniform(batch_size, size, size, 1),
          "s2_scale": scale}


def random_variables(config: ml_collections.ConfigDict, seed: int = 0) -> dict:
  """Random variables of `config`'s model at its crop size, drawn with NumPy: no initialiser to
  compile."""
  from plfm_jax.data.layout import SERIES_LENGTH
  from plfm_jax.models.plfm import PLFM
  shapes = jax.eval_shape(functools.partial(
      PLFM.from_config(config.model).init, image_size=config.data.crop_size,
      series_length=SERIES_LENGTH), jax.random.key(0))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if len(leaf.shape) > 1:
      return rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
    return np.full(leaf.shape, 1.0 if "scale" in name or "var" in name else 0.0, np.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def write_random_workdir(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> pathlib.Path:
  """A workdir whose best checkpoints hold `random_variables(config)` for every stage, written as
  the trainer writes them: what evaluation, export and inference read, without training."""
  from plfm_jax import stages
  from plfm_jax import workdirs
  from plfm_jax.checkpoints import StageCheckpoints
  from plfm_jax.train import steps
  variables = random_variables(config)
  for stage in dict.fromkeys(stages.COMPONENT_STAGE.values()):
    ckpts = StageCheckpoints(workdir, stage)
    spec = stages.STAGES[stage]
    state = steps.init_state(variables, spec, steps.make_optimizers(config.train, spec))
    ckpts.save(1, state, {"epoch": 1}, workdirs.config_dict(config), improved_loss=0.0)
    ckpts.wait()
    ckpts.close()
  return workdir
