"""Pixel readers and validate_scan: real files, accepted variants, and every kind of bad file."""

from __future__ import annotations

import pathlib
import numpy as np
import pytest
import tifffile

from plfm_jax.data.layout import MONTHS, scan_dataset
from plfm_jax.data.readers import read_cm, read_rgb, read_s1, read_series, validate_scan
from plfm_jax.data.synthetic import write_synthetic_dataset
from plfm_jax.errors import InputError

from conftest import synthetic_file

SIZE = 16


# --- the real sample -------------------------------------------------------------------------

def test_real_sample_validates_at_256(sample_root):
  scan = scan_dataset(sample_root)
  validated = validate_scan(scan, 256, progress=False)
  assert validated.splits == scan.splits
  assert validated.problems == []


def test_real_sample_read_series(sample_root):
  series = scan_dataset(sample_root).splits["train"][0]
  arrays = read_series(series, 256)
  assert arrays["s2"].shape == (4, 256, 256, 3) and arrays["s2"].dtype == np.uint16
  assert arrays["s1"].shape == (4, 256, 256, 1) and arrays["s1"].dtype == np.float32
  assert arrays["cm"].shape == (4, 256, 256) and arrays["cm"].dtype == np.uint16
  on_disk = tifffile.imread(series.s1[2])
  assert on_disk.dtype == np.float64
  np.testing.assert_array_equal(arrays["s1"][2, ..., 0], on_disk.astype(np.float32))
  np.testing.assert_array_equal(arrays["s2"][3], tifffile.imread(series.rgb[3]))
  # Real VV backscatter lies roughly within -60..+10 dB; a wrong band or scale would not.
  assert -70 < arrays["s1"].min() < arrays["s1"].max() < 20


def test_real_sample_at_wrong_size_names_thesynthetic_file(sample_root):
  scan = scan_dataset(sample_root)
  with pytest.raises(InputError, match="expected 128 x 128 pixels, found 256 x 256") as info:
    validate_scan(scan, 128, progress=False)
  assert info.value.path.endswith(".tif")


# --- accepted variants -----------------------------------------------------------------------

def test_read_series_synthetic(flat_root):
  series = scan_dataset(flat_root).splits["train"][1]
  arrays = read_series(series, SIZE)
  assert {k: (v.shape, v.dtype) for k, v in arrays.items()} == {
      "s2": ((4, SIZE, SIZE, 3), np.uint16),
      "s1": ((4, SIZE, SIZE, 1), np.float32),
      "cm": ((4, SIZE, SIZE), np.uint16)}
  np.testing.assert_array_equal(arrays["s2"][0], tifffile.imread(series.rgb[0]))


def test_planar_rgb_is_transposed(tmp_path):
  rgb = np.arange(SIZE * SIZE * 3, dtype=np.uint16).reshape(SIZE, SIZE, 3)
  tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb",
                   planarconfig="separate")
  assert tifffile.imread(tmp_path / "planar.tif").shape == (3, SIZE, SIZE)
  np.testing.assert_array_equal(read_rgb(tmp_path / "planar.tif", SIZE), rgb)


@pytest.mark.parametrize("shape", [(SIZE, SIZE), (SIZE, SIZE, 1), (1, SIZE, SIZE)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_s1_layouts_and_float_types(tmp_path, shape, dtype):
  db = np.linspace(-30, 5, SIZE * SIZE).reshape(shape).astype(dtype)
  tifffile.imwrite(tmp_path / "vv.tif", db)
  out = read_s1(tmp_path / "vv.tif", SIZE)
  assert out.shape == (SIZE, SIZE) and out.dtype == np.float32
  np.testing.assert_allclose(out, db.reshape(SIZE, SIZE), rtol=1e-6)


# --- bad files -------------------------------------------------------------------------------

def _write(path: pathlib.Path, array: np.ndarray) -> None:
  path.unlink()
  tifffile.imwrite(path, array, photometric="minisblack")


def _truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  return "not a readable TIFF"


def _not_a_tiff(path):
  path.write_text("this is a text file with a .tif name\n")
  return "not a readable TIFF"


def _rgb_four_bands(path):
  _write(path, np.zeros((SIZE, SIZE, 4), np.uint16))
  return "expected 3 band(s) (R, G, B), found 4"


def _rgb_one_band(path):
  _write(path, np.zeros((SIZE, SIZE), np.uint16))
  return "expected 3 band(s) (R, G, B), found 1"


def _rgb_float(path):
  _write(path, np.zeros((SIZE, SIZE, 3), np.float32))
  return "expected RGB reflectance x 10000 of dtype uint16, found float32"


def _rgb_wrong_size(path):
  _write(path, np.zeros((SIZE // 2, SIZE, 3), np.uint16))
  return f"expected {SIZE} x {SIZE} pixels, found {SIZE // 2} x {SIZE}"


def _rgb_volume(path):
  _write(path, np.zeros((2, 3, SIZE, SIZE), np.uint16))
  return f"found an array of shape (2, 3, {SIZE}, {SIZE})"


def _cm_three_bands(path):
  _write(path, np.zeros((SIZE, SIZE, 3), np.uint16))
  return "expected 1 band(s) (QA60 cloud mask), found 3"


def _cm_uint8(path):
  _write(path, np.zeros((SIZE, SIZE), np.uint8))
  return "expected QA60 cloud mask of dtype uint16, found uint8"


def _s1_integer(path):
  _write(path, np.zeros((SIZE, SIZE), np.int16))
  return "expected VV backscatter in dB as floating point, found int16"


def _s1_two_bands(path):
  _write(path, np.zeros((SIZE, SIZE, 2), np.float32))
  return "expected 1 band(s) (VV backscatter in dB), found 2"


def _s1_nan(path):
  db = tifffile.imread(path)
  db[0, :3] = np.nan
  db[1, 1] = np.inf
  _write(path, db)
  return "4 non-finite value(s) (NaN or inf)"


def _s1_beyond_float32(path):
  db = tifffile.imread(path)
  db[2, 2] = 1e300  # finite as float64, inf once read as float32
  _write(path, db)
  return "1 non-finite value(s)"


# (kind of file damaged, damage); the damage returns the expected message.
BAD_FILES = [
    pytest.param(kind, damage, id=f"{kind}-{damage.__name__[1:]}") for kind, damage in (
        ("RGB", _truncate), ("VV", _truncate), ("CM", _not_a_tiff), ("RGB", _rgb_four_bands),
        ("RGB", _rgb_one_band), ("RGB", _rgb_float), ("RGB", _rgb_wrong_size),
        ("RGB", _rgb_volume), ("CM", _cm_three_bands), ("CM", _cm_uint8), ("VV", _s1_integer),
        ("VV", _s1_two_bands), ("VV", _s1_nan), ("VV", _s1_beyond_float32))]


@pytest.mark.parametrize("kind, damage", BAD_FILES)
def test_bad_file_raises_naming_it(flat_root, kind, damage):
  path = synthetic_file(flat_root, kind)
  message = damage(path)
  reader = {"VV": read_s1, "RGB": read_rgb, "CM": read_cm}[kind]
  with pytest.raises(InputError) as info:
    reader(path, SIZE)
  assert message in info.value.problem
  assert info.value.path == str(path)
  assert "\n" not in str(info.value)
  # validate_scan reports the same error, strictly, and skips the series with skip_invalid.
  scan = scan_dataset(flat_root)
  with pytest.raises(InputError) as strict:
    validate_scan(scan, SIZE, progress=False)
  assert str(strict.value) == str(info.value)
  skipped = validate_scan(scan, SIZE, skip_invalid=True, progress=False)
  assert skipped.problems == [str(info.value)]
  assert len(skipped.splits["train"]) == 1
  [kept] = skipped.splits["train"]
  assert path not in kept.s1 + kept.rgb + kept.cm


def test_shared_file_is_reported_once_and_drops_every_window(tmp_path):
  root = write_synthetic_dataset(tmp_path / "ds", series_per_split={"training": 2},
                                 image_size=SIZE, months=MONTHS[:5], flat=True)
  _truncate(synthetic_file(root, "RGB", "Mar"))  # Mar lies in both windows, Jan-Apr and Feb-May
  scan = scan_dataset(root, skip_invalid=True)
  assert len(scan.splits["train"]) == 4
  validated = validate_scan(scan, SIZE, skip_invalid=True, progress=False)
  assert len(validated.problems) == 1
  assert [s.months for s in validated.splits["train"]] == [MONTHS[0:4], MONTHS[1:5]]
  assert len({s.patch for s in validated.splits["train"]}) == 1


def test_validate_keeps_layout_problems_and_fields(flat_root):
  synthetic_file(flat_root, "CM", "Jan").unlink()
  scan = scan_dataset(flat_root, skip_invalid=True)
  validated = validate_scan(scan, SIZE, skip_invalid=True, progress=False)
  assert validated.problems == scan.problems and len(scan.problems) == 1
  assert validated.root == scan.root and validated.months_per_zone == scan.months_per_zone
  assert validated.splits == scan.splits


def test_progress_bar_goes_to_stderr_only_when_asked(flat_root, capsys):
  scan = scan_dataset(flat_root)
  validate_scan(scan, SIZE, progress=False)
  assert capsys.readouterr() == ("", "")
  validate_scan(scan, SIZE, progress=True)
  out, err = capsys.readouterr()
  assert out == "" and "2/2" in err
