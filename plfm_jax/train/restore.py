"""Trained variables from a workdir's checkpoints, for later stages, evaluation and inference."""

from __future__ import annotations

import json

import pathlib
from typing import Iterable

import jax
import ml_collections

from plfm_jax import modeling
from plfm_jax.errors import InputError
from plfm_jax.train import checkpointing
from plfm_jax.train import steps


def abstract_stage_state(config: ml_collections.ConfigDict, models: modeling.PLFMModels,
                         spec: steps.StageSpec) -> dict:
  """Shapes and dtypes of a stage's state as its checkpoints hold it (nothing is computed)."""
  optimizers = steps.make_optimizers(config.train, spec)
  return jax.eval_shape(lambda: steps.init_state(
      modeling.init_variables(models, jax.random.key(0), image_size=config.data.image_size,
                              series_length=config.data.series_length,
                              head_inputs=config.model.head_inputs), spec, optimizers))


def best_variables(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                   components: Iterable[str], *, models: modeling.PLFMModels | None = None,
                   sharding: jax.sharding.Sharding | None = None) -> dict[str, dict]:
  """{component: {"params", "batch_stats"}} from the best checkpoint of the stage training it.

  Raises:
    InputError: a needed stage has no best checkpoint in `workdir` yet.
  """
  workdir = pathlib.Path(workdir)
  models = models or modeling.build_models(config.model)
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  by_stage: dict[str, list[str]] = {}
  for component in components:
    by_stage.setdefault(steps.COMPONENT_STAGE[component], []).append(component)
  result = {}
  for stage, names in by_stage.items():
    template = abstract_stage_state(config, models, steps.STAGES[stage])
    ckpts = checkpointing.StageCheckpoints(workdir, stage)
    try:
      restored = ckpts.latest(checkpointing.abstract_like(template, sharding), best=True)
    finally:
      ckpts.close()
    if restored is None:
      raise InputError(workdir / "checkpoints" / stage,
                       f"no best checkpoint of stage {stage!r}, which provides the "
                       f"{' and '.join(names)}; run that stage first "
                       f"(--config.train.stages={stage})")
    result.update({name: restored[0]["variables"][name] for name in names})
  return result


def saved_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config a workdir's models were trained with (from the newest best checkpoint)."""
  workdir = pathlib.Path(workdir)
  newest = None
  for stage in steps.STAGES:
    best = workdir / "checkpoints" / stage / "best"
    steps_saved = [p for p in best.iterdir() if p.name.isdigit()] if best.is_dir() else []
    for step_dir in steps_saved:
      config_file = step_dir / "config" / "metadata"
      if config_file.is_file() and (newest is None or
                                    config_file.stat().st_mtime > newest.stat().st_mtime):
        newest = config_file
  if newest is None:
    raise InputError(workdir, "no trained model here (no best checkpoint under checkpoints/); "
                     "train one with train.py first")
  return ml_collections.ConfigDict(json.loads(newest.read_text()))
