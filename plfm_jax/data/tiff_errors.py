"""tifffile's warnings and exceptions turned into one-line `InputError`s.

tifffile reads many damaged files after logging a warning (a missing strip becomes zeros, a
broken tag is dropped); readers report such a file as damaged rather than half read, and the
warnings, printed by Python's last-resort handler, would break the one-line error output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Iterator

from plfm_jax.errors import InputError


class _Capture(logging.Filter):
  """Keeps the warnings (and worse) that tifffile logs from one thread."""

  def __init__(self):
    super().__init__()
    self.thread = threading.get_ident()
    self.messages: list[str] = []

  def filter(self, record: logging.LogRecord) -> bool:
    if record.thread != self.thread or record.levelno < logging.WARNING:
      return True
    self.messages.append(record.getMessage())
    return False


@contextlib.contextmanager
def captured_warnings() -> Iterator[list[str]]:
  """Within the block, tifffile's warnings from this thread go to the yielded list."""
  capture = _Capture()
  log = logging.getLogger("tifffile")
  log.addFilter(capture)
  try:
    yield capture.messages
  finally:
    log.removeFilter(capture)


def _first_line(text: str) -> str:
  return text.strip().split("\n", 1)[0]


def unreadable(path: str | os.PathLike, error: Exception) -> InputError:
  """The error for a file tifffile failed on. It reports damage through many exception types
  (TiffFileError, ValueError, zlib.error, struct.error, OSError, ...); each means the same to a
  user: this file is unusable."""
  return InputError(path, f"not a readable TIFF ({type(error).__name__}: "
                    f"{_first_line(str(error))})")


def damaged(path: str | os.PathLike, warnings: list[str]) -> InputError:
  """The error for a file tifffile read only after logging `warnings` (not empty)."""
  return InputError(path, f"not a readable TIFF (damaged: {_first_line(warnings[0])})")
