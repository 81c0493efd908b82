"""Training in several JAX processes on one machine, launched explicitly as the README shows for
clusters, and through scripts/launch_local.py; evaluation and inference are in
test_multiprocess_inference.py."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from plfm_jax import workdirs
from test_trainer import TINY, train_command
from test_trainer import tfds_dir  # noqa: F401  (a fixture, used by name)

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, str(REPO / "scripts" / "launch_local.py")]
# The GAN stage alone (it needs no earlier stage) with a global batch of 4: 8 Adam steps.
GAN_ONLY = [*TINY, "--config.batch_size=4", '--config.train.stages=("gan",)']
FOUR_DEVICES = "--xla_force_host_platform_device_count=4"

# Each process: 2 forced CPU devices, a global batch over all 4, a sum over it.
_WORKER = """
import jax, jax.numpy as jnp, numpy as np
from plfm_jax import sharding
sharding.maybe_initialize_distributed()
mesh = sharding.make_mesh()
x = sharding.global_batch({"a": np.full((2, 3), jax.process_index() + 1, np.float32)}, mesh)["a"]
print("result", jax.process_index(), jax.process_count(), jax.device_count(),
      float(jax.jit(jnp.sum)(x)))
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_explicit_launch_of_two_processes():
  port = _free_port()
  processes = [subprocess.Popen(
      [sys.executable, "-c", _WORKER], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                      "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                      "JAX_PROCESS_ID": str(i)}) for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in processes]
  for process, (out, err) in zip(processes, outputs):
    assert process.returncode == 0, err[-2000:]
  # Process i of 2, 4 devices in all; the global batch holds 2 x 3 ones and 2 x 3 twos.
  results = sorted(line.split()[1:] for out, _ in outputs for line in out.splitlines()
                   if line.startswith("result "))
  assert results == [["0", "2", "4", "18.0"], ["1", "2", "4", "18.0"]]


def test_explicit_launch_needs_every_variable(monkeypatch):
  from plfm_jax import sharding
  from plfm_jax.errors import InputError
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
  monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
  with pytest.raises(InputError, match="JAX_NUM_PROCESSES and JAX_PROCESS_ID"):
    sharding.maybe_initialize_distributed()


def _job(workdir: pathlib.Path, tfds_dir: pathlib.Path) -> list[str]:
  """train.py's GAN stage as a job of 2 processes of 2 devices."""
  return [*LAUNCH, "--processes=2", "--devices_per_process=2", "--",
          *train_command(workdir, tfds_dir, *GAN_ONLY)]


@pytest.fixture(scope="module")
def two_processes(tfds_dir, tmp_path_factory):  # noqa: F811
  """(workdir, completed process) of an uninterrupted 2-process job."""
  workdir = tmp_path_factory.mktemp("two_processes") / "work"
  done = subprocess.run(_job(workdir, tfds_dir), cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir, done


def _gan_variables(workdir: pathlib.Path):
  return workdirs.best_variables(workdirs.saved_config(workdir), workdir,
                                    ("generator", "discriminator"))


@pytest.mark.slow
def test_two_processes_train_like_one_and_only_process_0_reports(two_processes,
                                                                   tfds_dir,  # noqa: F811
                                                                   tmp_path):
  workdir, two = two_processes
  one = subprocess.run(train_command(tmp_path / "one", tfds_dir, *GAN_ONLY), cwd=REPO,
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "XLA_FLAGS": FOUR_DEVICES})
  assert one.returncode == 0, one.stderr[-3000:]
  # Status lines come from process 0 alone (the launcher prefixes the others' lines; gloo
  # prints its own connection messages, which are not ours).
  assert "stage gan: done after 2 epochs" in two.stdout
  assert not [line for line in two.stdout.splitlines()
              if line.startswith("[1] ") and ("stage " in line or "note:" in line)]
  # Each process read its own half of every global batch: the same parameters as one process
  # reading the whole batch, to float precision. Read here, in a single process on one device,
  # from checkpoints written by 2 and by 4 devices.
  for a, b in zip(jax.tree.leaves(_gan_variables(tmp_path / "one")),
                  jax.tree.leaves(_gan_variables(workdir))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_failing_process_stops_the_job():
  # Process 1 fails at once; process 0 would wait for a minute.
  command = [sys.executable, "-c", "import os, sys, time; "
             "sys.exit(3) if os.environ['JAX_PROCESS_ID'] == '1' else time.sleep(60)"]
  started = time.monotonic()
  result = subprocess.run([*LAUNCH, "--", *command], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 3
  assert result.stderr.strip().splitlines()[-1] == (
      "error: process 1 of 2 exited with 3; the others were stopped")
  assert time.monotonic() - started < 30


def _job_process(workdir: pathlib.Path, process_id: int) -> int | None:
  """The pid of process `process_id` of a train.py job writing to `workdir`, if it runs."""
  for proc in pathlib.Path("/proc").iterdir():
    try:
      cmdline = (proc / "cmdline").read_bytes().split(b"\0")
      environ = (proc / "environ").read_bytes().split(b"\0")
    except (OSError, ValueError):
      continue
    if (str(workdir).encode() in cmdline and any(a.endswith(b"train.py") for a in cmdline)
        and f"JAX_PROCESS_ID={process_id}".encode() in environ):
      return int(proc.name)
  return None


@pytest.mark.slow
def test_killed_process_and_restarted_job_resume_to_the_same_parameters(two_processes,
                                                                          tfds_dir,  # noqa: F811
                                                                          tmp_path):
  workdir = tmp_path / "killed"
  launcher = subprocess.Popen(_job(workdir, tfds_dir), cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
  # Process 1 alone is killed once the stage has a checkpoint: the launcher stops process 0.
  last = workdir / "checkpoints" / "gan" / "last"
  deadline = time.monotonic() + 300
  while not (last.is_dir() and any(p.name.isdigit() for p in last.iterdir())):
    assert launcher.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
    time.sleep(0.05)
  pid = _job_process(workdir, 1)
  assert pid is not None
  os.kill(pid, signal.SIGKILL)
  _, err = launcher.communicate(timeout=120)
  assert launcher.returncode != 0
  assert "error: process 1 of 2 exited with -9; the others were stopped" in err

  again = subprocess.run(_job(workdir, tfds_dir), cwd=REPO, capture_output=True, text=True,
                         timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "stage gan: resuming from step" in again.stdout
  for a, b in zip(jax.tree.leaves(_gan_variables(two_processes[0])),
                  jax.tree.leaves(_gan_variables(workdir))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
