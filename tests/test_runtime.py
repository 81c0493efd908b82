"""Process set-up of the command-line entry points: the huge-page tunable and the XLA flags."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from plfm_jax import hugepages
from plfm_jax import runtime

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
GLIBC = (2, 36)


def test_environment_adds_the_tunable_where_it_helps():
  env = hugepages.environment({"PATH": "/bin"}, glibc=GLIBC, thp_mode="madvise")
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def test_environment_keeps_other_tunables():
  env = hugepages.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, glibc=GLIBC,
                              thp_mode="madvise")
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("environ,glibc,thp_mode", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC, "madvise"),  # the user's choice stands
    ({hugepages.SWITCH: "0"}, GLIBC, "madvise"),  # switched off
    ({}, (2, 34), "madvise"),  # glibc without the tunable
    ({}, GLIBC, "always"),  # every large mapping gets huge pages already
    ({}, GLIBC, "never"),  # none to be had
])
def test_environment_changes_nothing(environ, glibc, thp_mode):
  assert hugepages.environment(environ, glibc=glibc, thp_mode=thp_mode) is None


def test_thp_mode_reads_the_bracketed_setting(tmp_path):
  path = tmp_path / "enabled"
  path.write_text("always [madvise] never\n")
  assert hugepages._thp_mode(str(path)) == "madvise"
  assert hugepages._thp_mode(str(tmp_path / "missing")) is None


@pytest.mark.slow
def test_module_prints_the_value_to_export():
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hugepages.SWITCH)}
  out = subprocess.run([sys.executable, "-m", "plfm_jax.hugepages"], cwd=REPO_ROOT, env=env,
                       check=True, capture_output=True, text=True).stdout.strip()
  expected = (hugepages.environment(env) or {}).get("GLIBC_TUNABLES", "")
  assert out == expected
  assert hugepages.enabled({"GLIBC_TUNABLES": out}) == bool(expected)
  off = subprocess.run([sys.executable, "-m", "plfm_jax.hugepages"], cwd=REPO_ROOT,
                       env={**env, hugepages.SWITCH: "0"}, check=True, capture_output=True,
                       text=True).stdout.strip()
  assert off == ""


def test_xla_flags_are_added_without_overriding_the_user(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_concurrency_optimized_scheduler=true --a=1")
  runtime._add_xla_flags({"xla_cpu_enable_concurrency_optimized_scheduler": "false",
                          "xla_other": "2"})
  assert os.environ["XLA_FLAGS"] == (
      "--xla_cpu_enable_concurrency_optimized_scheduler=true --a=1 --xla_other=2")
  monkeypatch.delenv("XLA_FLAGS")
  runtime._add_xla_flags({"xla_other": "2"})
  assert os.environ["XLA_FLAGS"] == "--xla_other=2"
