"""Orbax checkpoints of one training stage: the last few for resuming, the best for later stages.

Layout: `<workdir>/checkpoints/<stage>/last/<step>/`, one orbax manager per stage, each checkpoint
holding `state` (variables, optimizer state, step: a pytree), `progress` (epoch, early-stopping
counters, the data iterator's state: JSON) and `config` (JSON). A checkpoint saved where the
validation loss improved records that loss as its metric; the manager keeps the newest `keep`
checkpoints and, among those that record a loss, the lowest: the best, saved once with the rest.
Workdirs written before the best shared the manager hold it in a second one,
`<workdir>/checkpoints/<stage>/best/<step>/`, read where `last/` records no loss.

Orbax writes into a temporary directory and renames it when complete, so a process killed
mid-save leaves the previous checkpoint loadable; the leftover temporary directory is removed at
the next start.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

_ITEMS = ("state", "progress", "config")
_METRIC = "validation_loss"


class StageCheckpoints:
  """The checkpoints of one stage: the newest few and the best, in one orbax manager.

  `read_only`: for reading a trained workdir; nothing is created, written or removed.
  """

  def __init__(self, workdir: str | pathlib.Path, stage: str, *, keep: int = 3,
               read_only: bool = False):
    self.directory = pathlib.Path(workdir) / "checkpoints" / stage
    root = self.directory.absolute()
    self._manager = _manager(root / "last", keep=keep, name=stage, read_only=read_only)
    self._legacy_best = (_manager(root / "best", keep=1, name=f"{stage}_best", read_only=True)
                         if (root / "best").is_dir() else None)

  def save(self, step: int, state: Any, progress: dict, config: dict, *,
           improved_loss: float | None = None) -> None:
    """Saves asynchronously; with `improved_loss`, the validation loss that improved, as the
    best checkpoint."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              progress=ocp.args.JsonSave(progress),
                              config=ocp.args.JsonSave(config))
    metrics = None if improved_loss is None else {_METRIC: improved_loss}
    self._manager.save(step, args=args, metrics=metrics, force=True)

  def latest_step(self) -> int | None:
    """The step of the newest checkpoint, or None."""
    return self._manager.latest_step()

  def latest(self, abstract_state: Any) -> tuple[Any, dict, dict] | None:
    """(state, progress, config) of the newest checkpoint, or None."""
    step = self._manager.latest_step()
    if step is None:
      return None
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        progress=ocp.args.JsonRestore(),
        config=ocp.args.JsonRestore()))
    return restored["state"], restored["progress"], restored["config"]

  def _best(self) -> tuple[ocp.CheckpointManager, int] | None:
    """(manager, step) of the best checkpoint, or None."""
    step = self._manager.best_step()
    if step is not None:
      return self._manager, step
    step = self._legacy_best.latest_step() if self._legacy_best is not None else None
    return None if step is None else (self._legacy_best, step)

  def best_variables(self, abstract_variables: Any) -> Any | None:
    """The `variables` part of the best checkpoint's state (not the optimizer's), or None.

    `abstract_variables`: {component: ShapeDtypeStructs with shardings} of the components to
    read; the checkpoint may hold more.
    """
    best = self._best()
    if best is None:
      return None
    manager, step = best
    item = {"variables": abstract_variables}
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)))
    return restored["state"]["variables"]

  def best_config(self) -> tuple[int, dict] | None:
    """(step, config) of the best checkpoint, or None."""
    best = self._best()
    if best is None:
      return None
    manager, step = best
    restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return step, restored["config"]

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
    if self._legacy_best is not None:
      self._legacy_best.close()


def _manager(directory: pathlib.Path, *, keep: int, name: str,
             read_only: bool) -> ocp.CheckpointManager:
  best_loss = lambda metrics: metrics[_METRIC]
  preservation = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=keep),
      # Only improving saves record a loss, each lower than the last: no two tie.
      checkpoint_managers.BestN(get_metric_fn=best_loss, reverse=True, n=1,
                                keep_checkpoints_without_metrics=False)])
  # Over several processes, orbax synchronises each save with named barriers: managers that
  # share the default names collide ("Barrier _async_commit_complete.0 is already ongoing").
  return ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(
          best_fn=best_loss, best_mode="min", preservation_policy=preservation,
          create=not read_only, cleanup_tmp_directories=not read_only, read_only=read_only,
          enable_async_checkpointing=True,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix=name)),
      item_names=_ITEMS)


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """ShapeDtypeStructs of `tree` placed with `sharding`: restores onto any mesh."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
