"""Process-wide settings every command-line entry point applies first."""

from __future__ import annotations

import logging as python_logging
import os
import pathlib

import jax
from absl import logging


# XLA:CPU's default concurrency-optimised scheduler keeps independent work in flight at once;
# for PLFM's train steps that held far more memory (temporal stage, batch 8 at 256 px: 17.3 GiB
# against 11.4 GiB with the memory-minimising scheduler) at no measurable gain in speed on 2
# cores, where each big op already uses every core. XLA reads it only from XLA_FLAGS (a
# per-program compiler option is ignored), when the backend starts.
_XLA_FLAGS = {"xla_cpu_enable_concurrency_optimized_scheduler": "false"}


def _add_xla_flags(flags: dict[str, str]) -> None:
  """Appends --name=value to $XLA_FLAGS for each flag the user has not set there."""
  current = os.environ.get("XLA_FLAGS", "")
  added = [f"--{name}={value}" for name, value in flags.items() if f"--{name}=" not in current]
  os.environ["XLA_FLAGS"] = " ".join(filter(None, [current, *added]))


def configure(debug: bool = False) -> None:
  """Quiet library logs, XLA's memory-minimising scheduler and a persistent compilation cache.

  Orbax and TFDS log every file operation at INFO and routine notes as warnings (e.g. for every
  custom patch size); a person wants progress bars, results and real errors, unless debugging.
  Compiled programs are cached on disk (`$JAX_COMPILATION_CACHE_DIR`, else
  `~/.cache/plfm_jax/xla`), so a resumed or repeated run starts in seconds instead of minutes.
  `_XLA_FLAGS` are set before JAX starts its backend. Huge pages for malloc are the process
  environment's business, set before it starts (`plfm_jax.hugepages`, the Makefile).
  """
  _add_xla_flags(_XLA_FLAGS)
  logging.set_verbosity(logging.INFO if debug else logging.ERROR)
  # What a dataset build left out (PLFM_SKIP_INVALID) is for the user, not a library's note.
  python_logging.getLogger("tfds_builders").setLevel(
      python_logging.INFO if debug else python_logging.WARNING)
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
    jax.config.update("jax_compilation_cache_dir", str(cache / "plfm_jax" / "xla"))
