"""Takes the warnings tifffile logs while a thread reads a file, instead of printing them.

tifffile reads many damaged files after logging a warning (a missing strip becomes zeros, a
broken tag is dropped); readers report such a file as damaged rather than half read, and the
warnings, printed by Python's last-resort handler, would break the one-line error output.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Iterator


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
def captured() -> Iterator[list[str]]:
  """Within the block, tifffile's warnings from this thread go to the yielded list."""
  capture = _Capture()
  log = logging.getLogger("tifffile")
  log.addFilter(capture)
  try:
    yield capture.messages
  finally:
    log.removeFilter(capture)


def first_line(text: str) -> str:
  return text.strip().split("\n", 1)[0]
