"""Transparent huge pages for malloc: glibc's `hugetlb` tunable, set where a process starts.

glibc serves every allocation above 32 MiB with a fresh `mmap` and unmaps it on `free`, so each
XLA:CPU step faults its gigabytes of activations in again, 4 KiB at a time. Where the kernel
grants transparent huge pages only on request (`/sys/kernel/mm/transparent_hugepage/enabled`
= madvise, the common default), `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` makes malloc request
them, and a fault maps 2 MiB: a PLFM temporal train step on a 2-core virtual machine ran 30%
faster (bench/README.md), with the same resident memory. glibc reads tunables only when a
program starts, so the environment has to hold it before: the Makefile exports what

    python -m plfm_jax.hugepages

prints (the GLIBC_TUNABLES value to use, or nothing where it would change nothing), and so can a
job script. `PLFM_HUGE_PAGES=0` turns it off. Importable without JAX.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping

TUNABLE = "glibc.malloc.hugetlb"
SWITCH = "PLFM_HUGE_PAGES"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"
_GLIBC_WITH_HUGETLB = (2, 35)


def _glibc_version() -> tuple[int, ...] | None:
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    return tuple(int(part) for part in version.split(".")[:2]) if name == "glibc" else None
  except (AttributeError, OSError, ValueError):
    return None


def _thp_mode(path: str = _THP_MODE) -> str | None:
  """The bracketed mode of the kernel's THP setting ("always", "madvise", "never")."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  return text[text.find("[") + 1:text.find("]")] if "[" in text else None


def environment(environ: Mapping[str, str], *, glibc: tuple[int, ...] | None = None,
                thp_mode: str | None = None) -> dict[str, str] | None:
  """`environ` with the tunable added, or None where it is set already or would change nothing.

  glibc and thp_mode default to this machine's.
  """
  glibc = _glibc_version() if glibc is None else glibc
  thp_mode = _thp_mode() if thp_mode is None else thp_mode
  tunables = environ.get("GLIBC_TUNABLES", "")
  if (environ.get(SWITCH, "1") == "0" or not sys.platform.startswith("linux")
      or glibc is None or glibc < _GLIBC_WITH_HUGETLB or thp_mode != "madvise"
      or TUNABLE in tunables):
    return None
  return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, f"{TUNABLE}=1"]))}


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
  """Whether `environ` (default: this process's) asks malloc for huge pages."""
  return f"{TUNABLE}=1" in environ.get("GLIBC_TUNABLES", "")


if __name__ == "__main__":
  print((environment(os.environ) or {}).get("GLIBC_TUNABLES", ""))
