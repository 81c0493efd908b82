"""Weights files: export, load, checks, the shipped weights, and predict.py without a workdir."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import zipfile

from flax import serialization
import numpy as np
import pytest
import tifffile

from configs.plfm import get_config
from plfm_jax import weight_files
from plfm_jax import workdirs
from plfm_jax.data import inputs as inputs_lib
from plfm_jax.errors import InputError
from plfm_jax.inference import scene
from test_inference_scene import REPO_ROOT, run_cli
from test_inference_scene import scenes, workdir  # noqa: F401  (fixtures, used by name)


@pytest.fixture(scope="module")
def exported(workdir, tmp_path_factory) -> weight_files.Weights:  # noqa: F811
  return weight_files.export(workdir, tmp_path_factory.mktemp("weights") / "tiny.msgpack",
                             description="a tiny random model")


def test_exported_weights_predict_like_the_checkpoint(exported, workdir, scenes,  # noqa: F811
                                                      tmp_path):
  inputs = scenes["small"]["inputs"]
  from_checkpoint = scene.load_tile_model(workdir)
  from_file = scene.tile_model(exported.config, exported.variables)
  assert (from_file.tile_size, from_file.normalization) == (from_checkpoint.tile_size,
                                                            from_checkpoint.normalization)
  # The given mask alone: the weights are under test, not the detection.
  for name, model in (("checkpoint", from_checkpoint), ("file", from_file)):
    scene.predict_scene(inputs, tmp_path / f"{name}.tif", model, masking=inputs_lib.EXACT,
                        progress=False)
  np.testing.assert_array_equal(tifffile.imread(tmp_path / "file.tif"),
                                tifffile.imread(tmp_path / "checkpoint.tif"))


def test_metadata_describes_the_arrays(exported):
  assert exported.metadata["description"] == "a tiny random model"
  assert set(exported.variables) == {"temporal", "generator", "head"}
  # Loading checked every array against the model the metadata's config builds; a config that
  # builds another model is refused.
  content = serialization.msgpack_restore(exported.path.read_bytes())
  metadata = json.loads(content["metadata"])
  metadata["config"]["model"]["head_features"] *= 2
  content["metadata"] = json.dumps(metadata)
  other = exported.path.with_name("other.msgpack")
  other.write_bytes(serialization.msgpack_serialize(content))
  with pytest.raises(InputError, match="its variables do not fit the model its metadata "
                     r"describes \(\['head'\]"):
    weight_files.load(other)


def test_damaged_or_foreign_files_are_one_line_errors(exported, tmp_path):
  data = exported.path.read_bytes()
  cases = {
      "truncated": (data[:len(data) // 2], "not a plfm-jax weights file"),
      "random": (np.random.default_rng(0).bytes(1000), "not a plfm-jax weights file"),
      # One flipped bit near the end, inside the variables.
      "flipped": (data[:-100] + bytes([data[-100] ^ 1]) + data[-99:],
                  "damaged: its variables do not match the checksum"),
      "other format": (serialization.msgpack_serialize({"format": "x"}),
                       "format 'x', expected 'plfm-jax weights 1'"),
  }
  for name, (content, message) in cases.items():
    path = tmp_path / f"{name}.msgpack"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as error:
      weight_files.load(path)
    assert error.value.path == str(path) and "\n" not in str(error.value), name
  with pytest.raises(InputError, match=r"no such weights file \(shipped weights: plus_sample\)"):
    weight_files.load(tmp_path / "missing.msgpack")


def test_export_never_overwrites(exported, workdir):  # noqa: F811
  before = exported.path.read_bytes()
  with pytest.raises(InputError, match="exists already"):
    weight_files.export(workdir, exported.path, description="again")
  assert exported.path.read_bytes() == before


def test_shipped_weights_load():
  shipped = weight_files.load(weight_files.SHIPPED[0])
  config = shipped.config
  assert shipped.path == weight_files.shipped_path("plus_sample") and shipped.path.is_file()
  assert config.data.s2_normalization == "reflectance" and config.data.crop_size == 64
  # The shipped model is the current `plus`: every model switch as configs/plfm.py sets it.
  assert workdirs.model_changes(workdirs.config_dict(config),
                                workdirs.config_dict(get_config("small,plus"))) == ([], [])
  assert "zone_9_a and zone_9_b" in shipped.metadata["description"]
  # A few MB (float32 variables of widths 16): it ships inside the package.
  assert shipped.path.stat().st_size < 10 * 2**20


@pytest.mark.slow
def test_wheel_holds_the_shipped_weights(tmp_path):
  # `pip install .` installs what the wheel holds, not the source checkout.
  source = tmp_path / "source"
  source.mkdir()
  for name in ("setup.cfg", "pyproject.toml", "README.md"):
    shutil.copy(REPO_ROOT / name, source)
  for name in ("plfm_jax", "tfds_builders"):
    shutil.copytree(REPO_ROOT / name, source / name,
                    ignore=shutil.ignore_patterns("__pycache__"))
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-q", "-w", str(tmp_path / "dist"), str(source)], check=True, timeout=300)
  [wheel] = (tmp_path / "dist").glob("*.whl")
  with zipfile.ZipFile(wheel) as archive:
    assert "plfm_jax/weights/plus_sample.msgpack" in archive.namelist()


@pytest.mark.slow
def test_predict_without_workdir_uses_the_shipped_weights(scenes, tmp_path):  # noqa: F811
  inputs = scenes["small"]["inputs"]
  out, mask_out = tmp_path / "out.tif", tmp_path / "mask.tif"
  # Without --sar (test_inference_scene's CLI test gives it): the optical dates alone.
  done = run_cli("--cloudy", inputs.cloudy, "--history", ",".join(map(str, inputs.history)),
                 "--cloud_mask", inputs.cloud_mask, "--out", out, "--mask_out", mask_out,
                 "--quiet")
  assert done.returncode == 0, done.stderr
  assert "wrote" in done.stdout
  assert "no --sar: restored from the optical dates alone" in done.stdout
  cloudy, mask, result = scenes["small"]["cloudy"], scenes["small"]["mask"], tifffile.imread(out)
  # What the given mask flags is restored, and whatever else the detection added; the rest kept.
  restored = tifffile.imread(mask_out) > 0
  assert restored[mask].all()
  np.testing.assert_array_equal(result[~restored], cloudy[~restored])
  assert np.mean(result[mask] != cloudy[mask]) > 0.5

  bad = tmp_path / "bad.msgpack"
  bad.write_bytes(b"nonsense")
  failed = run_cli("--weights", bad, "--cloudy", inputs.cloudy, "--history",
                   ",".join(map(str, inputs.history)), "--sar", inputs.sar, "--out",
                   tmp_path / "other.tif")
  assert failed.returncode == 2
  assert failed.stderr.startswith(f"error: {bad}: not a plfm-jax weights file")
  assert failed.stderr.strip().count("\n") == 0
