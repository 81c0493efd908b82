"""One stage's checkpoints: the newest few and the best in one manager, older workdirs' best read."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from plfm_jax.checkpoints import StageCheckpoints


def state_at(step: int) -> dict:
  return {"step": jnp.int32(step), "variables": {"a": {"w": jnp.full((3,), float(step))}}}


def saved_steps(workdir, kind: str = "last") -> list[int]:
  folder = workdir / "checkpoints" / "stage" / kind
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def best_of(workdir) -> tuple[int, float]:
  """(step, value of variable a) of the best checkpoint, read as later stages read it."""
  ckpts = StageCheckpoints(workdir, "stage", read_only=True)
  try:
    step, _ = ckpts.best_config()
    shape = jax.ShapeDtypeStruct((3,), jnp.float32,
                                 sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    variables = ckpts.best_variables({"a": {"w": shape}})
    return step, float(variables["a"]["w"][0])
  finally:
    ckpts.close()


def test_keeps_the_newest_and_the_best_each_saved_once(tmp_path):
  ckpts = StageCheckpoints(tmp_path, "stage", keep=2)
  # Validation losses of the saves that improved; the others record none.
  for step, improved_loss in ((0, 1.0), (4, 0.5), (6, None), (8, None), (12, 0.4), (16, None),
                              (20, None)):
    ckpts.save(step, state_at(step), {"epoch": step}, {"seed": 0}, improved_loss=improved_loss)
    ckpts.wait()
  assert ckpts.latest_step() == 20
  ckpts.close()
  assert saved_steps(tmp_path) == [12, 16, 20]
  assert not (tmp_path / "checkpoints" / "stage" / "best").exists()
  assert best_of(tmp_path) == (12, 12.0)


def test_reading_a_stage_never_trained_creates_nothing(tmp_path):
  ckpts = StageCheckpoints(tmp_path, "stage", read_only=True)
  assert ckpts.best_config() is None and ckpts.latest_step() is None
  ckpts.close()
  assert not (tmp_path / "checkpoints").exists()


def test_a_workdir_with_the_best_in_its_own_folder_still_reads_it(tmp_path):
  # The layout before the best shared the manager: best/ beside last/, no losses recorded.
  def save(kind: str, step: int) -> None:
    manager = ocp.CheckpointManager(tmp_path.absolute() / "checkpoints" / "stage" / kind,
                                    item_names=("state", "progress", "config"))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state_at(step)),
                                               progress=ocp.args.JsonSave({"epoch": step}),
                                               config=ocp.args.JsonSave({"seed": 0})))
    manager.wait_until_finished()
    manager.close()
  for step in (4, 8):
    save("last", step)
  save("best", 4)
  assert best_of(tmp_path) == (4, 4.0)
  # Resumed, the stage's next improvement is its best.
  ckpts = StageCheckpoints(tmp_path, "stage")
  ckpts.save(12, state_at(12), {"epoch": 12}, {"seed": 0}, improved_loss=0.1)
  ckpts.wait()
  ckpts.close()
  assert best_of(tmp_path) == (12, 12.0)
