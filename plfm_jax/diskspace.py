"""Free-space checks before large writes, so that a full disk stops a run before it starts."""

from __future__ import annotations

import os
import pathlib
import shutil

from plfm_jax.errors import InputError


def format_size(size: float) -> str:
  """`size` bytes as a person reads it: `512 KiB`, `12 MiB`, `3.4 GiB`."""
  for unit in ("KiB", "MiB"):
    size /= 1024
    if size < 1024:
      return f"{size:.0f} {unit}"
  return f"{size / 1024:.1f} GiB"


def _existing(path: pathlib.Path) -> pathlib.Path:
  # What is about to be written usually does not exist yet; its file system is its ancestor's.
  path = path.absolute()
  while not path.exists() and path != path.parent:
    path = path.parent
  return path


def _mount_point(path: pathlib.Path) -> pathlib.Path:
  while not os.path.ismount(path) and path != path.parent:
    path = path.parent
  return path


def check_free_space(path: str | os.PathLike, needed_bytes: int, what: str) -> None:
  """Raises unless the file system that will hold `path` has `needed_bytes` free.

  Args:
    path: the file or folder about to be written (it need not exist yet).
    needed_bytes: an estimate of what the write takes, erring on the large side.
    what: names the write in the message, e.g. "the output".

  Raises:
    InputError: `path: <what> needs 3.4 GiB free on /data, has 1.2 GiB`.
  """
  existing = _existing(pathlib.Path(path))
  free = shutil.disk_usage(existing).free
  if free < needed_bytes:
    raise InputError(path, f"{what} needs {format_size(needed_bytes)} free on "
                     f"{_mount_point(existing)}, has {format_size(free)}")
