"""Runs a command as a multi-process JAX job on this machine: the rehearsal of a pod run.

    .venv/bin/python scripts/launch_local.py [--processes=2] [--devices_per_process=2] \\
        -- .venv/bin/python train.py --config configs/plfm.py:demo --workdir workdir/two

Starts `--processes` copies of the command, each announced to JAX as one process of the job the
way a cluster would announce it (JAX_COORDINATOR_ADDRESS on a free local port, JAX_NUM_PROCESSES,
JAX_PROCESS_ID) and given `--devices_per_process` CPU devices (XLA_FLAGS); on CPU the processes
talk through gloo. Process 0's output passes through as is, the others' lines are prefixed with
`[i] `. When one process fails, the others are stopped and the launcher exits with its code: a
job never hangs on a dead peer.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("processes", 2, "Processes to start.", lower_bound=1)
flags.DEFINE_integer("devices_per_process", 2, "CPU devices of each process.", lower_bound=1)
# How long the others may run on after one process failed, and then after SIGTERM, before
# they are stopped and then killed.
GRACE_SECONDS = 5.0


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def job_environment(process: int, processes: int, port: int, devices: int) -> dict[str, str]:
  """The environment of process `process` of a local job."""
  xla_flags = os.environ.get("XLA_FLAGS", "")
  return {**os.environ, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
          "JAX_NUM_PROCESSES": str(processes), "JAX_PROCESS_ID": str(process),
          "XLA_FLAGS": f"{xla_flags} --xla_force_host_platform_device_count={devices}".strip()}


def _relay(stream, prefix: str, out) -> None:
  for line in stream:
    out.write(prefix + line)
    out.flush()


def _stop(children: list[subprocess.Popen]) -> None:
  """Ends the children still running: SIGTERM, then SIGKILL for those that outlive
  GRACE_SECONDS (JAX's distributed runtime takes SIGTERM as a preemption notice, not an end)."""
  for child in children:
    if child.poll() is None:
      os.killpg(child.pid, signal.SIGTERM)
  deadline = time.monotonic() + GRACE_SECONDS
  for child in children:
    try:
      child.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      os.killpg(child.pid, signal.SIGKILL)
      child.wait()


def launch(command: list[str], processes: int, devices: int) -> int:
  """Runs the job; returns 0, or the exit code of the first process that failed."""
  port = free_port()
  children, relays = [], []
  for i in range(processes):
    child = subprocess.Popen(command, env=job_environment(i, processes, port, devices),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    children.append(child)
    prefix = "" if i == 0 else f"[{i}] "
    relays += [threading.Thread(target=_relay, args=(child.stdout, prefix, sys.stdout)),
               threading.Thread(target=_relay, args=(child.stderr, prefix, sys.stderr))]
  for relay in relays:
    relay.start()
  failed = None
  try:
    while any(child.poll() is None for child in children):
      failed = failed or next((c for c in children if c.poll() not in (None, 0)), None)
      if failed is not None:
        deadline = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < deadline and any(c.poll() is None for c in children):
          time.sleep(0.1)
        break
      time.sleep(0.1)
  finally:
    _stop(children)
    for relay in relays:
      relay.join()
  failed = failed or next((c for c in children if c.returncode != 0), None)
  if failed is not None:
    index = children.index(failed)
    print(f"error: process {index} of {processes} exited with {failed.returncode}; the others "
          "were stopped", file=sys.stderr)
    return failed.returncode if failed.returncode > 0 else 1
  return 0


def main(argv: list[str]) -> int:
  if len(argv) < 2:
    raise app.UsageError("give the command after --, e.g. -- .venv/bin/python train.py ...")
  return launch(argv[1:], FLAGS.processes, FLAGS.devices_per_process)


if __name__ == "__main__":
  from plfm_jax import cli
  cli.run(main)
