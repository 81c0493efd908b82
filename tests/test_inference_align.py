"""Inputs as the authors' downloader writes them: per-band date folders, S1 in another UTM zone."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
import tifffile

from plfm_jax.data import inputs, stack
from plfm_jax.errors import InputError
from plfm_jax.inference import scene

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# A 104 x 104 px Sentinel-2 grid of 10 m pixels in UTM zone 22S, near the zone's eastern edge,
# and the Sentinel-1 grid over the same ground in zone 23S: 104 x 103 px, as the downloader
# exports them.
S2_CRS, S1_CRS = "EPSG:32722", "EPSG:32723"
S2_TRANSFORM = from_origin(820000.0, 7400000.0, 10.0, 10.0)
SIZE = 104


def s1_grid() -> tuple:
  """(transform, height, width) of a 10 m grid in zone 23S holding the S2 footprint."""
  left, bottom, right, top = rasterio.warp.transform_bounds(
      S2_CRS, S1_CRS, 820000.0, 7400000.0 - SIZE * 10, 820000.0 + SIZE * 10, 7400000.0)
  return from_origin(left, top, 10.0, 10.0), 103, 104


def write(path: pathlib.Path, image: np.ndarray, crs: str, transform, nodata=None) -> pathlib.Path:
  image = image if image.ndim == 3 else image[None]
  with rasterio.open(path, "w", driver="GTiff", count=image.shape[0], dtype=image.dtype,
                     height=image.shape[1], width=image.shape[2], crs=crs, transform=transform,
                     nodata=nodata) as dst:
    dst.write(image)
  return path


def date_folder(root: pathlib.Path, date: str, rgb: np.ndarray, qa60: np.ndarray | None = None
                ) -> pathlib.Path:
  """A date as the downloader writes it: one uint16 GeoTIFF per band."""
  folder = root / date
  folder.mkdir(parents=True)
  for band, image in zip(stack.RGB_BANDS, np.moveaxis(rgb, -1, 0)):
    write(folder / f"{date}.{band}.tif", image, S2_CRS, S2_TRANSFORM)
  if qa60 is not None:
    write(folder / f"{date}.QA60.tif", qa60, S2_CRS, S2_TRANSFORM)
  return folder


@pytest.fixture
def export(tmp_path) -> dict:
  """Three earlier dates and a cloudy one as per-band folders, and an S1 VV image (float64 dB,
  NaN borders) on a grid of the next UTM zone."""
  rng = np.random.default_rng(0)
  ground = rng.integers(500, 3000, (SIZE, SIZE, 3)).astype(np.uint16)
  history = [date_folder(tmp_path, f"2020-0{m}-15", ground + 10 * m) for m in (1, 2, 3)]
  mask = np.zeros((SIZE, SIZE), bool)
  mask[30:70, 20:60] = True
  cloudy = np.where(mask[..., None], 9000, ground + 40).astype(np.uint16)
  cloudy_dir = date_folder(tmp_path, "2020-04-15", cloudy, (mask * 1024).astype(np.uint16))
  transform, height, width = s1_grid()
  vv = np.full((height, width), -12.0)
  vv[:, :3] = np.nan
  sar = write(tmp_path / "S1_2020-04-15.VV.tif", vv, S1_CRS, transform, nodata=np.nan)
  return {"cloudy": cloudy_dir, "history": tuple(history), "sar": sar, "mask": mask,
          "ground": ground}


def latest_plus_offset(batch):
  return batch["history"][:, -1] + 0.003


def test_downloader_export_is_predicted_on_the_cloudy_grid(export, tmp_path):
  model = scene.TileModel(latest_plus_offset, tile_size=32, batch_size=4)
  out = tmp_path / "out.tif"
  report = scene.predict_scene(
      scene.SceneInputs(cloudy=export["cloudy"], history=export["history"], sar=export["sar"]),
      out, model, masking=inputs.EXACT, progress=False)
  # The cloudy folder's QA60 found the clouds; the S1 image was reprojected onto the S2 grid.
  assert report.cloud_fraction == pytest.approx(export["mask"].mean())
  notes = "\n".join(report.notes)
  assert "QA60.tif: used as the cloud mask" in notes
  assert f"{export['sar']}: reprojected from EPSG:32723 onto the cloudy date's grid " \
         f"(EPSG:32722, 104 x 104 px), bilinear" in notes
  assert "bands B4, B3, B2 stacked as R, G, B" in notes
  # The output keeps the cloudy date's grid and georeference exactly.
  with rasterio.open(out) as result, rasterio.open(
      stack.band_files(export["cloudy"])["B4"]) as b4:
    assert (result.crs, result.transform, result.shape) == (b4.crs, b4.transform, b4.shape)
    restored = np.moveaxis(result.read(), 0, -1)
  mask = export["mask"]
  np.testing.assert_array_equal(restored[~mask], export["ground"][~mask] + 40)
  # Under the clouds: the latest earlier date (March, ground + 30) plus the model's offset.
  np.testing.assert_array_equal(restored[mask], export["ground"][mask] + 30 + 30)
  assert not list(tmp_path.glob(".plfm_inputs_*")), "temporary folder left behind"


def test_reprojected_sar_values(export, tmp_path):
  seen = {}

  def record_sar(batch):
    seen.setdefault("sar", []).append(batch["sar"])
    return batch["cloudy"]

  scene.predict_scene(
      scene.SceneInputs(cloudy=export["cloudy"], history=export["history"], sar=export["sar"]),
      tmp_path / "out.tif", scene.TileModel(record_sar, tile_size=104, batch_size=1),
      masking=inputs.EXACT, progress=False)
  # -12 dB everywhere the S1 footprint reaches, the NaN border read as -25 dB: in the unit
  # range of the SAR input, a constant over almost the whole window.
  sar = seen["sar"][0][0, ..., 0]
  values, counts = np.unique(np.round(sar, 4), return_counts=True)
  assert counts.max() / sar.size > 0.9


def test_footprints_that_do_not_overlap(export, tmp_path):
  far = write(tmp_path / "far.tif", np.full((50, 50), -12.0), S1_CRS,
              from_origin(200000.0, 7000000.0, 10.0, 10.0))
  with pytest.raises(InputError, match=r"covers only 0% of the cloudy date's footprint"):
    scene.predict_scene(
        scene.SceneInputs(cloudy=export["cloudy"], history=export["history"], sar=far),
        tmp_path / "out.tif", scene.TileModel(latest_plus_offset, tile_size=32), progress=False)


def test_date_folder_problems(export, tmp_path):
  (export["cloudy"] / "2020-04-15.B3.tif").unlink()
  with pytest.raises(InputError, match=r"no B3 band \(expected a file named <date>.B3.tif\)"):
    stack.band_files(export["cloudy"])
  with pytest.raises(InputError, match="is not a folder of per-band GeoTIFFs"):
    stack.band_files(tmp_path / "missing")


@pytest.mark.slow
def test_stack_command(export, tmp_path):
  out = tmp_path / "stack.tif"
  done = subprocess.run([sys.executable, "-m", "plfm_jax.data.stack", str(export["history"][0]),
                         str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert tifffile.imread(out).shape == (SIZE, SIZE, 3)
  np.testing.assert_array_equal(tifffile.imread(out), export["ground"] + 10)
  again = subprocess.run([sys.executable, "-m", "plfm_jax.data.stack", str(export["history"][0]),
                          str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert again.returncode == 2 and again.stderr == f"error: {out}: exists already; remove it first\n"
