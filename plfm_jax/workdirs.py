"""A training workdir as training, evaluation and inference read it: its config and trained variables.

The trainer writes `<workdir>/checkpoints/<stage>/` (`plfm_jax.checkpoints`); here
are the reading side and the one policy on how a config may differ from a workdir's:

  - `resume_changes`: resuming training, every field must match but those saying where the run
    reads its data and on which devices and stages it runs (RUN_FIELDS);
  - `model_changes`: using a trained model (evaluation, inference), the fields that define what
    the variables mean (MODEL_FIELDS) must match; other model fields (compute dtype,
    convolution implementation, time loop) only change the numerics and are reported.
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any, Iterable, Mapping

from flax import traverse_util
import jax
import ml_collections

from plfm_jax.checkpoints import StageCheckpoints
from plfm_jax.data.layout import SERIES_LENGTH
from plfm_jax import stages
from plfm_jax.errors import InputError
from plfm_jax.models.plfm import PLFM

# Fields that never need to match: where the data is, how it is read, which devices and stages.
RUN_FIELDS = ("train.stages", "train.num_devices", "data.worker_count", "data.read_threads",
              "data.prefetch_buffer_size", "data.tfds_dir", "data.manual_dir")
# Fields that define what trained variables mean: a model is only usable with these as trained.
MODEL_FIELDS = ("model.temporal_features", "model.generator_features",
                "model.discriminator_features", "model.head_features", "model.head_inputs",
                "model.temporal_prior", "model.match_history", "model.head_output",
                "model.calibrate_temporal", "model.keep_clear_pixels", "model.standardize",
                "model.norm", "data.s2_normalization")


def config_dict(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict:
  """The config as plain JSON data (tuples become lists), as checkpoints store it."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json())
  return json.loads(json.dumps(config))


def _changes(saved: Mapping[str, Any], current: Mapping[str, Any],
             keep: Any) -> list[str]:
  saved = traverse_util.flatten_dict(config_dict(saved), sep=".")
  current = traverse_util.flatten_dict(config_dict(current), sep=".")
  return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}"
          for k in sorted(set(saved) | set(current))
          if saved.get(k) != current.get(k) and keep(k)]


def resume_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """`field: saved -> current` for every field that forbids resuming `saved`'s training."""
  return _changes(saved, current, lambda k: k not in RUN_FIELDS)


def model_changes(saved: Mapping[str, Any],
                  current: Mapping[str, Any]) -> tuple[list[str], list[str]]:
  """(changes that make a trained model unusable, model changes that only alter numerics)."""
  fatal = _changes(saved, current, lambda k: k in MODEL_FIELDS)
  notes = _changes(saved, current, lambda k: k.startswith("model.") and k not in MODEL_FIELDS)
  return fatal, notes


def check_model_config(config: ml_collections.ConfigDict,
                       workdir: str | pathlib.Path) -> list[str]:
  """Notes on harmless model differences between `config` and `workdir`'s trained model.

  Raises:
    InputError: no trained model in `workdir`, or a field of MODEL_FIELDS differs.
  """
  fatal, notes = model_changes(saved_config(workdir), config)
  if fatal:
    raise InputError(workdir, "the config differs from the one the model was trained with ("
                     + "; ".join(fatal) + "); pass the training run's --config and overrides")
  return notes


def with_trained_model(config: ml_collections.ConfigDict,
                       trained: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose model (the `model` section and every MODEL_FIELDS field) is
  `trained`'s: how a model from a weights file is run on another config's data."""
  result = ml_collections.ConfigDict(config_dict(config))
  result.model = ml_collections.ConfigDict(config_dict(trained.model))
  for field in MODEL_FIELDS:
    section, name = field.split(".")
    result[section][name] = trained[section][name]
  return result




def saved_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config of a workdir's trained model: that of the best checkpoint of its last stage.

  Raises:
    InputError: no best checkpoint in `workdir`.
  """
  workdir = pathlib.Path(workdir)
  found = None
  for stage in stages.STAGES:
    ckpts = StageCheckpoints(workdir, stage, read_only=True)
    try:
      found = ckpts.best_config() or found
    finally:
      ckpts.close()
  if found is None:
    raise InputError(workdir, "no trained model here (no best checkpoint under checkpoints/); "
                     "train one with train.py first")
  return ml_collections.ConfigDict(found[1])


def variable_shapes(config: ml_collections.ConfigDict,
                    model: PLFM | None = None) -> dict[str, Any]:
  """{component: variables as ShapeDtypeStructs} of `config`'s model; nothing is initialised."""
  model = model or PLFM.from_config(config.model)
  return jax.eval_shape(functools.partial(model.init, image_size=config.data.crop_size,
                                          series_length=SERIES_LENGTH), jax.random.key(0))


def best_variables(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                   components: Iterable[str], *, model: PLFM | None = None,
                   sharding: jax.sharding.Sharding | None = None) -> dict[str, dict]:
  """{component: {"params", "batch_stats"}} from the best checkpoint of the stage training it.

  Only the variables are read, not the optimizer's state, so a model trained with other
  optimiser settings loads as well.

  Raises:
    InputError: a needed stage has no best checkpoint in `workdir` yet, or its variables do
      not fit `config`'s model.
  """
  workdir = pathlib.Path(workdir)
  model = model or PLFM.from_config(config.model)
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  shapes = variable_shapes(config, model)
  by_stage: dict[str, list[str]] = {}
  for component in components:
    by_stage.setdefault(stages.COMPONENT_STAGE[component], []).append(component)
  result = {}
  for stage, names in by_stage.items():
    abstract = {name: jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes[name])
                for name in names}
    # Read only: reading never creates checkpoint folders (orbax's managers would, in a
    # background thread that can outlive a process ending on this error).
    ckpts = StageCheckpoints(workdir, stage, read_only=True)
    try:
      restored = ckpts.best_variables(abstract)
    except ValueError as e:  # orbax: the saved tree does not fit the model's
      raise InputError(workdir / "checkpoints" / stage,
                       "the best checkpoint's variables do not fit the configured model; "
                       "pass the config it was trained with") from e
    finally:
      ckpts.close()
    if restored is None:
      raise InputError(workdir / "checkpoints" / stage,
                       f"no best checkpoint of stage {stage!r}, which provides the "
                       f"{' and '.join(names)}; run that stage first "
                       f"(--config.train.stages={stage})")
    result.update(restored)
  return result
