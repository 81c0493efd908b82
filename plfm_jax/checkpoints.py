"""Orbax checkpoints of one training stage: the last few for resuming, the best for later stages.

Layout: `<workdir>/checkpoints/<stage>/last/<step>/` and `<workdir>/checkpoints/<stage>/best/<step>/`,
each holding `state` (variables, optimizer state, step: a pytree), `progress` (epoch, early-stopping
counters, the data iterator's state: JSON) and `config` (JSON). Orbax writes into a temporary
directory and renames it when complete, so a process killed mid-save leaves the previous checkpoint
loadable; the leftover temporary directory is removed at the next start.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

_ITEMS = ("state", "progress", "config")


class StageCheckpoints:
  """The `last` and `best` checkpoint managers of one stage."""

  def __init__(self, workdir: str | pathlib.Path, stage: str, *, keep: int = 3):
    self.directory = pathlib.Path(workdir) / "checkpoints" / stage
    root = self.directory.absolute()
    self.last = _manager(root / "last", max_to_keep=keep, name=f"{stage}_last")
    self.best = _manager(root / "best", max_to_keep=1, name=f"{stage}_best")

  def save(self, step: int, state: Any, progress: dict, config: dict, *, best: bool) -> None:
    """Saves asynchronously to `last` (and `best` when the validation loss improved)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              progress=ocp.args.JsonSave(progress),
                              config=ocp.args.JsonSave(config))
    self.last.save(step, args=args, force=True)
    if best:
      self.best.save(step, args=args, force=True)

  def latest_step(self) -> int | None:
    """The step of the newest `last` checkpoint, or None."""
    return self.last.latest_step()

  def latest(self, abstract_state: Any, *, best: bool = False) -> tuple[Any, dict, dict] | None:
    """(state, progress, config) of the newest `last` (or the `best`) checkpoint, or None."""
    manager = self.best if best else self.last
    step = manager.latest_step()
    if step is None:
      return None
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        progress=ocp.args.JsonRestore(),
        config=ocp.args.JsonRestore()))
    return restored["state"], restored["progress"], restored["config"]

  def best_variables(self, abstract_variables: Any) -> Any | None:
    """The `variables` part of the best checkpoint's state (not the optimizer's), or None.

    `abstract_variables`: {component: ShapeDtypeStructs with shardings} of the components to
    read; the checkpoint may hold more.
    """
    step = self.best.latest_step()
    if step is None:
      return None
    item = {"variables": abstract_variables}
    restored = self.best.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)))
    return restored["state"]["variables"]

  def best_config(self) -> tuple[int, dict] | None:
    """(step, config) of the best checkpoint, or None."""
    step = self.best.latest_step()
    if step is None:
      return None
    restored = self.best.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return step, restored["config"]

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self.last.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.last.close()
    self.best.close()


def _manager(directory: pathlib.Path, *, max_to_keep: int, name: str) -> ocp.CheckpointManager:
  # Over several processes, orbax synchronises each save with named barriers: managers that
  # share the default names collide ("Barrier _async_commit_complete.0 is already ongoing").
  return ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
          enable_async_checkpointing=True,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix=name)),
      item_names=_ITEMS)


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """ShapeDtypeStructs of `tree` placed with `sharding`: restores onto any mesh."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
