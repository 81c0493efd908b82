"""Process-wide settings every command-line entry point applies first."""

from __future__ import annotations

import os
import pathlib

import jax
from absl import logging


def configure(debug: bool = False) -> None:
  """Quiet library logs and a persistent XLA compilation cache.

  Orbax and TFDS log every file operation at INFO and routine notes as warnings (e.g. for every
  custom patch size); a person wants progress bars, results and real errors, unless debugging.
  Compiled programs are cached on disk (`$JAX_COMPILATION_CACHE_DIR`, else
  `~/.cache/plfm_jax/xla`), so a resumed or repeated run starts in seconds instead of minutes.
  """
  logging.set_verbosity(logging.INFO if debug else logging.ERROR)
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
    jax.config.update("jax_compilation_cache_dir", str(cache / "plfm_jax" / "xla"))
