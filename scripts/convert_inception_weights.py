"""Converts pytorch-fid's Inception-v3 weights into the .npz that FID reads (docs/fid.md).

    .venv/bin/pip install torch    # this script alone needs PyTorch (1.13 or later)
    .venv/bin/python scripts/convert_inception_weights.py \\
        pt_inception-2015-12-05-6726825d.pth inception_fid.npz

Download the .pth yourself from pytorch-fid's GitHub release `fid_weights`; nothing here fetches
anything. The file is a state_dict whose keys and layouts the .npz keeps as they are: the script
copies the arrays the network uses (dropping the 1008-class `fc` and BatchNorm's
`num_batches_tracked`), then loads the result through the checks evaluate.py applies.
Untested in this repository, which has no PyTorch: only its plumbing is, with a stand-in state_dict.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

from absl import app

from plfm_jax.errors import InputError
from plfm_jax.evaluation import inception


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
  """The .pth's tensors by name; torch is imported here so that --help works without it."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise InputError(path, "converting needs PyTorch: pip install torch") from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
    raise InputError(path, f"cannot read it as a PyTorch state_dict: {e}") from None
  if not isinstance(state, dict):
    raise InputError(path, f"holds a {type(state).__name__}, not a state_dict")
  return state


def main(argv: list[str]) -> None:
  if len(argv) != 3:
    raise app.UsageError("give the .pth to read and the .npz to write: "
                         "convert_inception_weights.py PTH NPZ")
  pth, npz = argv[1:]
  state = read_state_dict(pth)
  arrays = {key: value.numpy() for key, value in state.items() if key in inception.file_shapes()}
  try:
    inception.write_weights_file(npz, arrays)
  except OSError as e:
    raise InputError(npz, f"cannot write: {e.strerror or e}") from None
  # Names the first missing or misshapen array, should the .pth not be the expected one.
  inception.load_inception(npz)
  print(f"wrote {npz}: {len(inception.file_shapes())} arrays")


if __name__ == "__main__":
  from plfm_jax import cli
  cli.run(main)
