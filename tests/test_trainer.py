"""train.py end to end on a tiny synthetic dataset: stages, resuming after SIGKILL, config checks."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from plfm_jax.data import synthetic
from plfm_jax.data import tfds_data

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32

# Tiny widths, 32 px, 2 epochs of 4 steps per stage, a checkpoint every 2 steps.
TINY = [f"--config.data.stored_size={SIZE}", f"--config.data.image_size={SIZE}",
        "--config.model.temporal_features=(4,4,4)", "--config.model.generator_features=4",
        "--config.model.discriminator_features=4", "--config.model.head_features=4",
        "--config.batch_size=2", "--config.train.num_epochs=2", "--config.train.steps_per_epoch=4",
        "--config.train.checkpoint_every_steps=2", "--config.train.validation_steps=2"]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("trainer_data")
  raw = synthetic.write_synthetic_dataset(
      root / "raw", series_per_split={"training": 6, "validation": 2}, image_size=SIZE)
  tfds_data.ensure_built(root / "tfds", manual_dir=raw, image_size=SIZE)
  return root / "tfds"


def train_command(workdir: pathlib.Path, tfds_dir: pathlib.Path, *extra: str) -> list[str]:
  return [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs/plfm.py:demo"),
          "--workdir", str(workdir), f"--config.data.tfds_dir={tfds_dir}", *TINY, *extra]


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO, **kwargs)


def finished_steps(workdir: pathlib.Path, stage: str) -> list[int]:
  last = workdir / "checkpoints" / stage / "last"
  return sorted(int(p.name) for p in last.iterdir() if p.name.isdigit()) if last.exists() else []


def final_state(workdir: pathlib.Path, stage: str):
  path = workdir / "checkpoints" / stage / "last" / str(finished_steps(workdir, stage)[-1]) / "state"
  return ocp.StandardCheckpointer().restore(path)


def test_killed_run_resumes_to_the_same_parameters(tmp_path, tfds_dir):
  stage = ["--config.train.stages=(\"gan\",)"]
  uninterrupted = tmp_path / "uninterrupted"
  out = run(train_command(uninterrupted, tfds_dir, *stage))
  assert out.returncode == 0, out.stderr[-3000:]

  interrupted = tmp_path / "interrupted"
  process = subprocess.Popen(train_command(interrupted, tfds_dir, *stage), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 600
  while not finished_steps(interrupted, "gan") and process.poll() is None:
    assert time.monotonic() < deadline, "no checkpoint appeared"
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL, "the run ended before it could be interrupted"
  assert finished_steps(interrupted, "gan")[-1] < 8

  out = run(train_command(interrupted, tfds_dir, *stage))
  assert out.returncode == 0, out.stderr[-3000:]
  assert finished_steps(interrupted, "gan")[-1] == finished_steps(uninterrupted, "gan")[-1] == 8
  a, b = final_state(uninterrupted, "gan"), final_state(interrupted, "gan")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)

  # Rerunning a finished stage does nothing but say so.
  out = run(train_command(interrupted, tfds_dir, *stage))
  assert out.returncode == 0 and "finished earlier" in out.stdout, out.stdout + out.stderr


def test_all_stages_then_config_change_is_refused(tmp_path, tfds_dir):
  workdir = tmp_path / "run"
  out = run(train_command(workdir, tfds_dir))
  assert out.returncode == 0, out.stderr[-3000:]
  for stage in ("temporal", "gan", "head"):
    assert finished_steps(workdir, stage), stage
    assert (workdir / "checkpoints" / stage / "best").is_dir()
    assert (workdir / "samples" / f"{stage}.png").is_file()
  assert any((workdir / "tensorboard").iterdir())

  # A different learning rate on the same workdir is an error naming the change ...
  changed = train_command(workdir, tfds_dir, "--config.train.learning_rate=0.1",
                          "--config.train.num_epochs=3")
  out = run(changed)
  assert out.returncode == 2, out.stderr[-3000:]
  assert "learning_rate" in out.stderr and "Traceback" not in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1
  # ... unless explicitly allowed: then the stages go on for the extra epoch.
  out = run(changed + ["--allow_config_change"])
  assert out.returncode == 0, out.stderr[-3000:]


def test_stage_alone_needs_earlier_checkpoints(tmp_path, tfds_dir):
  out = run(train_command(tmp_path / "empty", tfds_dir, "--config.train.stages=(\"head\",)"))
  assert out.returncode == 2
  assert "no best checkpoint of stage 'temporal'" in out.stderr
  assert "Traceback" not in out.stderr
