"""A trained model in one file: its inference variables and the settings they need.

Weights files let `predict.py` and `evaluate.py` run a model without its training workdir, and
let the package ship a trained one. A file is flax's msgpack serialization of

    {"format": FORMAT, "metadata": JSON text, "variables": msgpack of the variables}

where the metadata holds the config the model was trained with ("config": every field of
configs/plfm.py, which fixes the window size, the normalisation and the model's switches), a
SHA-256 of the variables' bytes, the package version that wrote it and a free-text description
(training data, run). The variables are those of INFERENCE_COMPONENTS (no discriminator, no
optimiser state). Shipped files live in `plfm_jax/weights/` and are named by their stem
(`SHIPPED`); the docs/ model card of each says how it was trained and what it is worth.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.resources
import json
import os
import pathlib
from typing import Any

from flax import serialization
import jax
import ml_collections
import numpy as np

import plfm_jax
from plfm_jax import workdirs
from plfm_jax.errors import InputError
from plfm_jax.models.plfm import INFERENCE_COMPONENTS

FORMAT = "plfm-jax weights 1"
SUFFIX = ".msgpack"
# The weights shipped in the package, by name; the first is predict.py's default.
SHIPPED = ("plus_sample",)


@dataclasses.dataclass(frozen=True)
class Weights:
  """A loaded weights file: the training config, the variables and the file's metadata."""
  path: pathlib.Path
  config: ml_collections.ConfigDict
  variables: dict[str, Any]
  metadata: dict[str, Any]


def shipped_path(name: str) -> pathlib.Path:
  """The file of the shipped weights `name`."""
  return pathlib.Path(str(importlib.resources.files(plfm_jax) / "weights" / f"{name}{SUFFIX}"))


def resolve(name_or_path: str | os.PathLike) -> pathlib.Path:
  """A shipped name (see SHIPPED) or the path of a weights file."""
  if str(name_or_path) in SHIPPED:
    return shipped_path(str(name_or_path))
  return pathlib.Path(name_or_path)


def _digest(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def export(workdir: str | os.PathLike, path: str | os.PathLike, *, description: str) -> Weights:
  """Writes the best model of a train.py workdir as a weights file (atomically) and loads it.

  Raises:
    InputError: no trained model in `workdir`, or `path` exists already.
  """
  path = pathlib.Path(path)
  if path.exists():
    raise InputError(path, "exists already; remove it first")
  config = workdirs.saved_config(workdir)
  variables = workdirs.best_variables(config, workdir, INFERENCE_COMPONENTS)
  data = serialization.msgpack_serialize(jax.tree.map(np.asarray, variables))
  metadata = {
      "config": workdirs.config_dict(config),
      "sha256": _digest(data),
      "plfm_jax_version": plfm_jax.__version__,
      "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "description": description,
  }
  blob = serialization.msgpack_serialize(
      {"format": FORMAT, "metadata": json.dumps(metadata, indent=1), "variables": data})
  partial = path.with_name(path.name + ".partial")
  partial.write_bytes(blob)
  partial.replace(path)
  return load(path)


def load(name_or_path: str | os.PathLike) -> Weights:
  """Reads and checks a weights file: a shipped name (SHIPPED) or a path.

  Raises:
    InputError: the file is missing, is not a weights file, is damaged (its variables do not
      match their checksum) or holds variables that do not fit the model its metadata describes.
  """
  path = resolve(name_or_path)
  if not path.is_file():
    shipped = ", ".join(SHIPPED)
    raise InputError(path, f"no such weights file (shipped weights: {shipped})")
  try:
    content = serialization.msgpack_restore(path.read_bytes())
    if content.get("format") != FORMAT:
      raise ValueError(f"format {content.get('format')!r}, expected {FORMAT!r}")
    metadata = json.loads(content["metadata"])
    data = content["variables"]
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(path, f"not a plfm-jax weights file ({type(e).__name__}: {e})") from e
  if _digest(data) != metadata.get("sha256"):
    raise InputError(path, "damaged: its variables do not match the checksum in its metadata")
  config = ml_collections.ConfigDict(metadata["config"])
  variables = serialization.msgpack_restore(data)
  _check_fits(path, config, variables)
  return Weights(path=path, config=config, variables=variables, metadata=metadata)


def _check_fits(path: pathlib.Path, config: ml_collections.ConfigDict,
                variables: dict[str, Any]) -> None:
  """Raises unless `variables` have exactly the tree, shapes and dtypes of `config`'s model."""
  expected = workdirs.variable_shapes(config)
  expected = {name: expected[name] for name in INFERENCE_COMPONENTS}
  found = jax.tree_util.tree_flatten_with_path(variables)[0]
  wanted = jax.tree_util.tree_flatten_with_path(expected)[0]
  if [p for p, _ in found] != [p for p, _ in wanted]:
    raise InputError(path, "its variables do not fit the model its metadata describes "
                     f"({len(found)} arrays, the model has {len(wanted)})")
  for (key, array), (_, spec) in zip(found, wanted):
    if array.shape != spec.shape or array.dtype != spec.dtype:
      raise InputError(path, f"its variables do not fit the model its metadata describes "
                       f"({jax.tree_util.keystr(key)}: {array.dtype}{list(array.shape)}, the "
                       f"model has {spec.dtype}{list(spec.shape)})")
