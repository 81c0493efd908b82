"""The one way every command line of the project runs: absl flags and one-line errors.

    FLAGS = flags.FLAGS   # define the command's flags at module level, then
    if __name__ == "__main__":
      cli.run(main)       # main(argv) gets the positional arguments in argv[1:]

A `UserError` (bad input, a diverged run) becomes one line `error: path: problem` on stderr and
its exit status (2 for input errors); `--debug` shows the traceback and library logs instead.
Usage errors (unknown flags, `app.UsageError`) are absl's: the usage line and exit status 1.
Importing this module defines `--debug`; library code does not import it.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from absl import app
from absl import flags

from plfm_jax.errors import exit_on_input_error

FLAGS = flags.FLAGS
flags.DEFINE_bool("debug", False, "Show tracebacks for input errors and library logs.")


def run(main: Callable[[list[str]], int | None], *,
        passthrough: Callable[[str], bool] | None = None) -> None:
  """Parses the flags, runs `main(argv)` with the project's error handling and exits.

  Args:
    main: gets argv (the program name, then the positional arguments and, with `passthrough`,
      the unknown flags it lets through) and returns an exit status or None.
    passthrough: arguments for which it is true are left to `main` instead of being refused as
      unknown flags (e.g. `--config.x=y` handed on to another command).
  """
  def parse(argv: Sequence[str]) -> list[str]:
    if passthrough is None:
      return app.parse_flags_with_usage(list(argv))
    rest = FLAGS(list(argv), known_only=True)
    unknown = [a for a in rest[1:] if a.startswith("--") and not passthrough(a)]
    if unknown:
      sys.stderr.write(f"FATAL Flags parsing error: unknown flags {' '.join(unknown)}\n")
      sys.exit(1)
    return rest

  def wrapped(argv: list[str]) -> None:
    with exit_on_input_error(FLAGS.debug):
      status = main(argv)
    sys.exit(status or 0)

  app.run(wrapped, flags_parser=parse)
