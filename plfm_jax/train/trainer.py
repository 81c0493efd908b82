"""The generic stage-wise trainer: `train(config, workdir)` runs every configured stage.

Each stage resumes from its newest checkpoint, validates its starting point and every epoch,
keeps its best checkpoint and stops early after `patience` epochs without improvement. A stage is
finished once it has run `num_epochs` epochs or stopped early, so rerunning the same command
continues where it stopped and skips finished stages (raising num_epochs continues a finished one).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Iterator

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from plfm_jax import sharding
from plfm_jax import stages
from plfm_jax import visualize
from plfm_jax import workdir as workdir_lib
from plfm_jax.checkpoints import StageCheckpoints, abstract_like
from plfm_jax.data import pipeline
from plfm_jax.data.layout import SERIES_LENGTH
from plfm_jax.errors import InputError, TrainingDiverged
from plfm_jax.models.plfm import PLFM
from plfm_jax.prepare import prepare_dataset
from plfm_jax.train import logs
from plfm_jax.train import steps


@dataclasses.dataclass
class EarlyStopping:
  """The best validation loss of a stage so far and the epochs since it last improved."""
  patience: int
  best_loss: float = math.inf
  bad_epochs: int = 0

  def update(self, loss: float) -> bool:
    """Records an epoch's validation loss; whether it is the best so far."""
    if loss < self.best_loss:
      self.best_loss, self.bad_epochs = loss, 0
      return True
    self.bad_epochs += 1
    return False

  @property
  def stopped(self) -> bool:
    return self.bad_epochs >= self.patience


class StageRunner:
  """Everything the stages of one run share: mesh, models, data location, logs."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
               allow_config_change: bool = False, devices: list | None = None):
    self.config = config
    self.workdir = pathlib.Path(workdir)
    self.allow_config_change = allow_config_change
    self.mesh = sharding.config_mesh(config, devices)
    self.replicated = sharding.replicated(self.mesh)
    self.model = PLFM.from_config(config.model)
    self.hyper = steps.Hyper.from_config(config.train)
    tfds_dir, self.splits = prepare_dataset(config, self.workdir)
    self.data_config = config.data.copy_and_resolve_references()
    self.data_config.tfds_dir = tfds_dir
    self.logger = logs.Logger(self.workdir)
    self._fresh_variables = None

  # ---- variables -------------------------------------------------------------------------------

  def fresh_variables(self) -> dict:
    """Initial variables of every component, the same for a seed whichever stage asks."""
    if self._fresh_variables is None:
      self._fresh_variables = self.model.init(
          jax.random.key(self.config.seed), image_size=self.config.data.crop_size,
          series_length=SERIES_LENGTH)
    return self._fresh_variables

  def best_variables(self, components) -> dict:
    """Variables of `components` from the best checkpoints of the stages that train them."""
    return workdir_lib.best_variables(self.config, self.workdir, components, model=self.model,
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
      if name not in stages.STAGES:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(stages.STAGES)}")
    if self.validation_split() == "train":
      _status("note: the dataset has no validation split; early stopping watches the training "
              "split")
    try:
      for name in self.config.train.stages:
        self.run_stage(stages.STAGES[name])
    finally:
      self.logger.close()

  def run_stage(self, spec: stages.StageSpec) -> None:
    cfg = self.config.train
    steps_per_epoch = cfg.steps_per_epoch
    if steps_per_epoch <= 0:
      steps_per_epoch = max(1, self.splits["train"] // self.config.batch_size)
    total_steps = cfg.num_epochs * steps_per_epoch
    optimizers = steps.make_optimizers(cfg, spec, total_steps)
    variables = {**self.fresh_variables(), **self.best_variables(spec.warm_start)}
    state = sharding.replicate(steps.init_state(variables, spec, optimizers), self.mesh)
    frozen = sharding.replicate(self.best_variables(spec.frozen), self.mesh)
    progress = {"epoch": 0, "best_loss": math.inf, "bad_epochs": 0, "data_state": None}

    ckpts = StageCheckpoints(self.workdir, spec.name, keep=cfg.keep_checkpoints)
    stage_dir = self.workdir / "checkpoints" / spec.name
    current_config = workdir_lib.config_dict(self.config)
    restored = ckpts.latest(abstract_like(state, self.replicated))
    if restored is not None:
      state, progress, saved_config = restored
      changes = workdir_lib.resume_changes(saved_config, current_config)
      if changes and not self.allow_config_change:
        ckpts.close()
        raise InputError(stage_dir,
                         "the config differs from the checkpoint's (" + "; ".join(changes)
                         + "); pass --allow_config_change to resume anyway")

    stopping = EarlyStopping(cfg.patience, progress["best_loss"], progress["bad_epochs"])
    if stopping.stopped or int(state["step"]) >= total_steps:
      _status(f"stage {spec.name}: finished earlier (best validation loss "
              f"{stopping.best_loss:.5g}); skipping")
      ckpts.close()
      return

    train_iter = self.iterator("train", train=True)
    if progress["data_state"] is not None:
      train_iter.set_state(progress["data_state"])
    train_step, validate = self._compile(spec, optimizers)

    def save(step: int, *, best: bool) -> None:
      progress.update(best_loss=stopping.best_loss, bad_epochs=stopping.bad_epochs,
                      data_state=train_iter.get_state())
      ckpts.save(step, state, progress, current_config, best=best)

    def validation_loss(step: int) -> float:
      loss = self.validate(spec, validate, {**frozen, **state["variables"]}, step)
      if not math.isfinite(loss):
        raise TrainingDiverged(stage_dir, f"non-finite validation loss ({loss})", step,
                               ckpts.last.latest_step())
      return loss

    step = int(state["step"])
    if restored is not None:
      _status(f"stage {spec.name}: resuming from step {step} (epoch {progress['epoch']})")
    else:
      # The starting point competes for the best checkpoint too: a residual model starts as
      # its prior and the joint stage as the stage-wise result; training has to beat them.
      stopping.update(validation_loss(step))
      stopping.bad_epochs = 0
      _status(f"stage {spec.name}: validation loss {stopping.best_loss:.5g} before training")
      save(step, best=True)
    bar = tqdm(total=total_steps, initial=step, desc=spec.name, unit="step",
               disable=jax.process_index() != 0, dynamic_ncols=True)
    last_log, last_log_step = time.perf_counter(), step
    try:
      while step < total_steps:
        batch = sharding.global_batch(next(train_iter), self.mesh)
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
          bar.set_postfix(loss=f"{values['loss']:.4g}", samples_s=f"{rate:.1f}")
        if epoch_end:
          progress["epoch"] = step // steps_per_epoch
          loss = validation_loss(step)
          improved = stopping.update(loss)
          _status(f"stage {spec.name} epoch {progress['epoch']}: validation loss {loss:.5g}"
                  + (" (best)" if improved else f" ({stopping.bad_epochs} without improvement)"))
          save(step, best=improved)
          # The next rate measures training only, not validation and its compilation.
          last_log, last_log_step = time.perf_counter(), step
          if stopping.stopped:
            break
        elif step % cfg.checkpoint_every_steps == 0:
          save(step, best=False)
    finally:
      bar.close()
      ckpts.wait()
      ckpts.close()
    reason = "early stopping" if stopping.stopped else "last epoch"
    _status(f"stage {spec.name}: done after {progress['epoch']} epochs ({reason}); best "
            f"validation loss {stopping.best_loss:.5g}")

  def _compile(self, spec: stages.StageSpec, optimizers) -> tuple:
    train_step, per_sample = steps.jit_steps(self.model, spec, self.hyper, optimizers,
                                             self.replicated, sharding.batch_sharded(self.mesh))

    @jax.jit
    def weighted_sums(variables, batch, weights):
      losses = per_sample(variables, batch)
      return {k: jnp.sum(v * weights) for k, v in losses.items()}, jnp.sum(weights)

    return train_step, weighted_sums

  def validate(self, spec: stages.StageSpec, weighted_sums, variables: dict, step: int) -> float:
    """Mean validation loss over the validation split (or `validation_steps` batches), in the
    lock-step, host-padded batches evaluation uses too (`sharding.lockstep_batches`)."""
    split = self.validation_split()
    cap = self.config.train.validation_steps
    totals, count, first = {}, 0.0, None
    for batch, indices in sharding.lockstep_batches(
        self.iterator(split, train=False), num_samples=self.splits[split],
        global_batch_size=self.config.batch_size, mesh=self.mesh,
        max_batches=cap if cap >= 0 else None):
      sums, n = weighted_sums(variables, batch, sharding.valid_rows(indices, self.mesh))
      for k, v in jax.device_get(sums).items():
        totals[k] = totals.get(k, 0.0) + float(v)
      count += float(n)
      first = batch if first is None else first
    means = {k: v / max(count, 1.0) for k, v in totals.items()}
    self.logger.scalars(step, means, f"{spec.name}/validation")
    if first is not None and jax.process_index() == 0:
      self.write_samples(spec, variables, first, step)
    return means["loss"]

  def write_samples(self, spec: stages.StageSpec, variables: dict, batch: dict, step: int) -> None:
    """cloudy | prediction | ground truth panel to TensorBoard and `<workdir>/samples/<stage>.png`."""
    local = sharding.process_local(batch)
    n = min(4, local["target"].shape[0])
    few = {k: v[:n] for k, v in local.items()}
    prediction = _jit_stage_prediction(jax.device_get(variables), few, model=self.model,
                                       spec=spec)
    stretch = visualize.stretch_like(few["target"])
    image = visualize.panel({"cloudy": stretch(few["cloudy"]),
                             "prediction": stretch(prediction),
                             "ground truth": stretch(few["target"])})
    self.logger.image(step, f"{spec.name}/samples", image)
    visualize.save_png(self.workdir / "samples" / f"{spec.name}.png", image)


_jit_stage_prediction = jax.jit(steps.stage_prediction, static_argnames=("model", "spec"))


def _status(message: str) -> None:
  """A status line, from process 0 only: every process runs the same steps."""
  if jax.process_index() == 0:
    tqdm.write(message)


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
          allow_config_change: bool = False) -> None:
  """Trains every stage in `config.train.stages` into `workdir` (resuming what is there)."""
  sharding.maybe_initialize_distributed()
  StageRunner(config, workdir, allow_config_change=allow_config_change).run()
  if jax.process_count() > 1:
    # No process may shut JAX's distributed runtime down while another still writes checkpoints
    # (orbax waits for every process): that ended runs in a deadlock until a timeout.
    multihost_utils.sync_global_devices("plfm_training_done")
