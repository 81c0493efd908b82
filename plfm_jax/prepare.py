"""The dataset a run reads: built from the raw data, or from a synthetic dataset written first.

Above `plfm_jax.data` and the builder (`tfds_builders`), which it runs; train and evaluation
call it.
"""

from __future__ import annotations

import pathlib
import shutil

import jax
from jax.experimental import multihost_utils
import ml_collections

from plfm_jax.data import synthetic
from plfm_jax.data import tfds_data
from plfm_jax.data.layout import skip_invalid_requested
from tfds_builders.plfm_series.build import ensure_built


def prepare_dataset(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> tuple[str, dict]:
  """(TFDS data_dir, examples per split), building `plfm_series` there first when needed.

  With no built dataset, no manual_dir and `data.synthetic` set, a synthetic dataset is written
  into `<workdir>/synthetic` first (the demo's embedded default). Process 0 builds; the others
  wait for it. PLFM_SKIP_INVALID is read here, where train.py's and evaluate.py's data starts.
  """
  data = config.data
  tfds_dir = data.tfds_dir or str(workdir / "tfds")
  if jax.process_index() == 0:
    manual_dir = data.manual_dir
    if not manual_dir and data.synthetic and not tfds_data.is_built(tfds_dir):
      manual_dir = write_synthetic_once(workdir / "synthetic", config)
    ensure_built(tfds_dir, manual_dir=manual_dir or None, skip_invalid=skip_invalid_requested())
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("plfm_dataset_ready")
  builder = ensure_built(tfds_dir)
  return tfds_dir, {name: split.num_examples for name, split in builder.info.splits.items()}


def write_synthetic_once(root: pathlib.Path, config: ml_collections.ConfigDict) -> pathlib.Path:
  """Writes the synthetic dataset under a temporary name and renames it: never half a dataset."""
  if not root.exists():
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    synthetic.write_synthetic_dataset(partial, image_size=config.data.synthetic_size,
                                      seed=config.seed)
    partial.rename(root)
  return root
