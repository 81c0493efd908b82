"""Several JAX processes on one machine, launched explicitly as the README shows for clusters."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

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
