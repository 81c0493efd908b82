"""train.py end to end on a tiny synthetic dataset: stages, resuming after SIGKILL, config checks."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from plfm_jax.checkpoints import StageCheckpoints
from plfm_jax.data import synthetic
from tests.tiny import tiny_flags
from tfds_builders.plfm_series.build import ensure_built

# Every test runs train.py in subprocesses (killed and resumed): `make test-fast` leaves them out.
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32
STAGES = ("temporal", "gan", "head")
STEPS = 8  # per stage: 2 epochs of 4 steps

# The prior of the tests that run train.py: they check the training machinery (stages, resume,
# processes), and the demo's multi-scale prior with its guards costs every train.py process
# about 8 s of tracing and running more (25 s against 17.6 s, warm cache). The multi-scale prior
# has its own tests (test_gapfill.py, test_train_steps.py) and the scene tests run it end to end.
TRAINING_PRIOR = "matched_regression"
# Tiny widths, 32 px, 2 epochs of 4 steps per stage, a checkpoint every 2 steps. lax.conv: tiny
# models compile ~3x faster with it than with the shifted-matmul path (tested on its own).
TINY = [*tiny_flags(SIZE), "--config.model.conv_impl=lax", "--config.batch_size=2",
        "--config.train.num_epochs=2", "--config.train.steps_per_epoch=4",
        "--config.train.checkpoint_every_steps=2", "--config.train.validation_steps=2",
        f"--config.model.temporal_prior={TRAINING_PRIOR}"]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("trainer_data")
  raw = synthetic.write_synthetic_dataset(
      root / "raw", series_per_split={"training": 6, "validation": 2}, image_size=SIZE)
  ensure_built(root / "tfds", manual_dir=raw)
  return root / "tfds"


def train_command(workdir: pathlib.Path, tfds_dir: pathlib.Path, *extra: str) -> list[str]:
  return [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs/plfm.py:demo"),
          "--workdir", str(workdir), f"--config.data.tfds_dir={tfds_dir}", *TINY, *extra]


def run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  """Runs `command` from the repository root, with `env` added to the environment."""
  return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO,
                        env={**os.environ, **(env or {})})


def saved_steps(workdir: pathlib.Path, stage: str) -> list[int]:
  last = workdir / "checkpoints" / stage / "last"
  return sorted(int(p.name) for p in last.iterdir() if p.name.isdigit()) if last.exists() else []


def final_state(workdir: pathlib.Path, stage: str):
  step = saved_steps(workdir, stage)[-1]
  return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / stage / "last" / str(step)
                                            / "state")


@pytest.fixture(scope="module")
def trained(tfds_dir, tmp_path_factory) -> pathlib.Path:
  """A workdir where every stage ran uninterrupted."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  out = run(train_command(workdir, tfds_dir))
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir


def test_every_stage_leaves_checkpoints_logs_and_samples(trained):
  for stage in STAGES:
    assert saved_steps(trained, stage)[-1] == STEPS, stage
    ckpts = StageCheckpoints(trained, stage, read_only=True)
    assert ckpts.best_config() is not None, stage
    ckpts.close()
    assert (trained / "samples" / f"{stage}.png").is_file()
  assert any((trained / "tensorboard").iterdir())


def test_killed_run_resumes_to_the_same_parameters(trained, tfds_dir, tmp_path):
  workdir = tmp_path / "interrupted"
  process = subprocess.Popen(train_command(workdir, tfds_dir), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  # Killed as soon as the GAN stage has a checkpoint: mid-stage, mid-run.
  deadline = time.monotonic() + 600
  while not saved_steps(workdir, "gan") and process.poll() is None:
    assert time.monotonic() < deadline, "no checkpoint appeared"
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL, "the run ended before it could be interrupted"
  assert saved_steps(workdir, "gan")[-1] < STEPS and not saved_steps(workdir, "head")

  out = run(train_command(workdir, tfds_dir))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "stage temporal: finished earlier" in out.stdout
  for stage in STAGES:
    assert saved_steps(workdir, stage)[-1] == STEPS
    for a, b in zip(jax.tree.leaves(final_state(trained, stage)),
                    jax.tree.leaves(final_state(workdir, stage))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=stage)


def test_config_change_is_refused_unless_allowed(trained, tfds_dir, tmp_path):
  workdir = tmp_path / "changed"
  shutil.copytree(trained, workdir)
  changed = train_command(workdir, tfds_dir, "--config.train.learning_rate=0.1",
                          "--config.train.num_epochs=3", "--config.train.stages=(\"temporal\",)")
  out = run(changed)
  assert out.returncode == 2, out.stderr[-3000:]
  assert out.stderr.strip().splitlines() == [
      f"error: {workdir}/checkpoints/temporal: the config differs from the checkpoint's "
      "(train.learning_rate: 0.0003 -> 0.1; train.num_epochs: 2 -> 3); "
      "pass --allow_config_change to resume anyway"]
  # Allowed, the finished stage goes on for the extra epoch.
  out = run(changed + ["--allow_config_change"])
  assert out.returncode == 0, out.stderr[-3000:]
  assert saved_steps(workdir, "temporal")[-1] == 3 * STEPS // 2


def test_stage_alone_needs_earlier_checkpoints(tmp_path, tfds_dir):
  out = run(train_command(tmp_path / "empty", tfds_dir, "--config.train.stages=(\"head\",)"))
  assert out.returncode == 2
  assert "no best checkpoint of stage 'temporal'" in out.stderr
  assert "Traceback" not in out.stderr
