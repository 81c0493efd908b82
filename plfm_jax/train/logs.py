"""TensorBoard scalars and image panels (tensorboardX: no TensorFlow at run time), process 0 only."""

from __future__ import annotations

import pathlib
from typing import Mapping

import jax
import numpy as np


class Logger:
  """Writes to `<workdir>/tensorboard`; does nothing on processes other than 0."""

  def __init__(self, workdir: str | pathlib.Path):
    self._writer = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # Only process 0 needs it.
      self._writer = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

  def scalars(self, step: int, values: Mapping[str, float], prefix: str) -> None:
    if self._writer:
      for name, value in values.items():
        self._writer.add_scalar(f"{prefix}/{name}", float(value), step)

  def image(self, step: int, tag: str, image: np.ndarray) -> None:
    if self._writer:
      self._writer.add_image(tag, image, step, dataformats="HWC")

  def close(self) -> None:
    if self._writer:
      self._writer.close()
