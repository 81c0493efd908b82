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
from typing import Callable, Iterator

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
from tqdm import tqdm

from plfm_jax import sharding
from plfm_jax import stages
from plfm_jax import run_setup
from plfm_jax import visualize
from plfm_jax import workdirs
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


class _Throughput:
  """Training samples per second between two readings."""

  def __init__(self, step: int, batch_size: int):
    self.batch_size = batch_size
    self.restart(step)

  def restart(self, step: int) -> None:
    self._time, self._step = time.perf_counter(), step

  def read(self, step: int) -> float:
    """Samples per second since the last reading (or restart); starts the next."""
    now = time.perf_counter()
    rate = (step - self._step) * self.batch_size / max(now - self._time, 1e-9)
    self._time, self._step = now, step
    return rate


@dataclasses.dataclass
class _Stage:
  """A stage in training: where it stands, what it saves to, the data and steps it runs.

  Attributes:
    spec: the stage.
    ckpts: its checkpoints.
    config: the run's config as checkpoints store it.
    steps_per_epoch, total_steps: its length.
    state: the replicated train state (`steps.init_state`), restored or fresh.
    frozen: the replicated variables it reads from earlier stages.
    progress: what its checkpoints record besides the state (epoch, early stopping, data).
    stopping: its early stopping.
    step: `state["step"]` on the host (reading the device's would wait for every step).
    resumed: whether it continues from a checkpoint.
    train_iter: the training data, restored to the checkpoint's position.
    train_step, validation_sums: its jitted steps (`StageRunner._compile`).
  """
  spec: stages.StageSpec
  ckpts: StageCheckpoints
  config: dict
  steps_per_epoch: int
  total_steps: int
  state: dict
  frozen: dict
  progress: dict
  stopping: EarlyStopping
  step: int
  resumed: bool
  train_iter: Iterator
  train_step: Callable
  validation_sums: Callable

  def diverged(self, problem: str) -> TrainingDiverged:
    """The error that stops it now, naming its newest (good) checkpoint."""
    return TrainingDiverged(self.ckpts.directory, problem, self.step, self.ckpts.latest_step())


class StageRunner:
  """Everything the stages of one run share: mesh, models, data location, logs."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
               allow_config_change: bool = False, devices: list | None = None):
    self.config = config
    self.workdir = pathlib.Path(workdir)
    self.allow_config_change = allow_config_change
    setup = run_setup.setup_run(config, self.workdir, devices=devices)
    self.mesh, self.data_config, self.splits = setup.mesh, setup.data_config, setup.splits
    self.replicated = sharding.replicated(self.mesh)
    self.model = PLFM.from_config(config.model)
    self.hyper = steps.Hyper.from_config(config.train)
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
    return workdirs.best_variables(self.config, self.workdir, components, model=self.model,
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
    """Trains a stage from its newest checkpoint (or its start) to its end or early stop."""
    stage = self._start_stage(spec)
    if stage is None:
      return
    try:
      self._train_stage(stage)
    finally:
      stage.ckpts.wait()
      stage.ckpts.close()
    reason = "early stopping" if stage.stopping.stopped else "last epoch"
    _status(f"stage {spec.name}: done after {stage.progress['epoch']} epochs ({reason}); best "
            f"validation loss {stage.stopping.best_loss:.5g}")

  def _start_stage(self, spec: stages.StageSpec) -> _Stage | None:
    """The stage from its newest checkpoint or fresh, with its data and steps; None (and a
    status line) for a stage that finished earlier.

    Raises:
      InputError: the checkpoint's config differs (and `allow_config_change` is off).
    """
    cfg = self.config.train
    steps_per_epoch = cfg.steps_per_epoch
    if steps_per_epoch <= 0:
      steps_per_epoch = max(1, self.splits["train"] // self.config.batch_size)
    total_steps = cfg.num_epochs * steps_per_epoch
    optimizers = steps.make_optimizers(cfg, spec, total_steps)
    variables = {**self.fresh_variables(), **self.best_variables(spec.warm_start)}
    state = sharding.replicate(steps.init_state(variables, spec, optimizers), self.mesh)
    frozen = sharding.replicate(self.best_variables(spec.frozen), self.mesh)
    ckpts = StageCheckpoints(self.workdir, spec.name, keep=cfg.keep_checkpoints)
    config = workdirs.config_dict(self.config)
    restored = self._restore(ckpts, state, config)
    state, progress = restored or (state, {"epoch": 0, "best_loss": math.inf, "bad_epochs": 0,
                                           "data_state": None})
    stopping = EarlyStopping(cfg.patience, progress["best_loss"], progress["bad_epochs"])
    if stopping.stopped or int(state["step"]) >= total_steps:
      _status(f"stage {spec.name}: finished earlier (best validation loss "
              f"{stopping.best_loss:.5g}); skipping")
      ckpts.close()
      return None
    train_iter = self.iterator("train", train=True)
    if progress["data_state"] is not None:
      train_iter.set_state(progress["data_state"])
    train_step, validation_sums = self._compile(spec, optimizers)
    return _Stage(spec=spec, ckpts=ckpts, config=config, steps_per_epoch=steps_per_epoch,
                  total_steps=total_steps, state=state, frozen=frozen, progress=progress,
                  stopping=stopping, step=int(state["step"]), resumed=restored is not None,
                  train_iter=train_iter, train_step=train_step, validation_sums=validation_sums)

  def _restore(self, ckpts: StageCheckpoints, state: dict,
               config: dict) -> tuple[dict, dict] | None:
    """(state, progress) of the stage's newest checkpoint, or None.

    Raises:
      InputError: its config differs from `config` (and `allow_config_change` is off).
    """
    restored = ckpts.latest(abstract_like(state, self.replicated))
    if restored is None:
      return None
    state, progress, saved_config = restored
    changes = workdirs.resume_changes(saved_config, config)
    if changes and not self.allow_config_change:
      ckpts.close()
      raise InputError(ckpts.directory,
                       "the config differs from the checkpoint's (" + "; ".join(changes)
                       + "); pass --allow_config_change to resume anyway")
    return state, progress

  def _train_stage(self, stage: _Stage) -> None:
    """The stage's starting point validated (unless resumed), then its epochs."""
    name = stage.spec.name
    if stage.resumed:
      _status(f"stage {name}: resuming from step {stage.step} (epoch {stage.progress['epoch']})")
    else:
      # The starting point competes for the best checkpoint too: a residual model starts as
      # its prior and the joint stage as the stage-wise result; training has to beat them.
      stage.stopping.update(self._validation_loss(stage))
      stage.stopping.bad_epochs = 0
      _status(f"stage {name}: validation loss {stage.stopping.best_loss:.5g} before training")
      self._save(stage, best=True)
    bar = tqdm(total=stage.total_steps, initial=stage.step, desc=name, unit="step",
               disable=jax.process_index() != 0, dynamic_ncols=True)
    throughput = _Throughput(stage.step, self.config.batch_size)
    try:
      while stage.step < stage.total_steps and not stage.stopping.stopped:
        self._train_epoch(stage, bar, throughput)
        self._end_epoch(stage)
        # The next rate measures training only, not validation and its compilation.
        throughput.restart(stage.step)
    finally:
      bar.close()

  def _train_epoch(self, stage: _Stage, bar: tqdm, throughput: _Throughput) -> None:
    """The steps to the end of the current epoch, with their logs and in-epoch checkpoints."""
    cfg = self.config.train
    epoch_end = (stage.step // stage.steps_per_epoch + 1) * stage.steps_per_epoch
    while stage.step < epoch_end:
      batch = sharding.global_batch(next(stage.train_iter), self.mesh)
      stage.state, metrics = stage.train_step(stage.state, stage.frozen, batch)
      stage.step += 1
      bar.update(1)
      # Checked before every checkpoint too, so that no checkpoint holds a diverged state.
      if (stage.step % cfg.log_every_steps == 0 or stage.step == epoch_end
          or stage.step % cfg.checkpoint_every_steps == 0):
        rate = throughput.read(stage.step)
        values = self._log_training(stage, metrics, rate)
        bar.set_postfix(loss=f"{values['loss']:.4g}", samples_s=f"{rate:.1f}")
      if stage.step != epoch_end and stage.step % cfg.checkpoint_every_steps == 0:
        self._save(stage, best=False)

  def _log_training(self, stage: _Stage, metrics: dict, rate: float) -> dict[str, float]:
    """Logs a step's training metrics and `rate`; the values logged.

    Raises:
      TrainingDiverged: a metric is not finite.
    """
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
      raise stage.diverged("non-finite " + ", ".join(f"{k} ({v})" for k, v in bad.items()))
    values["samples_per_second"] = rate
    self.logger.scalars(stage.step, values, f"{stage.spec.name}/train")
    return values

  def _end_epoch(self, stage: _Stage) -> None:
    """The epoch's validation, early-stopping bookkeeping and checkpoint."""
    stage.progress["epoch"] = stage.step // stage.steps_per_epoch
    loss = self._validation_loss(stage)
    improved = stage.stopping.update(loss)
    _status(f"stage {stage.spec.name} epoch {stage.progress['epoch']}: validation loss "
            f"{loss:.5g}" + (" (best)" if improved
                             else f" ({stage.stopping.bad_epochs} without improvement)"))
    self._save(stage, best=improved)

  def _save(self, stage: _Stage, *, best: bool) -> None:
    """Checkpoints the stage (asynchronously) with its early stopping and data position; `best`:
    its validation loss improved."""
    stage.progress.update(best_loss=stage.stopping.best_loss,
                          bad_epochs=stage.stopping.bad_epochs,
                          data_state=stage.train_iter.get_state())
    stage.ckpts.save(stage.step, stage.state, stage.progress, stage.config,
                     improved_loss=stage.stopping.best_loss if best else None)

  # ---- steps and validation --------------------------------------------------------------------

  def _compile(self, spec: stages.StageSpec, optimizers) -> tuple:
    train_step, per_sample = steps.jit_steps(self.model, spec, self.hyper, optimizers,
                                             self.replicated, sharding.batch_sharded(self.mesh))

    @jax.jit
    def weighted_sums(variables, batch, weights):
      losses = per_sample(variables, batch)
      return {k: jnp.sum(v * weights) for k, v in losses.items()}, jnp.sum(weights)

    return train_step, weighted_sums

  def _validation_loss(self, stage: _Stage) -> float:
    """The stage's validation loss now, logged with its parts and drawn (`write_samples`).

    Raises:
      TrainingDiverged: the loss is not finite.
    """
    variables = {**stage.frozen, **stage.state["variables"]}
    means, first = self.validate(stage.validation_sums, variables)
    self.logger.scalars(stage.step, means, f"{stage.spec.name}/validation")
    if first is not None and jax.process_index() == 0:
      self.write_samples(stage.spec, variables, first, stage.step)
    loss = means["loss"]
    if not math.isfinite(loss):
      raise stage.diverged(f"non-finite validation loss ({loss})")
    return loss

  def validate(self, weighted_sums, variables: dict) -> tuple[dict[str, float], dict | None]:
    """(mean of each validation loss, the first batch) over the validation split (or
    `validation_steps` batches), in the lock-step, host-padded batches evaluation uses too
    (`sharding.lockstep_batches`)."""
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
    return {k: v / max(count, 1.0) for k, v in totals.items()}, first

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
