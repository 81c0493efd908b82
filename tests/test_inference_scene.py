"""plfm_jax.inference.scene and predict.py, end to end on synthetic georeferenced scenes."""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import tifffile

from plfm_jax.data.clouds import simulate_clouds
from plfm_jax.data.normalize import s2_reflectance
from plfm_jax.data.synthetic import synthesize_zone
from plfm_jax.errors import InputError
from plfm_jax.inference import geotiff, scene
from plfm_jax.models.plfm import PLFM
from plfm_jax import workdir as workdir_lib
from plfm_jax.checkpoints import StageCheckpoints
from plfm_jax.train import steps

from conftest import GEO_TAGS
from tests.tiny import tiny_config

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 700, 913
TILE = 64


def write(path: pathlib.Path, image: np.ndarray, tags=GEO_TAGS) -> pathlib.Path:
  """Writes like GDAL: striped, uncompressed, samples interleaved, georeferenced."""
  tifffile.imwrite(path, image, photometric="minisblack",
                   planarconfig="contig" if image.ndim == 3 else None, rowsperstrip=8,
                   extratags=tags, metadata=None)
  return path


def write_scene(folder: pathlib.Path, s2: np.ndarray, s1: np.ndarray,
                rng: np.random.Generator) -> dict:
  """Earlier dates s2[:-1], the last date under simulated clouds, its S1 and QA60."""
  folder.mkdir()
  cloudy, mask = simulate_clouds(s2_reflectance(s2[-1]), rng, coverage=0.3)
  cloudy = np.rint(cloudy * 10000).astype(np.uint16)
  # A nodata corner, as at the edge of a granule.
  cloudy[:5, :7] = 0
  mask[:5, :7] = False
  inputs = scene.SceneInputs(
      cloudy=write(folder / "S2_t3.tif", cloudy),
      history=tuple(write(folder / f"S2_t{t}.tif", s2[t]) for t in range(len(s2) - 1)),
      sar=write(folder / "S1_t3.tif", s1[-1].astype(np.float32)),
      qa60=write(folder / "QA60_t3.tif", mask.astype(np.uint16) << 10))
  return {"inputs": inputs, "cloudy": cloudy, "mask": mask, "folder": folder}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict:
  """A 700 x 913 scene and a small 90 x 141 one, synthetic land cover, georeferenced."""
  rng = np.random.default_rng(0)
  root = tmp_path_factory.mktemp("scenes")
  months = ("Jan", "Feb", "Mar", "Apr")
  s2, s1 = next(synthesize_zone(rng, 1, image_size=WIDTH, months=months))
  return {"large": write_scene(root / "large", s2[:, :HEIGHT], s1[:, :HEIGHT], rng),
          "small": write_scene(root / "small", s2[:, 100:190, 200:341], s1[:, 100:190, 200:341],
                               rng)}


def scene_config():
  # The fused image itself, not kept clear pixels: --nocomposite must show it everywhere.
  config = tiny_config("demo", size=TILE, keep_clear_pixels=False)
  return config


def random_variables(plfm: PLFM, config) -> dict:
  """Random weights of the right shapes, drawn with NumPy: no initialiser to compile."""
  shapes = jax.eval_shape(functools.partial(
      plfm.init, image_size=TILE, series_length=4), jax.random.key(0))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if len(leaf.shape) > 1:
      return rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
    return np.full(leaf.shape, 1.0 if "scale" in name or "var" in name else 0.0, np.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
  """A workdir whose best checkpoints hold a tiny random model, as training would leave them."""
  workdir = tmp_path_factory.mktemp("workdir")
  config = scene_config()
  variables = random_variables(PLFM.from_config(config.model), config)
  for stage in ("temporal", "gan", "head"):
    ckpts = StageCheckpoints(workdir, stage)
    spec = steps.STAGES[stage]
    state = steps.init_state(variables, spec, steps.make_optimizers(config.train, spec))
    ckpts.save(1, state, {"epoch": 1}, workdir_lib.config_dict(config), best=True)
    ckpts.wait()
    ckpts.close()
  return workdir


@pytest.fixture(scope="module")
def tiny_model(workdir) -> scene.TileModel:
  return scene.load_tile_model(workdir, batch_size=16)


def identity(batch):
  return batch["cloudy"]


def read(path: pathlib.Path) -> np.ndarray:
  return tifffile.imread(path)


def assert_same_georeference(a: pathlib.Path, b: pathlib.Path, codes=tuple(geotiff.GEO_TAGS)):
  with tifffile.TiffFile(a) as tif_a, tifffile.TiffFile(b) as tif_b:
    tags_a, tags_b = tif_a.pages[0].tags, tif_b.pages[0].tags
    for code in codes:
      assert (code in tags_a) == (code in tags_b), code
      if code in tags_a:
        assert (tags_a[code].dtype, tags_a[code].count, tags_a[code].value) == (
            tags_b[code].dtype, tags_b[code].count, tags_b[code].value), code


def test_identity_model_reproduces_the_scene(scenes, tmp_path):
  data = scenes["large"]
  model = scene.TileModel(identity, tile_size=TILE, batch_size=8)
  out = tmp_path / "out.tif"
  report = scene.predict_scene(data["inputs"], out, model, composite=False, progress=False)
  np.testing.assert_array_equal(read(out), data["cloudy"])
  assert (report.height, report.width) == (HEIGHT, WIDTH)
  assert report.cloud_fraction == pytest.approx(data["mask"].mean())


def test_minmax_window_scaling():
  rng = np.random.default_rng(0)
  history = rng.integers(500, 3000, (3, 8, 8, 3), dtype=np.uint16)
  cloudy = rng.integers(800, 2000, (8, 8, 3), dtype=np.uint16)
  clear = np.zeros((8, 8), bool)
  clear[:, :4] = True
  history01, cloudy01, low, span = scene._normalize_window(history, cloudy, clear, "minmax")
  # Earlier dates: each by its own min and max, as in training.
  for t in range(3):
    assert history01[t].min() == 0 and history01[t].max() == 1
  # The cloudy date: by its clear pixels, undone exactly there.
  assert (low, low + span) == (cloudy[clear].min(), cloudy[clear].max())
  np.testing.assert_array_equal(np.rint(cloudy01 * span + low)[clear], cloudy[clear])
  # Too few clear pixels: the latest earlier date sets the scale.
  clear[:, 1:] = False
  _, cloudy01, low, span = scene._normalize_window(history, cloudy, clear, "minmax")
  assert (low, low + span) == (history[-1].min(), history[-1].max())
  assert cloudy01.min() >= 0 and cloudy01.max() <= 1


def test_minmax_identity_keeps_most_clear_pixels(scenes, tmp_path):
  """Windows scaled by their clear pixels give those back exactly; the rest may clip."""
  data = scenes["large"]
  model = scene.TileModel(identity, tile_size=TILE, normalization="minmax", batch_size=8)
  out = tmp_path / "out.tif"
  scene.predict_scene(data["inputs"], out, model, composite=False, progress=False)
  result, clear = read(out), ~data["mask"]
  assert np.mean(result[clear] == data["cloudy"][clear]) > 0.99


def test_offset_model_changes_only_cloudy_pixels(scenes, tmp_path):
  data = scenes["large"]
  model = scene.TileModel(lambda b: b["history"][:, -1] + 0.01, tile_size=TILE, batch_size=8)
  out = tmp_path / "out.tif"
  scene.predict_scene(data["inputs"], out, model, overlap=16, progress=False)
  result, mask = read(out), data["mask"]
  np.testing.assert_array_equal(result[~mask], data["cloudy"][~mask])
  with tifffile.TiffFile(data["inputs"].history[-1]) as tif:
    latest = tif.asarray()
  np.testing.assert_array_equal(result[mask], latest[mask] + 100)


def test_tiny_model_end_to_end(scenes, tiny_model, tmp_path):
  data = scenes["large"]
  out, mask_out = tmp_path / "out.tif", tmp_path / "mask.tif"
  scene.predict_scene(data["inputs"], out, tiny_model, mask_out=mask_out, progress=False)
  cloudy, mask = data["cloudy"], data["mask"]
  result = read(out)
  assert result.shape == cloudy.shape and result.dtype == np.uint16
  assert_same_georeference(data["inputs"].cloudy, out)
  np.testing.assert_array_equal(result[~mask], cloudy[~mask])
  assert np.mean(result[mask] != cloudy[mask]) > 0.5
  np.testing.assert_array_equal(read(mask_out), mask.astype(np.uint8))
  # The mask has no nodata value: 0 means clear there.
  assert_same_georeference(data["inputs"].cloudy, mask_out, tuple(geotiff.GEO_TAGS)[:-1])


def test_no_composite_writes_the_prediction_everywhere(scenes, tiny_model, tmp_path):
  data = scenes["small"]
  out, raw = tmp_path / "out.tif", tmp_path / "raw.tif"
  scene.predict_scene(data["inputs"], out, tiny_model, progress=False)
  scene.predict_scene(data["inputs"], raw, tiny_model, composite=False, progress=False)
  cloudy, mask, result, prediction = data["cloudy"], data["mask"], read(out), read(raw)
  assert_same_georeference(data["inputs"].cloudy, raw)
  np.testing.assert_array_equal(result[mask], prediction[mask])
  assert np.mean(prediction[~mask] != cloudy[~mask]) > 0.5
  # Nodata stays nodata.
  assert not prediction[:5, :7].any()


@pytest.mark.parametrize("qa60", [0, 1024], ids=["cloud-free", "fully-cloudy"])
def test_cloud_free_and_fully_cloudy_dates(scenes, tiny_model, tmp_path, qa60):
  # Real QA60 exports can be all 0 or all 1024.
  inputs = scenes["small"]["inputs"]
  cloudy = read(inputs.cloudy)
  mask = write(tmp_path / "qa60.tif", np.full(cloudy.shape[:2], qa60, np.uint16))
  out = tmp_path / "out.tif"
  report = scene.predict_scene(dataclasses.replace(inputs, qa60=mask), out, tiny_model,
                               progress=False)
  result = read(out)
  assert_same_georeference(inputs.cloudy, out)
  if qa60 == 0:
    # Unchanged, and the model was not run.
    assert (report.windows, report.cloud_fraction) == (0, 0.0)
    np.testing.assert_array_equal(result, cloudy)
  else:
    # Restored everywhere (no clear pixel to match the earlier dates to) but in the nodata
    # corner, which stays nodata.
    nodata = ~cloudy.any(axis=-1)
    assert report.windows > 0 and report.cloud_fraction == 1 - nodata.mean()
    assert not result[nodata].any()
    assert np.mean(result[~nodata] != cloudy[~nodata]) > 0.9


def test_existing_output_needs_overwrite(scenes, tmp_path):
  data = scenes["small"]
  model = scene.TileModel(identity, tile_size=TILE)
  out = tmp_path / "out.tif"
  out.write_bytes(b"keep me")
  with pytest.raises(InputError, match="exists; pass --overwrite"):
    scene.predict_scene(data["inputs"], out, model, progress=False)
  assert out.read_bytes() == b"keep me"
  scene.predict_scene(data["inputs"], out, model, overwrite=True, progress=False)
  assert read(out).shape == data["cloudy"].shape
  with pytest.raises(InputError, match="is also an input"):
    scene.predict_scene(data["inputs"], data["inputs"].sar, model, overwrite=True,
                        progress=False)
  with pytest.raises(InputError, match="is also the output"):
    scene.predict_scene(data["inputs"], tmp_path / "new.tif", model, mask_out=tmp_path / "new.tif",
                        progress=False)


def test_bad_inputs_rejected(scenes, tmp_path):
  large, small = scenes["large"]["inputs"], scenes["small"]["inputs"]
  model = scene.TileModel(identity, tile_size=TILE)
  shifted = write(tmp_path / "shifted.tif", read(small.sar), tags=[
      (c, t, n, (0.0, 0.0, 0.0, 400000.0, 5000040.0, 0.0) if c == 33922 else v, w)
      for c, t, n, v, w in GEO_TAGS])
  # Without georeference, another grid cannot be reprojected.
  plain_large = write(tmp_path / "plain_large.tif", read(large.sar), tags=[])
  truncated = tmp_path / "truncated.tif"
  truncated.write_bytes(small.history[0].read_bytes()[:-2000])
  cases = [
      (scene.SceneInputs(small.cloudy, small.history, plain_large, small.qa60), plain_large,
       "size"),
      (scene.SceneInputs(small.cloudy, (truncated, *small.history[1:]), small.sar), truncated,
       "truncated"),
      (scene.SceneInputs(small.cloudy, small.history, small.cloudy), small.cloudy, "band"),
      (scene.SceneInputs(small.sar, small.history, small.sar), small.sar, "band"),
      (scene.SceneInputs(small.cloudy, small.history[1:], small.sar), small.history[1],
       "3 earlier"),
  ]
  for inputs, culprit, problem in cases:
    with pytest.raises(InputError, match=problem) as info:
      scene.predict_scene(inputs, tmp_path / "out.tif", model, progress=False)
    message = str(info.value)
    assert str(culprit) in message and "\n" not in message
    if problem == "size":
      assert str(small.cloudy) in message
  assert not (tmp_path / "out.tif").exists()
  # A georeferenced input on another grid (here shifted by 4 pixels) is reprojected instead.
  report = scene.predict_scene(scene.SceneInputs(small.cloudy, small.history, shifted, small.qa60),
                               tmp_path / "out.tif", model, progress=False)
  assert [note.split(": ", 1)[0] for note in report.notes] == [str(shifted)]


def run_cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(REPO_ROOT / "predict.py"), *map(str, args)],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli(scenes, workdir, tmp_path):
  inputs = scenes["small"]["inputs"]
  out = tmp_path / "out.tif"
  scene_args = ["--cloudy", inputs.cloudy, "--history", ",".join(map(str, inputs.history)),
                "--sar", inputs.sar, "--out", out, "--quiet"]
  done = run_cli("--workdir", workdir, *scene_args, "--cloud_mask", inputs.qa60)
  assert done.returncode == 0, done.stderr
  assert "wrote" in done.stdout
  assert read(out).shape == scenes["small"]["cloudy"].shape
  assert_same_georeference(inputs.cloudy, out)

  failed = run_cli("--workdir", tmp_path / "untrained", *scene_args, "--overwrite")
  assert failed.returncode == 2
  assert failed.stderr.strip().count("\n") == 0
  assert failed.stderr.startswith(f"error: {tmp_path / 'untrained'}: no trained model")
