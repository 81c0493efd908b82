"""train.py under failure: bad raw data, SIGKILL in the middle of a checkpoint save, divergence.

Besides a run stopped by bad data before any training, three train.py runs of the temporal stage
(the tiny settings of test_trainer.py): one killed while orbax writes a checkpoint, its
resumption, and a continuation with an absurd learning rate.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from plfm_jax.data.synthetic import write_synthetic_dataset
from plfm_jax.data import tfds_data
from tfds_builders.plfm_series.build import ensure_built

# tfds_dir is a fixture: the tiny synthetic dataset of test_trainer.py, built once here too.
from test_trainer import REPO, SIZE, STEPS, final_state, run, saved_steps, train_command
from test_trainer import tfds_dir  # noqa: F401  (a fixture, used by name)

# Every test runs train.py in subprocesses (killed mid-save): `make test-fast` leaves them out.
pytestmark = pytest.mark.slow

STAGE = "temporal"
ONE_STAGE = f"--config.train.stages=(\"{STAGE}\",)"
# orbax writes a checkpoint into `<step>.orbax-checkpoint-tmp-<time>` and renames it when complete.
_IN_PROGRESS = re.compile(r"(\d+)\.orbax-checkpoint-tmp")


def in_progress(workdir: pathlib.Path) -> list[int]:
  """Steps whose checkpoint is being written (or was, by a killed process) in `last/`."""
  last = workdir / "checkpoints" / STAGE / "last"
  try:
    names = os.listdir(last)
  except FileNotFoundError:
    return []
  return [int(m[1]) for m in map(_IN_PROGRESS.match, names) if m]


def kill_during_save(workdir: pathlib.Path, tfds_dir: pathlib.Path) -> tuple[int, int] | None:
  """Starts a run and SIGKILLs it while it writes a checkpoint that has a finished predecessor.

  Returns (the step being written, the step of the last complete checkpoint), or None if the
  run finished a save between the moment it was seen in progress and the kill.
  """
  process = subprocess.Popen(train_command(workdir, tfds_dir, ONE_STAGE), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 600
  try:
    while process.poll() is None:
      assert time.monotonic() < deadline, "no checkpoint save was seen"
      writing = in_progress(workdir)
      if writing and saved_steps(workdir, STAGE):
        process.send_signal(signal.SIGKILL)
        break
      time.sleep(0.001)
  finally:
    process.kill()
    process.wait()
  assert process.returncode == -signal.SIGKILL, "the run ended before a save could be caught"
  complete, writing = saved_steps(workdir, STAGE), in_progress(workdir)
  if not writing or max(writing) <= complete[-1]:
    return None
  return max(writing), complete[-1]


@pytest.fixture(scope="module")
def killed(tfds_dir, tmp_path_factory) -> tuple[pathlib.Path, int, int]:
  """(workdir, step being saved when killed, last complete step) of a run killed mid-save."""
  for _ in range(3):
    workdir = tmp_path_factory.mktemp("killed")
    caught = kill_during_save(workdir, tfds_dir)
    if caught is not None:
      return (workdir, *caught)
  pytest.skip("three runs each finished their save before the kill landed")


@pytest.fixture(scope="module")
def resumed(killed, tfds_dir) -> tuple[pathlib.Path, subprocess.CompletedProcess]:
  """The killed workdir after the same command ran again to the end."""
  workdir = killed[0]
  return workdir, run(train_command(workdir, tfds_dir, ONE_STAGE))


def test_kill_during_checkpoint_save_keeps_the_previous_one(killed):
  workdir, writing, complete = killed
  assert complete < writing
  # The half-written checkpoint is there, but it is not a checkpoint.
  assert writing not in saved_steps(workdir, STAGE)
  state = final_state(workdir, STAGE)
  assert int(state["step"]) == complete
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state))


def test_next_start_resumes_from_it_and_removes_the_leftover(killed, resumed):
  _, writing, complete = killed
  workdir, out = resumed
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"stage {STAGE}: resuming from step {complete} " in out.stdout
  assert not list((workdir / "checkpoints").rglob("*.orbax-checkpoint-tmp*"))
  assert saved_steps(workdir, STAGE)[-1] == STEPS >= writing


def test_diverging_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(resumed, tfds_dir,
                                                                               tmp_path):
  workdir = tmp_path / "diverging"
  shutil.copytree(resumed[0], workdir)
  before = saved_steps(workdir, STAGE)
  good = final_state(workdir, STAGE)
  # A third epoch with an absurd learning rate: the first update throws the weights to ~1e30,
  # and the loss after it overflows, at the next checkpoint step.
  out = run(train_command(workdir, tfds_dir, ONE_STAGE, "--config.train.num_epochs=3",
                          "--config.train.learning_rate=1e30", "--allow_config_change"))
  # Its own exit status: not an input error, not a crash.
  assert out.returncode == 3, out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  # The progress bar shares stderr (its updates end in \r); the error is the one last line.
  [error] = [line for line in re.split(r"[\r\n]", out.stderr) if line.startswith("error:")]
  assert out.stderr.rstrip().endswith(error)
  assert re.fullmatch(
      rf"error: {re.escape(str(workdir))}/checkpoints/{STAGE}: training diverged: non-finite "
      rf"loss \((nan|inf)\).* at step {STEPS + 2}; kept the last good checkpoint, step {STEPS}\. "
      r"Lower "
      r"train\.learning_rate or check the data, then rerun to resume \(with "
      r"--allow_config_change for a changed config\)", error)
  # No checkpoint was written after the divergence; the last good one is unchanged.
  assert saved_steps(workdir, STAGE) == before
  for a, b in zip(jax.tree.leaves(good), jax.tree.leaves(final_state(workdir, STAGE))):
    np.testing.assert_array_equal(a, b)


def test_bad_raw_data_stops_train_py_with_one_line_or_is_skipped(tmp_path):
  raw = write_synthetic_dataset(tmp_path / "raw", series_per_split={"training": 2}, image_size=SIZE)
  bad = sorted((raw / "training" / "sen2").rglob("image_RGB_*.tif"))[0]
  bad.write_bytes(bad.read_bytes()[:100])
  command = train_command(tmp_path / "workdir", tmp_path / "tfds",
                          f"--config.data.manual_dir={raw}")
  out = run(command)
  assert out.returncode == 2, out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  # TFDS's progress bars come first; the error is the one last line.
  [error] = [line for line in re.split(r"[\r\n]", out.stderr) if line.startswith("error:")]
  assert out.stderr.rstrip().endswith(error)
  assert error.startswith(f"error: {bad}: not a readable TIFF (")
  assert not tfds_data.is_built(tmp_path / "tfds")

  # Skipping builds the dataset without that series and says so (no stage runs: that is all).
  out = run(command + ["--config.train.stages=()"], env={"PLFM_SKIP_INVALID": "1"})
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"plfm_series: skipped: {bad}: not a readable TIFF (" in out.stderr
  assert ensure_built(tmp_path / "tfds").info.splits[
      "train"].num_examples == 1
