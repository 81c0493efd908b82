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

import argparse
import os
import pickle
from typing import Any, Sequence

from plfm_jax import inception
from plfm_jax.errors import InputError, run_cli


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


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("pth", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
  parser.add_argument("npz", help="the weights file to write, for evaluate.py --fid_weights")
  args = parser.parse_args(argv)
  state = read_state_dict(args.pth)
  arrays = {key: value.numpy() for key, value in state.items() if key in inception.file_shapes()}
  try:
    inception.write_weights_file(args.npz, arrays)
  except OSError as e:
    raise InputError(args.npz, f"cannot write: {e.strerror or e}") from None
  # Names the first missing or misshapen array, should the .pth not be the expected one.
  inception.load_inception(args.npz)
  print(f"wrote {args.npz}: {len(inception.file_shapes())} arrays")
  return 0


if __name__ == "__main__":
  run_cli(main)
