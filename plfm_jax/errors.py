"""User-facing errors and the command-line wrapper that prints them as one line."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

# Exit status for bad input, as distinct from crashes and usage errors (1).
INPUT_ERROR_EXIT = 2
# Exit status of a training run that diverged: the inputs were fine, the optimisation was not.
DIVERGED_EXIT = 3


class UserError(Exception):
  """An error a person can act on, told as one line `path: problem`; `exit_status` for CLIs."""
  exit_status = 1

  def __init__(self, path: str | os.PathLike, problem: str):
    self.path = os.fspath(path)
    self.problem = problem
    super().__init__(printable(f"{self.path}: {problem}"))


class InputError(UserError):
  """A problem with a user-supplied file or folder."""
  exit_status = INPUT_ERROR_EXIT


class TrainingDiverged(UserError):
  """A non-finite loss: the stage stopped and its last good checkpoint stays."""
  exit_status = DIVERGED_EXIT

  def __init__(self, stage_dir: str | os.PathLike, what: str, step: int, good_step: int | None):
    kept = ("no checkpoint was saved before it" if good_step is None else
            f"kept the last good checkpoint, step {good_step}")
    super().__init__(stage_dir, f"training diverged: {what} at step {step}; {kept}. Lower "
                     "train.learning_rate or check the data, then rerun to resume (with "
                     "--allow_config_change for a changed config)")


def printable(text: str) -> str:
  """`text` as one printable line: anything else is escaped as Python writes it (`\\n`).

  File names may hold line breaks, control characters and undecodable bytes (which Python
  reads as lone surrogates that no UTF-8 stream can print).
  """
  return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


@contextlib.contextmanager
def exit_on_input_error(debug: bool = False) -> Iterator[None]:
  """Turns a UserError (or Ctrl-C) inside the block into one line on stderr and its exit status.

  With `debug` the exception propagates with its traceback.
  """
  try:
    yield
  except UserError as e:
    if debug:
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_status)
  except KeyboardInterrupt:
    if debug:
      raise
    print("interrupted", file=sys.stderr)
    sys.exit(130)
