"""The `plfm_series` builder: built by the `tfds build` CLI and by Python without TensorFlow."""

from __future__ import annotations

import json
import logging
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from plfm_jax.data.layout import MONTHS, scan_dataset
from plfm_jax.data.readers import read_series
from plfm_jax.data.synthetic import write_synthetic_dataset
from plfm_jax.data.tfds_data import data_source, patch_size
from plfm_jax.errors import InputError
from tfds_builders.plfm_series import Builder
from tfds_builders.plfm_series.build import ensure_built

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SPLIT_SIZES = {"training": 16, "validation": 4, "test": 4}
SIZE = 64

# Runs in a fresh interpreter where TensorFlow is installed but cannot be found, as on a machine
# without it: builds the dataset (argv: data_dir, manual_dir, crop size), reads every split,
# makes a batch with the input pipeline, and prints the split sizes, the batch's shape and any
# TensorFlow module that got imported anyway.
_BUILD_WITHOUT_TENSORFLOW = """
import json, sys
from importlib.machinery import PathFinder

class HideTensorFlow:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] == "tensorflow":
      return None
    return PathFinder.find_spec(name, path, target)

  def invalidate_caches(self):
    PathFinder.invalidate_caches()

sys.meta_path = [HideTensorFlow() if f is PathFinder else f for f in sys.meta_path]
from configs.plfm import data_config
from plfm_jax.data.pipeline import make_iterator
from plfm_jax.data.tfds_data import data_source
from tfds_builders.plfm_series.build import ensure_built

data_dir, manual_dir, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
builder = ensure_built(data_dir, manual_dir=manual_dir)
sizes = {split: len(data_source(data_dir, split)) for split in builder.info.splits}
config = data_config()
config.tfds_dir, config.crop_size = data_dir, size
batch = next(make_iterator(config, split="train", global_batch_size=2, train=True, seed=0))
tf = sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")
print(json.dumps({"sizes": sizes, "history": batch["history"].shape, "tensorflow_modules": tf}))
"""


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory) -> pathlib.Path:
  """A small synthetic dataset in the authors' layout with training/validation/test folders."""
  return write_synthetic_dataset(tmp_path_factory.mktemp("raw") / "plfm", image_size=SIZE,
                                 series_per_split=SPLIT_SIZES, patches_per_zone=6)


def _run(args: list[str], returncode: int = 0) -> subprocess.CompletedProcess:
  # From the repository root, where `configs` can be imported.
  result = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False,
                          cwd=REPO_ROOT)
  assert result.returncode == returncode, (
      f"{args[:3]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
  return result


def _check_built(data_dir: pathlib.Path, raw: pathlib.Path, size: int) -> None:
  """Every split holds exactly the series of the raw dataset, with the contract's features, and
  the dataset records its patch size."""
  assert patch_size(data_dir) == size
  scan = scan_dataset(raw)
  for split, series_list in scan.splits.items():
    source = data_source(data_dir, split)
    assert len(source) == len(series_list), split
    expected = {(s.zone, s.patch, tuple(MONTHS.index(m) + 1 for m in s.months)): s
                for s in series_list}
    found = {}
    for i in range(len(source)):
      record = source[i]
      assert record["s2"].shape == (4, size, size, 3) and record["s2"].dtype == np.uint16
      assert record["s1"].shape == (4, size, size, 1) and record["s1"].dtype == np.float32
      assert record["cm"].shape == (4, size, size) and record["cm"].dtype == np.uint16
      assert record["months"].dtype == np.int32
      identity = (record["zone"].decode(), int(record["patch"]), tuple(record["months"].tolist()))
      found[identity] = record
    assert found.keys() == expected.keys(), split
    # The pixels are the files' (checked for one series per split: the readers have their tests).
    identity, series = sorted(expected.items())[0]
    for name, image in read_series(series, size).items():
      np.testing.assert_array_equal(found[identity][name], image)


def _tfds_build(raw: pathlib.Path, data_dir: pathlib.Path, returncode: int = 0
                ) -> subprocess.CompletedProcess:
  """The README's command, verbatim but for the folders."""
  tfds_cli = pathlib.Path(sys.executable).parent / "tfds"
  return _run([str(tfds_cli), "build", str(REPO_ROOT / "tfds_builders" / "plfm_series"),
               f"--manual_dir={raw}", f"--data_dir={data_dir}", "--file_format=array_record"],
              returncode)


@pytest.mark.slow
def test_cli_build_takes_the_patch_size_from_the_data(raw_root, tmp_path):
  # The demo's 64 px patches and the authors' 256 px ones, with the same command.
  _tfds_build(raw_root, tmp_path / "64")
  _check_built(tmp_path / "64", raw_root, SIZE)
  raw = write_synthetic_dataset(tmp_path / "raw256", image_size=256, patches_per_zone=2,
                                series_per_split={"training": 2, "validation": 1, "test": 1})
  _tfds_build(raw, tmp_path / "256")
  _check_built(tmp_path / "256", raw, 256)


@pytest.mark.slow
def test_cli_bad_file_is_one_line_with_exit_code_2(tmp_path):
  raw = write_synthetic_dataset(tmp_path / "raw", image_size=16, series_per_split={"training": 2})
  bad = sorted((raw / "training" / "sen2").rglob("image_CM_*.tif"))[-1]
  bad.write_bytes(b"not a tiff")
  result = _tfds_build(raw, tmp_path / "tfds", returncode=2)
  assert "Traceback" not in result.stderr
  assert result.stderr.rstrip().splitlines()[-1].startswith(f"error: {bad}: not a readable TIFF")
  assert result.stderr.count("error: ") == 1


def test_python_build_without_tensorflow(raw_root, tmp_path):
  result = _run([sys.executable, "-c", _BUILD_WITHOUT_TENSORFLOW, str(tmp_path), str(raw_root),
                 str(SIZE)])
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report == {"sizes": {"train": 16, "validation": 4, "test": 4},
                    "history": [2, 3, SIZE, SIZE, 3], "tensorflow_modules": []}
  _check_built(tmp_path, raw_root, SIZE)


def test_flat_layout_and_custom_size(tmp_path):
  raw = write_synthetic_dataset(tmp_path / "raw", image_size=24, series_per_split={"training": 3},
                                flat=True)
  builder = ensure_built(tmp_path / "tfds", manual_dir=raw)
  assert dict(builder.info.splits).keys() == {"train"}
  _check_built(tmp_path / "tfds", raw, 24)
  # Built once: a second call reuses it without the raw data.
  assert ensure_built(tmp_path / "tfds").info.splits["train"].num_examples == 3
  # grain worker processes receive the source pickled.
  source = data_source(tmp_path / "tfds", "train")
  clone = pickle.loads(pickle.dumps(source))
  for key in ("s2", "s1", "cm"):
    np.testing.assert_array_equal(clone[2][key], source[2][key])


def test_invalid_series_stop_the_build_or_are_skipped(tmp_path, caplog):
  raw = write_synthetic_dataset(tmp_path / "raw", image_size=16, patches_per_zone=4,
                                series_per_split={"training": 4, "validation": 1})
  bad = [sorted((raw / split / "sen2").rglob("image_RGB_*.tif"))[0]
         for split in ("training", "validation")]
  for path in bad:
    path.write_bytes(b"not a tiff")
  with pytest.raises(InputError, match="not a readable TIFF") as error:
    ensure_built(tmp_path / "strict", manual_dir=raw)
  assert error.value.path == str(bad[0])

  # Skipping drops the series using a bad file, and the validation split that had only one.
  with caplog.at_level(logging.WARNING):
    builder = ensure_built(tmp_path / "skip", manual_dir=raw, skip_invalid=True)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 3}
  messages = "\n".join(r.getMessage() for r in caplog.records)
  assert all(str(path) in messages for path in bad) and "split validation" in messages


def test_skip_invalid_comes_from_the_environment_only_where_tfds_makes_the_builder(
    tmp_path, monkeypatch):
  monkeypatch.setenv("PLFM_SKIP_INVALID", "1")
  assert Builder(data_dir=tmp_path).skip_invalid
  assert not Builder(data_dir=tmp_path, skip_invalid=False).skip_invalid
  monkeypatch.setenv("PLFM_SKIP_INVALID", "maybe")
  with pytest.raises(InputError, match="must be 1 or 0, got 'maybe'"):
    Builder(data_dir=tmp_path)


def test_patches_of_another_size_or_not_square_are_input_errors(tmp_path):
  raw = write_synthetic_dataset(tmp_path / "raw", image_size=16, series_per_split={"training": 2})
  rgb = sorted((raw / "training" / "sen2").rglob("image_RGB_*.tif"))
  tifffile.imwrite(rgb[-1], np.zeros((8, 8, 3), np.uint16))
  with pytest.raises(InputError, match="expected 16 x 16 pixels, found 8 x 8") as error:
    ensure_built(tmp_path / "tfds", manual_dir=raw)
  assert error.value.path == str(rgb[-1])
  # The size comes from the first series' first RGB image.
  tifffile.imwrite(scan_dataset(raw).all_series()[0].rgb[0], np.zeros((16, 12, 3), np.uint16))
  with pytest.raises(InputError, match="patches must be square, found 16 x 12 pixels"):
    ensure_built(tmp_path / "tfds", manual_dir=raw)


def test_missing_dataset_split_or_raw_data(raw_root, tmp_path):
  with pytest.raises(InputError, match="not built here and no raw dataset"):
    ensure_built(tmp_path / "none")
  with pytest.raises(InputError, match="does not exist or is empty"):
    ensure_built(tmp_path / "none", manual_dir=tmp_path / "missing")
  with pytest.raises(InputError, match="is not built here"):
    data_source(tmp_path / "none", "train")
  raw = write_synthetic_dataset(tmp_path / "raw", image_size=8, series_per_split={"training": 1})
  ensure_built(tmp_path / "tfds", manual_dir=raw)
  with pytest.raises(InputError, match=r"no split 'test' \(it has: train\)"):
    data_source(tmp_path / "tfds", "test")
  with pytest.raises(InputError, match=r"split 'train\[1:1\]' .* selects no records"):
    data_source(tmp_path / "tfds", "train[1:1]")
  assert len(data_source(tmp_path / "tfds", "train[:1]")) == 1


def test_real_sample(sample_root, tmp_path):
  builder = ensure_built(tmp_path, manual_dir=sample_root)
  assert dict(builder.info.splits).keys() == {"train"} and patch_size(tmp_path) == 256
  source = data_source(tmp_path, "train")
  assert len(source) == 24
  months = {}
  for i in range(len(source)):
    record = source[i]
    months[record["zone"].decode()] = tuple(record["months"].tolist())
  assert months == {"zone_9_a": (1, 2, 3, 4), "zone_9_b": (5, 6, 7, 8)}
  assert record["s2"].shape == (4, 256, 256, 3) and record["s1"].dtype == np.float32
