"""The generic stage-wise trainer: `train(config, workdir)` runs every configured stage.

Each stage resumes from its newest checkpoint, validates every epoch, keeps its best checkpoint and
stops early after `patience` epochs without improvement. A stage is finished once it has run
`num_epochs` epochs or stopped early, so rerunning the same command continues where it stopped and
skips finished stages (raising num_epochs continues a finished one).
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil
import time
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from plfm_jax import modeling
from plfm_jax import visualize
from plfm_jax.data import pipeline
from plfm_jax.data import tfds_data
from plfm_jax.data import synthetic
from plfm_jax.errors import InputError
from plfm_jax.train import checkpointing
from plfm_jax.train import logs
from plfm_jax.train import parallel
from plfm_jax.train import restore
from plfm_jax.train import steps

# Config fields that may differ between a checkpoint and the run resuming it.
_RESUMABLE_CHANGES = ("train.stages", "train.num_devices", "data.worker_count", "data.tfds_dir",
                      "data.manual_dir")


class TrainingDiverged(InputError):
  """A non-finite loss; the stage stops and its last good checkpoint stays.

  An InputError (one line, exit status 2, no traceback) because what the user must change is an
  input: the config (learning rate, loss weights) or the data.
  """

  def __init__(self, stage_dir: pathlib.Path, what: str, step: int, good_step: int | None):
    kept = ("no checkpoint was saved before it" if good_step is None else
            f"kept the last good checkpoint, step {good_step}")
    super().__init__(stage_dir, f"training diverged: {what} at step {step}; {kept}. Lower "
                     "train.learning_rate or check the data, then rerun to resume (with "
                     "--allow_config_change for a changed config)")


def config_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON data (tuples become lists), as stored in checkpoints."""
  return json.loads(config.to_json())


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """`key: saved -> current` for every field that differs, except those safe to change on resume."""
  saved = traverse_util.flatten_dict(dict(saved), sep=".")
  current = traverse_util.flatten_dict(dict(current), sep=".")
  return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}"
          for k in sorted(set(saved) | set(current))
          if saved.get(k) != current.get(k) and k not in _RESUMABLE_CHANGES]


def prepare_dataset(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> tuple[str, dict]:
  """(TFDS data_dir, examples per split), building `plfm_series` there first when needed.

  With no built dataset, no manual_dir and `data.synthetic` set, a synthetic dataset is written
  into `<workdir>/synthetic` first (the demo's embedded default). Process 0 builds; the others
  wait for it.
  """
  data = config.data
  tfds_dir = data.tfds_dir or str(workdir / "tfds")
  if jax.process_index() == 0:
    manual_dir = data.manual_dir
    if not manual_dir and data.synthetic and not tfds_data.is_built(tfds_dir,
                                                                    image_size=data.stored_size):
      manual_dir = write_synthetic_once(workdir / "synthetic", config)
    tfds_data.ensure_built(tfds_dir, manual_dir=manual_dir or None, image_size=data.stored_size,
                           skip_invalid=data.skip_invalid)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("plfm_dataset_ready")
  builder = tfds_data.ensure_built(tfds_dir, image_size=data.stored_size)
  return tfds_dir, {name: split.num_examples for name, split in builder.info.splits.items()}


def write_synthetic_once(root: pathlib.Path, config: ml_collections.ConfigDict) -> pathlib.Path:
  """Writes the synthetic dataset under a temporary name and renames it: never half a dataset."""
  if not root.exists():
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    synthetic.write_synthetic_dataset(partial, image_size=config.data.stored_size,
                                      seed=config.seed)
    partial.rename(root)
  return root


class StageRunner:
  """Everything the stages of one run share: mesh, models, data location, logs."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
               allow_config_change: bool = False, devices: list | None = None):
    self.config = config
    self.workdir = pathlib.Path(workdir)
    self.allow_config_change = allow_config_change
    if devices is None and config.train.num_devices > 0:
      devices = jax.devices()[:config.train.num_devices]
    self.mesh = parallel.make_mesh(devices)
    parallel.check_batch_size(config.batch_size, self.mesh)
    self.replicated = parallel.replicated(self.mesh)
    self.models = modeling.build_models(config.model)
    self.hyper = steps.Hyper(huber_delta=config.train.huber_delta,
                             l1_weight=config.train.l1_weight,
                             head_inputs=config.model.head_inputs)
    tfds_dir, self.splits = prepare_dataset(config, self.workdir)
    self.data_config = config.data.copy_and_resolve_references()
    self.data_config.tfds_dir = tfds_dir
    self.logger = logs.Logger(self.workdir)
    self._fresh_variables = None

  # ---- variables -------------------------------------------------------------------------------

  def fresh_variables(self) -> dict:
    """Initial variables of every component, the same for a seed whichever stage asks."""
    if self._fresh_variables is None:
      self._fresh_variables = modeling.init_variables(
          self.models, jax.random.key(self.config.seed), image_size=self.config.data.image_size,
          series_length=self.config.data.series_length, head_inputs=self.config.model.head_inputs)
    return self._fresh_variables

  def best_variables(self, components) -> dict:
    """Variables of `components` from the best checkpoints of the stages that train them."""
    return restore.best_variables(self.config, self.workdir, components, models=self.models,
                                  sharding=self.replicated)

  # ---- data ------------------------------------------------------------------------------------

  def iterator(self, split: str, *, train: bool) -> Iterator:
    return pipeline.make_iterator(self.data_config, split=split,
                                  global_batch_size=self.config.batch_size, train=train,
                                  seed=self.config.seed, num_epochs=None if train else 1)

  def validation_split(self) -> str:
    return "validation" if self.splits.get("validation") else "train"

  # ---- stages ----------------------------------------------------------------------------------

  def run(self) -> None:
    for name in self.config.train.stages:
      if name not in steps.STAGES:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(steps.STAGES)}")
    if self.validation_split() == "train":
      print("note: the dataset has no validation split; early stopping watches the training split")
    try:
      for name in self.config.train.stages:
        self.run_stage(steps.STAGES[name])
    finally:
      self.logger.close()

  def run_stage(self, spec: steps.StageSpec) -> None:
    cfg = self.config.train
    optimizers = steps.make_optimizers(cfg, spec)
    variables = {**self.fresh_variables(), **self.best_variables(spec.warm_start)}
    state = parallel.replicate(steps.init_state(variables, spec, optimizers), self.mesh)
    frozen = parallel.replicate(self.best_variables(spec.frozen), self.mesh)
    progress = {"epoch": 0, "best_loss": math.inf, "bad_epochs": 0, "data_state": None}

    ckpts = checkpointing.StageCheckpoints(self.workdir, spec.name, keep=cfg.keep_checkpoints)
    stage_dir = self.workdir / "checkpoints" / spec.name
    current_config = config_dict(self.config)
    restored = ckpts.latest(checkpointing.abstract_like(state, self.replicated))
    if restored is not None:
      state, progress, saved_config = restored
      changes = config_changes(saved_config, current_config)
      if changes and not self.allow_config_change:
        ckpts.close()
        raise InputError(stage_dir,
                         "the config differs from the checkpoint's (" + "; ".join(changes)
                         + "); pass --allow_config_change to resume anyway")

    steps_per_epoch = cfg.steps_per_epoch
    if steps_per_epoch <= 0:
      steps_per_epoch = max(1, self.splits["train"] // self.config.batch_size)
    total_steps = cfg.num_epochs * steps_per_epoch
    finished = lambda: progress["bad_epochs"] >= cfg.patience or int(state["step"]) >= total_steps
    if finished():
      print(f"stage {spec.name}: finished earlier (best validation loss "
            f"{progress['best_loss']:.5f}); skipping")
      ckpts.close()
      return

    train_iter = self.iterator("train", train=True)
    if progress["data_state"] is not None:
      train_iter.set_state(progress["data_state"])
    train_step, validate = self._compile(spec, optimizers)

    step = int(state["step"])
    if restored is not None:
      print(f"stage {spec.name}: resuming from step {step} (epoch {progress['epoch']})")
    bar = tqdm(total=total_steps, initial=step, desc=spec.name, unit="step",
               disable=jax.process_index() != 0, dynamic_ncols=True)
    last_log, last_log_step = time.perf_counter(), step
    try:
      while step < total_steps:
        batch = parallel.global_batch(next(train_iter), self.mesh)
        state, metrics = train_step(state, frozen, batch)
        step += 1
        bar.update(1)
        epoch_end = step % steps_per_epoch == 0
        # Checked before every checkpoint too, so that no checkpoint holds a diverged state.
        if (step % cfg.log_every_steps == 0 or epoch_end
            or step % cfg.checkpoint_every_steps == 0):
          values = {k: float(v) for k, v in jax.device_get(metrics).items()}
          bad = {k: v for k, v in values.items() if not math.isfinite(v)}
          if bad:
            raise TrainingDiverged(stage_dir, "non-finite " + ", ".join(
                f"{k} ({v})" for k, v in bad.items()), step, ckpts.last.latest_step())
          now = time.perf_counter()
          rate = (step - last_log_step) * self.config.batch_size / max(now - last_log, 1e-9)
          last_log, last_log_step = now, step
          self.logger.scalars(step, {**values, "samples_per_second": rate},
                              f"{spec.name}/train")
          bar.set_postfix(loss=f"{values['loss']:.4f}", samples_s=f"{rate:.1f}")
        if epoch_end:
          progress["epoch"] = step // steps_per_epoch
          loss = self.validate(spec, validate, {**frozen, **state["variables"]}, step)
          if not math.isfinite(loss):
            raise TrainingDiverged(stage_dir, f"non-finite validation loss ({loss})", step,
                                   ckpts.last.latest_step())
          improved = loss < progress["best_loss"]
          if improved:
            progress["best_loss"], progress["bad_epochs"] = loss, 0
          else:
            progress["bad_epochs"] += 1
          bar.write(f"stage {spec.name} epoch {progress['epoch']}: validation loss {loss:.5f}"
                    + (" (best)" if improved else f" ({progress['bad_epochs']} without improvement)"))
          progress["data_state"] = train_iter.get_state()
          ckpts.save(step, state, progress, current_config, best=improved)
          # The next rate measures training only, not validation and its compilation.
          last_log, last_log_step = time.perf_counter(), step
          if finished():
            break
        elif step % cfg.checkpoint_every_steps == 0:
          progress["data_state"] = train_iter.get_state()
          ckpts.save(step, state, progress, current_config, best=False)
    finally:
      bar.close()
      ckpts.wait()
      ckpts.close()
    reason = "early stopping" if progress["bad_epochs"] >= cfg.patience else "last epoch"
    print(f"stage {spec.name}: done after {progress['epoch']} epochs ({reason}); best validation "
          f"loss {progress['best_loss']:.5f}")

  def _compile(self, spec: steps.StageSpec, optimizers) -> tuple:
    train_step, per_sample = steps.jit_steps(self.models, spec, self.hyper, optimizers,
                                             self.replicated, parallel.batch_sharded(self.mesh))

    @jax.jit
    def weighted_sums(variables, batch, weights):
      losses = per_sample(variables, batch)
      return {k: jnp.sum(v * weights) for k, v in losses.items()}, jnp.sum(weights)

    return train_step, weighted_sums

  def validate(self, spec: steps.StageSpec, weighted_sums, variables: dict, step: int) -> float:
    """Mean validation loss over the validation split (or `validation_steps` batches).

    Every process runs the same number of batches (the global count), padding with zero-weight
    samples where its shard is shorter, so the jitted steps stay in lockstep across hosts.
    """
    split = self.validation_split()
    num_batches = math.ceil(self.splits[split] / self.config.batch_size)
    if self.config.train.validation_steps >= 0:
      num_batches = min(num_batches, self.config.train.validation_steps)
    local_size = self.config.batch_size // jax.process_count()
    local_batches = self.iterator(split, train=False)
    totals, count, first = {}, 0.0, None
    for _ in range(num_batches):
      local = next(local_batches, None)
      if local is None and first is None:
        raise ValueError(f"the {split} split has fewer samples than there are processes")
      if local is None:  # This process's shard is one batch shorter than the longest.
        local, weights = first, np.zeros((local_size,), np.float32)
      else:
        local, weights = pad_batch(local, local_size)
        first = local if first is None else first
      batch = parallel.global_batch(local, self.mesh)
      sums, n = weighted_sums(variables, batch,
                              parallel.global_batch({"w": weights}, self.mesh)["w"])
      for k, v in jax.device_get(sums).items():
        totals[k] = totals.get(k, 0.0) + float(v)
      count += float(n)
    means = {k: v / max(count, 1.0) for k, v in totals.items()}
    self.logger.scalars(step, means, f"{spec.name}/validation")
    if first is not None and jax.process_index() == 0:
      self.write_samples(spec, variables, first, step)
    return means["loss"]

  def write_samples(self, spec: steps.StageSpec, variables: dict, local: dict, step: int) -> None:
    """cloudy | prediction | ground truth panel to TensorBoard and `<workdir>/samples/<stage>.png`."""
    n = min(4, local["target"].shape[0])
    few = {k: v[:n] for k, v in local.items()}
    prediction = steps.stage_prediction(jax.device_get(variables), few, models=self.models,
                                        spec=spec, hyper=self.hyper)
    image = visualize.panel({"cloudy": few["cloudy"], "prediction": np.asarray(prediction),
                             "ground truth": few["target"]})
    self.logger.image(step, f"{spec.name}/samples", image)
    visualize.save_png(self.workdir / "samples" / f"{spec.name}.png", image)


def pad_batch(local: Mapping[str, np.ndarray], size: int) -> tuple[dict, np.ndarray]:
  """Pads a short last batch to `size` by repeating its last sample; weights mark the real ones."""
  n = next(iter(local.values())).shape[0]
  weights = np.zeros((size,), np.float32)
  weights[:n] = 1.0
  if n == size:
    return dict(local), weights
  pad = lambda v: np.concatenate([v, np.repeat(v[-1:], size - n, axis=0)], axis=0)
  return {k: pad(np.asarray(v)) for k, v in local.items()}, weights


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
          allow_config_change: bool = False) -> None:
  """Trains every stage in `config.train.stages` into `workdir` (resuming what is there)."""
  parallel.maybe_initialize_distributed()
  StageRunner(config, workdir, allow_config_change=allow_config_change).run()
