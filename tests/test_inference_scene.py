"""plfm_jax.inference.scene and predict.py, end to end on synthetic georeferenced scenes."""

from __future__ import annotations

import dataclasses
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import tifffile

from plfm_jax.data import inputs, pipeline
from plfm_jax.data.clouds import simulate_clouds
from plfm_jax.data.normalize import s2_reflectance
from plfm_jax.data.synthetic import synthesize_zone
from plfm_jax.errors import InputError
from plfm_jax.inference import scene

from conftest import GEO_TAGS, MULTIEARTH_ROOT, multiearth_rgb
from tests.tiny import tiny_config, write_random_workdir

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 300, 421
WINDOW = 128
TILE = 32
EXACT = inputs.EXACT


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
  cloudy, mask, _ = simulate_clouds(s2_reflectance(s2[-1]), rng, coverage=0.3)
  cloudy = np.rint(cloudy * 10000).astype(np.uint16)
  # A nodata corner, as at the edge of a granule.
  cloudy[:5, :7] = 0
  mask[:5, :7] = False
  inputs_ = scene.SceneInputs(
      cloudy=write(folder / "S2_t3.tif", cloudy),
      history=tuple(write(folder / f"S2_t{t}.tif", s2[t]) for t in range(len(s2) - 1)),
      sar=write(folder / "S1_t3.tif", s1[-1].astype(np.float32)),
      cloud_mask=write(folder / "QA60_t3.tif", mask.astype(np.uint16) << 10))
  return {"inputs": inputs_, "cloudy": cloudy, "mask": mask, "folder": folder, "s2": s2}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict:
  """A 300 x 421 scene and a small 90 x 141 one, synthetic land cover, georeferenced."""
  rng = np.random.default_rng(0)
  root = tmp_path_factory.mktemp("scenes")
  months = ("Jan", "Feb", "Mar", "Apr")
  s2, s1 = next(synthesize_zone(rng, 1, image_size=WIDTH, months=months))
  return {"large": write_scene(root / "large", s2[:, :HEIGHT], s1[:, :HEIGHT], rng),
          "small": write_scene(root / "small", s2[:, 100:190, 200:341], s1[:, 100:190, 200:341],
                               rng)}


def scene_config():
  # The fused image itself, not kept clear pixels: --nocomposite must show it everywhere.
  return tiny_config("demo", size=TILE, keep_clear_pixels=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
  """A workdir whose best checkpoints hold a tiny random model, as training would leave them."""
  return write_random_workdir(tmp_path_factory.mktemp("workdir"), scene_config())


@pytest.fixture(scope="module")
def tiny_model(workdir) -> scene.TileModel:
  return scene.load_tile_model(workdir, batch_size=4)


def identity(batch):
  return batch["cloudy"]


def read(path: pathlib.Path) -> np.ndarray:
  return tifffile.imread(path)


def assert_same_grid(a: pathlib.Path, b: pathlib.Path) -> None:
  with rasterio.open(a) as ra, rasterio.open(b) as rb:
    assert (ra.crs, ra.transform, ra.shape) == (rb.crs, rb.transform, rb.shape)


def predict(data, out, model, **kwargs) -> scene.SceneReport:
  kwargs.setdefault("window", WINDOW)
  kwargs.setdefault("progress", False)
  return scene.predict_scene(data["inputs"] if isinstance(data, dict) else data, out, model,
                             **kwargs)


def test_identity_model_reproduces_the_scene(scenes, tmp_path):
  data = scenes["large"]
  model = scene.TileModel(identity, tile_size=TILE, batch_size=4)
  out = tmp_path / "out.tif"
  report = predict(data, out, model, composite=False, masking=EXACT)
  np.testing.assert_array_equal(read(out), data["cloudy"])
  assert (report.height, report.width) == (HEIGHT, WIDTH)
  assert report.cloud_fraction == pytest.approx(data["mask"].mean())
  assert_same_grid(data["inputs"].cloudy, out)
  with rasterio.open(out) as result:
    assert result.nodata == 0 and result.profile["tiled"]


def test_minmax_window_scaling():
  rng = np.random.default_rng(0)
  history = rng.uniform(0.05, 0.3, (3, 8, 8, 3)).astype(np.float32)
  cloudy = rng.uniform(0.08, 0.2, (8, 8, 3)).astype(np.float32)
  clear = np.zeros((8, 8), bool)
  clear[:, :4] = True
  history01, cloudy01, low, span = scene._normalize_window(history, cloudy, clear, "minmax")
  # Earlier dates: each by its own min and max, as in training.
  for t in range(3):
    assert history01[t].min() == 0 and history01[t].max() == pytest.approx(1)
  # The cloudy date: by its clear pixels, undone exactly there.
  assert (low, low + span) == pytest.approx((cloudy[clear].min(), cloudy[clear].max()))
  np.testing.assert_allclose((cloudy01 * span + low)[clear], cloudy[clear], atol=1e-6)
  # Too few clear pixels: the latest earlier date sets the scale.
  clear[:, 1:] = False
  _, cloudy01, low, span = scene._normalize_window(history, cloudy, clear, "minmax")
  assert (low, low + span) == pytest.approx((history[-1].min(), history[-1].max()))
  assert cloudy01.min() >= 0 and cloudy01.max() <= 1


def test_offset_model_changes_only_masked_pixels(scenes, tmp_path):
  data = scenes["large"]
  model = scene.TileModel(lambda b: b["history"][:, -1] + 0.01, tile_size=TILE, batch_size=4)
  out, mask_out = tmp_path / "out.tif", tmp_path / "mask.tif"
  predict(data, out, model, overlap=16, masking=EXACT, mask_out=mask_out)
  result, mask = read(out), data["mask"]
  np.testing.assert_array_equal(result[~mask], data["cloudy"][~mask])
  np.testing.assert_array_equal(result[mask], data["s2"][-2][mask] + 100)
  np.testing.assert_array_equal(read(mask_out), mask.astype(np.uint8) * scene.MASK_CLOUD)


def test_tiny_model_finds_the_clouds_and_restores_them(scenes, tiny_model, tmp_path):
  """No mask given: the detection finds the simulated clouds; the mask written says what."""
  data = scenes["large"]
  plain = dataclasses.replace(data["inputs"], cloud_mask=None)
  out, mask_out = tmp_path / "out.tif", tmp_path / "mask.tif"
  report = predict(plain, out, tiny_model, mask_out=mask_out)
  cloudy, mask, result, found = data["cloudy"], data["mask"], read(out), read(mask_out)
  assert result.shape == cloudy.shape and result.dtype == np.uint16
  assert_same_grid(data["inputs"].cloudy, out)
  assert_same_grid(data["inputs"].cloudy, mask_out)
  assert set(np.unique(found)) <= {scene.MASK_CLEAR, scene.MASK_CLOUD, scene.MASK_SHADOW}
  np.testing.assert_array_equal(result[found == 0], cloudy[found == 0])
  visible = np.abs(cloudy.astype(int) - data["s2"][-1]).max(-1) > 200
  assert (found > 0)[visible & mask].mean() > 0.8
  assert report.windows > 0 and report.sar
  # What was found, per date: the cloudy date's share near the truth, the earlier ones clear.
  *earlier, last = report.dates
  assert last.name == str(plain.cloudy) and 0.5 * mask.mean() < last.cloud + last.shadow
  assert all(d.cloud + d.shadow < 0.02 and d.given == 0 for d in earlier)


def test_no_composite_writes_the_prediction_everywhere(scenes, tiny_model, tmp_path):
  data = scenes["small"]
  out, raw = tmp_path / "out.tif", tmp_path / "raw.tif"
  predict(data, out, tiny_model, masking=EXACT)
  predict(data, raw, tiny_model, composite=False, masking=EXACT)
  cloudy, mask, result, prediction = data["cloudy"], data["mask"], read(out), read(raw)
  assert_same_grid(data["inputs"].cloudy, raw)
  np.testing.assert_array_equal(result[mask], prediction[mask])
  assert np.mean(prediction[~mask] != cloudy[~mask]) > 0.5
  # Nodata stays nodata.
  assert not prediction[:5, :7].any()


@pytest.mark.parametrize("qa60", [0, 1024], ids=["cloud-free", "fully-cloudy"])
def test_cloud_free_and_fully_cloudy_dates(scenes, tiny_model, tmp_path, qa60):
  # Real QA60 exports can be all 0 or all 1024.
  inputs_ = scenes["small"]["inputs"]
  cloudy = read(inputs_.cloudy)
  mask = write(tmp_path / "qa60.tif", np.full(cloudy.shape[:2], qa60, np.uint16))
  out = tmp_path / "out.tif"
  report = predict(dataclasses.replace(inputs_, cloud_mask=mask, mask_format="qa60"), out,
                   tiny_model, masking=EXACT)
  result = read(out)
  assert_same_grid(inputs_.cloudy, out)
  if qa60 == 0:
    # Unchanged, and the model was not run.
    assert (report.windows, report.cloud_fraction) == (0, 0.0)
    np.testing.assert_array_equal(result, cloudy)
  else:
    # Restored everywhere (no clear pixel to match the earlier dates to) but in the nodata
    # corner, which stays nodata.
    nodata = ~cloudy.any(axis=-1)
    assert report.windows > 0 and report.cloud_fraction == pytest.approx(1 - nodata.mean())
    assert not result[nodata].any()
    assert np.mean(result[~nodata] != cloudy[~nodata]) > 0.9


def recorder():
  """A model that keeps every batch it is given and returns its cloudy windows."""
  seen = []

  def predict_tiles(batch):
    seen.append({k: v.copy() for k, v in batch.items()})
    return batch["cloudy"]
  return predict_tiles, seen


def test_without_sar_the_model_gets_no_sar(scenes, tiny_model, tmp_path):
  data = scenes["small"]
  optical = dataclasses.replace(data["inputs"], sar=None)
  predict_tiles, seen = recorder()
  report = predict(optical, tmp_path / "rec.tif", scene.TileModel(predict_tiles, tile_size=TILE),
                   masking=EXACT)
  assert not report.sar and seen and all("sar" not in batch for batch in seen)
  out = tmp_path / "out.tif"
  predict(optical, out, tiny_model, masking=EXACT)
  result, mask = read(out), data["mask"]
  np.testing.assert_array_equal(result[~mask], data["cloudy"][~mask])
  assert np.mean(result[mask] != data["cloudy"][mask]) > 0.5


def test_one_earlier_date_and_six(scenes, tmp_path):
  data = scenes["small"]
  folder = data["folder"]
  predict_tiles, seen = recorder()
  model = scene.TileModel(predict_tiles, tile_size=TILE, batch_size=1)
  # One date: the model reads it three times.
  one = dataclasses.replace(data["inputs"], history=data["inputs"].history[-1:])
  # One window holds the whole small scene.
  predict(one, tmp_path / "one.tif", model, masking=EXACT, window=160)
  latest = s2_reflectance(data["s2"][-2])
  for t in range(3):
    np.testing.assert_array_equal(seen[-1]["history"][0, t, :90, :141], latest)
  # Six dates, three of them under thick cloud: the three clear ones are read, oldest first.
  clear = data["inputs"].history
  clouded = []
  for t, path in enumerate(clear):
    image = read(path).copy()
    image[:, :100] = 9000
    clouded.append(write(folder / f"clouded_{t}.tif", image))
  six = dataclasses.replace(data["inputs"], history=(clear[0], clouded[0], clear[1], clouded[1],
                                                     clouded[2], clear[2]))
  seen.clear()
  predict(six, tmp_path / "six.tif", model, window=160)
  for t in range(3):
    np.testing.assert_array_equal(seen[-1]["history"][0, t, :90, :141],
                                  s2_reflectance(data["s2"][t]))


def test_a_scene_window_is_the_pipelines_example(tmp_path):
  """The one input builder: a dataset sample and a scene of the same pixels reach the model
  identically (clouds on the last date are real here: nothing is simulated on top)."""
  rng = np.random.default_rng(3)
  s2, s1 = next(synthesize_zone(rng, 1, image_size=WINDOW, months=("Jan", "Feb", "Mar", "Apr")))
  cloudy, _, _ = simulate_clouds(s2_reflectance(s2[-1]), rng, coverage=0.3, haze_margin=0.1)
  s2 = s2.copy()
  s2[-1] = np.rint(cloudy * 10000).astype(np.uint16)
  record = {"s2": s2, "s1": s1[..., None].astype(np.float32),
            "cm": np.zeros(s2.shape[:3], np.uint16), "zone": b"zone_1_a", "patch": 0,
            "months": np.arange(1, 5, dtype=np.int32)}
  from configs.plfm import data_config
  cfg = data_config()
  cfg.update({"s2_normalization": "reflectance", "eval_crop_size": 0, "scenario": "detected"})
  cfg.clouds.coverage = (0.0, 0.0)
  example = pipeline.transform_record(record, np.random.default_rng(0), cfg, train=False)
  folder = tmp_path / "scene"
  folder.mkdir()
  inputs_ = scene.SceneInputs(
      cloudy=write(folder / "t3.tif", s2[-1]),
      history=tuple(write(folder / f"t{t}.tif", s2[t]) for t in range(3)),
      sar=write(folder / "s1.tif", s1[-1].astype(np.float32)))
  predict_tiles, seen = recorder()
  predict(inputs_, tmp_path / "out.tif", scene.TileModel(predict_tiles, tile_size=TILE,
                                                         batch_size=1))
  [batch] = seen
  for key in ("history", "history_mask", "cloudy", "cloud_mask", "sar"):
    np.testing.assert_array_equal(batch[key][0], example[key], err_msg=key)


def test_existing_output_needs_overwrite(scenes, tmp_path):
  data = scenes["small"]
  model = scene.TileModel(identity, tile_size=TILE)
  out = tmp_path / "out.tif"
  out.write_bytes(b"keep me")
  with pytest.raises(InputError, match="exists; pass --overwrite"):
    predict(data, out, model, masking=EXACT)
  assert out.read_bytes() == b"keep me"
  predict(data, out, model, overwrite=True, masking=EXACT)
  assert read(out).shape == data["cloudy"].shape
  with pytest.raises(InputError, match="is also an input"):
    predict(data, data["inputs"].sar, model, overwrite=True)
  with pytest.raises(InputError, match="is also the output"):
    predict(data, tmp_path / "new.tif", model, mask_out=tmp_path / "new.tif")


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
  odd_mask = write(tmp_path / "odd_mask.tif", np.full(read(small.cloudy).shape[:2], 4000,
                                                       np.uint16))
  missing = tmp_path / "missing.tif"
  cases = [
      (scene.SceneInputs(small.cloudy, small.history, plain_large), plain_large, "size"),
      (scene.SceneInputs(small.cloudy, (truncated, *small.history[1:]), small.sar), truncated,
       "truncated"),
      (scene.SceneInputs(small.cloudy, small.history, small.cloudy), small.cloudy, "band"),
      (scene.SceneInputs(small.sar, small.history, small.sar), small.sar, "band"),
      (scene.SceneInputs(small.cloudy, (missing,), small.sar), missing, "no such file"),
      (scene.SceneInputs(small.cloudy, small.history, small.sar, odd_mask), odd_mask,
       "cannot be read as a cloud mask"),
      (scene.SceneInputs(small.cloudy, (), small.sar), "--history", "at least one"),
  ]
  for inputs_, culprit, problem in cases:
    with pytest.raises(InputError, match=problem) as info:
      predict(inputs_, tmp_path / "out.tif", model)
    message = str(info.value)
    assert str(culprit) in message and "\n" not in message
    if problem == "size":
      assert str(small.cloudy) in message
  assert not (tmp_path / "out.tif").exists()
  # A georeferenced input on another grid (here shifted by 4 pixels) is reprojected instead.
  report = predict(scene.SceneInputs(small.cloudy, small.history, shifted, small.cloud_mask),
                   tmp_path / "out.tif", model, masking=EXACT)
  assert [note.split(": ", 1)[0] for note in report.notes] == [str(shifted)]


def test_cloud_optimised_output(scenes, tmp_path):
  data = scenes["large"]
  out = tmp_path / "cog.tif"
  predict(data, out, scene.TileModel(identity, tile_size=TILE, batch_size=4), masking=EXACT,
          cog=True)
  with rasterio.open(out) as cog:
    assert cog.overviews(1) and cog.profile["tiled"]
    np.testing.assert_array_equal(np.moveaxis(cog.read(), 0, -1), data["cloudy"])
  assert not list(tmp_path.glob(".*")), "temporary file left behind"


def run_cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(REPO_ROOT / "predict.py"), *map(str, args)],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli(scenes, workdir, tmp_path):
  inputs_ = scenes["small"]["inputs"]
  out = tmp_path / "out.tif"
  scene_args = ["--cloudy", inputs_.cloudy, "--history", ",".join(map(str, inputs_.history)),
                "--out", out, "--quiet", "--window", WINDOW]
  done = run_cli("--workdir", workdir, *scene_args, "--sar", inputs_.sar,
                 "--cloud_mask", inputs_.cloud_mask)
  assert done.returncode == 0, done.stderr
  assert "wrote" in done.stdout and f"found in {inputs_.cloudy}: cloud or haze" in done.stdout
  assert read(out).shape == scenes["small"]["cloudy"].shape
  assert_same_grid(inputs_.cloudy, out)

  failed = run_cli("--workdir", tmp_path / "untrained", *scene_args, "--overwrite")
  assert failed.returncode == 2
  assert failed.stderr.strip().count("\n") == 0
  assert failed.stderr.startswith(f"error: {tmp_path / 'untrained'}: no trained model")

  # A baseline alone: no model, and a model is refused with it.
  done = run_cli("--method", "matched_multiscale", *scene_args, "--overwrite", "--sar",
                 inputs_.sar)
  assert done.returncode == 0, done.stderr
  assert ("restored with the gap-filling method matched_multiscale (no network); --sar is not "
          "used") in done.stdout
  assert read(out).shape == scenes["small"]["cloudy"].shape
  refused = run_cli("--method", "persistence", "--workdir", workdir, *scene_args, "--overwrite")
  assert refused.returncode != 0
  assert "--method=persistence uses no model" in refused.stderr


def test_a_gapfill_method_restores_the_scene_without_a_model(scenes, tmp_path):
  """A baseline as the model (`gapfill_tile_model`): persistence puts the latest earlier date
  exactly where something is restored and leaves every other pixel as it was, over the
  overlapping windows of a scene."""
  data = scenes["large"]
  out, mask_out = tmp_path / "out.tif", tmp_path / "mask.tif"
  report = predict(data, out, scene.gapfill_tile_model("persistence"), mask_out=mask_out,
                   masking=inputs.Masking(detect=False))
  restored, result = read(mask_out) > 0, read(out)
  assert report.windows > 1 and (restored >= data["mask"]).all()
  np.testing.assert_array_equal(result[restored], read(data["inputs"].history[-1])[restored])
  np.testing.assert_array_equal(result[~restored], data["cloudy"][~restored])
  with pytest.raises(InputError, match="unknown method 'mean'"):
    scene.gapfill_tile_model("mean")


def test_a_clouded_earlier_date_never_leaks_into_the_output(scenes, tmp_path):
  """The latest earlier date is under thick cloud where the cloudy date is too; a model that
  copies the latest date it reads must copy ground there, filled from the other dates."""
  data = scenes["small"]
  latest = read(data["inputs"].history[-1]).copy()
  latest[data["mask"]] = 9000
  clouded = write(data["folder"] / "latest_clouded.tif", latest)
  inputs_ = dataclasses.replace(data["inputs"], history=(*data["inputs"].history[:-1], clouded))
  model = scene.TileModel(lambda b: b["history"][:, -1], tile_size=TILE, batch_size=1)
  out = tmp_path / "out.tif"
  predict(inputs_, out, model, window=160)
  result, mask = read(out), data["mask"]
  assert (result[mask] < 5000).all()
  # The filled pixels follow the ground (the other dates matched to the latest; the synthetic
  # fields change from month to month, so only roughly).
  truth = data["s2"][-2][mask].astype(float)
  assert np.abs(result[mask] - truth).mean() < 0.3 * truth.mean()


def _multiearth_stack(folder: pathlib.Path, date: str) -> pathlib.Path:
  """One MultiEarth date's R, G, B as one GeoTIFF."""
  return write(folder / f"{date}.tif", multiearth_rgb(date), tags=[])


@pytest.mark.skipif(not MULTIEARTH_ROOT.is_dir(), reason=f"{MULTIEARTH_ROOT} not found")
def test_real_clouds_and_shadows_are_found_and_restored(tmp_path):
  """MultiEarth, 2019-07-11 (one cumulus, its shadow; QA60 empty), every earlier date, no mask:
  the shipped model with the tool's detection leaves no cloud-bright pixel, and the restored area
  agrees with the next clear date (2019-07-26) matched to the date's clear pixels."""
  from plfm_jax import weight_files
  from plfm_jax.models import gapfill
  earlier = [_multiearth_stack(tmp_path, d) for d in ("2019_06_06", "2019_06_11", "2019_07_01")]
  cloudy, later = (_multiearth_stack(tmp_path, d) for d in ("2019_07_11", "2019_07_26"))
  shipped = weight_files.load(weight_files.SHIPPED[0])
  out, mask_out = tmp_path / "restored.tif", tmp_path / "mask.tif"
  report = scene.predict_scene(scene.SceneInputs(cloudy=cloudy, history=tuple(earlier)), out,
                               scene.tile_model(shipped.config, shipped.variables),
                               mask_out=mask_out, progress=False)
  bright = lambda path: float((s2_reflectance(read(path)).mean(-1) > 0.15).mean())
  assert bright(cloudy) > 0.01 and bright(out) <= bright(later) + 1e-4
  restored = read(mask_out) > 0
  assert (read(mask_out) == scene.MASK_SHADOW).sum() > 500 and restored.mean() < 0.2
  clear_later = s2_reflectance(read(later))
  reference = np.asarray(gapfill.match_bands(clear_later[None], s2_reflectance(read(cloudy))[None],
                                             restored[None, ..., None].astype(np.float32)))[0]
  error = s2_reflectance(read(out))[restored] - reference[restored]
  assert -10 * np.log10(np.mean(error**2)) > 40
  assert report.dates[-1].cloud > 0.02 and report.dates[2].cloud + report.dates[2].shadow < 0.01


def test_window_layout_takes_the_fewest_pixels_for_as_many_windows():
  from plfm_jax.inference import tiling
  count = lambda h, w, side, overlap: (len(tiling.window_starts(h, side, overlap))
                                       * len(tiling.window_starts(w, side, overlap)))
  # 2048 px: five windows per axis either way, of 480 px rather than 512.
  assert scene.window_layout(2048, 2048, None, None) == (480, 64)
  assert scene.window_layout(10980, 10980, None, None) == (512, 64)
  # A scene that fits in one window gets one, rounded up to 32 px.
  assert scene.window_layout(100, 70, None, None) == (128, 16)
  for height, width, window, overlap in ((513, 513, 512, 64), (1000, 300, 256, 0),
                                         (5000, 40, 512, 64), (777, 1234, 384, 48)):
    side, used = scene.window_layout(height, width, window, overlap)
    assert used == overlap and side % scene.WINDOW_MULTIPLE == 0 and side <= window
    assert count(height, width, side, overlap) <= count(height, width, window, overlap)
    smaller = side - scene.WINDOW_MULTIPLE
    assert smaller <= overlap or count(height, width, smaller, overlap) > count(
        height, width, window, overlap)
  with pytest.raises(ValueError, match="multiple of 32"):
    scene.window_layout(100, 100, 100, None)
  with pytest.raises(InputError, match="--overlap"):
    scene.window_layout(1000, 1000, 256, 256)
