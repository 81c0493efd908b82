"""scan_dataset: the real sample, synthetic layouts, and every kind of broken layout."""

from __future__ import annotations

import pathlib
import re
import shutil
from typing import Callable

import pytest

from plfm_jax.data.layout import MONTHS, SPLIT_FOLDERS, scan_dataset
from plfm_jax.data.synthetic import write_synthetic_dataset
from plfm_jax.errors import InputError

from conftest import SYNTHETIC_ZONE, synthetic_file


def _patch(path: pathlib.Path) -> int:
  return int(path.stem.rsplit("_", 1)[1])


# --- the real sample -------------------------------------------------------------------------

def test_real_sample_series(sample_root):
  scan = scan_dataset(sample_root)
  assert list(scan.splits) == ["train"]
  series = scan.splits["train"]
  assert len(series) == 24
  assert scan.problems == []
  assert scan.months_per_zone == {("train", "zone_9_a"): ("Jan", "Feb", "Mar", "Apr"),
                                  ("train", "zone_9_b"): ("May", "Jun", "Jul", "Aug")}
  assert [s.patch for s in series if s.zone == "zone_9_a"] == [0] + list(range(5, 16))
  assert len({s.key for s in series}) == 24
  assert series[0].key == "train/zone_9_a/patch_0/Jan-Apr"


def test_real_sample_pairs_by_month_and_patch_not_counter(sample_root):
  first = scan_dataset(sample_root).splits["train"][0]
  # The export counters differ (192 vs 327, and between months): pairing must ignore them.
  assert first.s1[0].name == "image_VV_192_Jan_patch_0.tif"
  assert first.rgb[0].name == "image_RGB_327_Jan_patch_0.tif"
  assert first.cm[0].name == "image_CM_327_Jan_patch_0.tif"
  assert first.s1[1].name == "image_VV_191_Feb_patch_0.tif"
  for series in scan_dataset(sample_root).splits["train"]:
    for month, *paths in zip(series.months, series.s1, series.rgb, series.cm):
      assert all(f"_{month}_patch_{series.patch}.tif" in p.name for p in paths)
      assert [p.parent.name for p in paths] == [series.zone] * 3


# --- synthetic layouts -----------------------------------------------------------------------

def test_split_folders_map_to_split_names(tmp_path):
  root = write_synthetic_dataset(tmp_path / "ds", image_size=16, patches_per_zone=2,
                                 series_per_split={"training": 3, "validation": 2, "test": 1})
  scan = scan_dataset(root)
  assert {s: len(v) for s, v in scan.splits.items()} == {"train": 3, "validation": 2, "test": 1}
  assert set(SPLIT_FOLDERS.values()) == set(scan.splits)
  for split, series in scan.splits.items():
    assert all(s.split == split and s.key.startswith(f"{split}/") for s in series)
  # Sorted by zone, then numerically by patch.
  train = scan.splits["train"]
  assert train == sorted(train, key=lambda s: (s.zone, s.patch))
  assert scan_dataset(root) == scan


def test_flat_root_is_one_train_split(flat_root):
  scan = scan_dataset(flat_root)
  assert list(scan.splits) == ["train"]
  assert len(scan.splits["train"]) == 2
  assert scan.months_per_zone == {("train", SYNTHETIC_ZONE): ("Jan", "Feb", "Mar", "Apr")}


def test_long_zone_gives_windows_in_calendar_order(tmp_path):
  months = ("Jun", "Jan", "Mar", "Feb", "May", "Apr")  # deliberately not in calendar order
  root = write_synthetic_dataset(tmp_path / "ds", series_per_split={"training": 1}, image_size=16,
                                 months=months, flat=True)
  scan = scan_dataset(root)
  assert scan.months_per_zone[("train", SYNTHETIC_ZONE)] == MONTHS[:6]
  windows = [s.months for s in scan.splits["train"]]
  assert windows == [MONTHS[0:4], MONTHS[1:5], MONTHS[2:6]]
  for series in scan.splits["train"]:
    months = [re.search(r"_([A-Z][a-z]{2})_patch", p.name)[1] for p in series.rgb]
    assert months == list(series.months)
  assert [len(s.months) for s in scan_dataset(root, series_length=6).splits["train"]] == [6]


def test_stray_non_tiff_files_are_ignored(flat_root):
  (flat_root / ".DS_Store").write_text("x")
  (flat_root / "README.md").write_text("notes")
  (flat_root / "sen1" / "notes.txt").write_text("notes")
  (flat_root / "sen2" / SYNTHETIC_ZONE / "Thumbs.db").write_bytes(b"\0")
  (flat_root / "sen2" / SYNTHETIC_ZONE / "._image_RGB_1_Jan_patch_0.tif").write_bytes(b"\0")
  assert len(scan_dataset(flat_root).splits["train"]) == 2


# --- broken layouts --------------------------------------------------------------------------
# Each damage function breaks the pristine flat dataset and returns (message part, path part).

def _remove_rgb_feb(root):
  path = synthetic_file(root, "RGB", "Feb")
  path.unlink()
  return f"patch {_patch(path)} has no RGB image for Feb", f"sen2/{SYNTHETIC_ZONE}"


def _remove_s1_mar(root):
  path = synthetic_file(root, "VV", "Mar", 1)
  path.unlink()
  return f"patch {_patch(path)} has no VV image for Mar", f"sen1/{SYNTHETIC_ZONE}"


def _remove_cm_apr(root):
  path = synthetic_file(root, "CM", "Apr")
  path.unlink()
  return f"patch {_patch(path)} has no CM image for Apr", f"sen2/{SYNTHETIC_ZONE}"


def _duplicate_month(root):
  path = synthetic_file(root, "VV", "Jan")
  copy = path.with_name(f"image_VV_999_Jan_patch_{_patch(path)}.tif")
  shutil.copy(path, copy)
  return f"has 2 VV images for Jan: {path.name}, {copy.name}", f"sen1/{SYNTHETIC_ZONE}"


def _unparseable_tif(root):
  (root / "sen2" / SYNTHETIC_ZONE / "image_RGB_Jan_patch_1.tif").write_bytes(b"")
  return "file name does not match image_RGB_<n>_<Mon>_patch_<p>.tif", "image_RGB_Jan_patch_1.tif"


def _s1_image_in_sen2(root):
  shutil.copy(synthetic_file(root, "VV", "Jan"), root / "sen2" / SYNTHETIC_ZONE / "image_VV_5_Jan_patch_3.tif")
  return "file name does not match", "sen2/zone_1_a/image_VV_5_Jan_patch_3.tif"


def _tiff_outside_zone(root):
  shutil.copy(synthetic_file(root, "VV", "Jan"), root / "sen1" / "image_VV_5_Jan_patch_3.tif")
  return "TIFF file directly in sen1/", "sen1/image_VV_5_Jan_patch_3.tif"


def _zone_only_in_sen2(root):
  shutil.copytree(root / "sen2" / SYNTHETIC_ZONE, root / "sen2" / "zone_7_x")
  return "zone folder missing, but sen2/zone_7_x exists", "sen1/zone_7_x"


def _zone_only_in_sen1(root):
  shutil.copytree(root / "sen1" / SYNTHETIC_ZONE, root / "sen1" / "zone_7_x")
  return "zone folder missing, but sen1/zone_7_x exists", "sen2/zone_7_x"


def _empty_zone(root):
  for folder in ("sen1", "sen2"):
    (root / folder / "zone_7_x").mkdir()
  (root / "sen2" / "zone_7_x" / "README").write_text("not an image")
  return "empty zone folder: no .tif files", "sen1/zone_7_x"


def _empty_modality_folder(root):
  shutil.rmtree(root / "sen1")
  (root / "sen1").mkdir()
  return "empty folder: no zone folders", "sen1"


def _too_few_months(root):
  for path in (root / "sen1" / SYNTHETIC_ZONE).glob("*_Apr_*"):
    path.unlink()
  for path in (root / "sen2" / SYNTHETIC_ZONE).glob("*_Apr_*"):
    path.unlink()
  return "zone has 3 month(s) (Jan, Feb, Mar), fewer than the series length 4", f"sen2/{SYNTHETIC_ZONE}"


BROKEN: dict[str, Callable[[pathlib.Path], tuple[str, str]]] = {
    f.__name__[1:]: f for f in (
        _remove_rgb_feb, _remove_s1_mar, _remove_cm_apr, _duplicate_month, _unparseable_tif,
        _s1_image_in_sen2, _tiff_outside_zone, _zone_only_in_sen2, _zone_only_in_sen1,
        _empty_zone, _empty_modality_folder, _too_few_months)}


@pytest.mark.parametrize("damage", BROKEN.values(), ids=BROKEN.keys())
def test_broken_layout_raises_specific_error(flat_root, damage):
  message, path_part = damage(flat_root)
  with pytest.raises(InputError) as info:
    scan_dataset(flat_root)
  assert message in info.value.problem
  assert path_part in info.value.path
  assert "\n" not in str(info.value)


@pytest.mark.parametrize("damage", BROKEN.values(), ids=BROKEN.keys())
def test_skip_invalid_reports_instead_of_raising(flat_root, damage):
  damage(flat_root)
  with pytest.raises(InputError) as info:
    scan_dataset(flat_root)
  scan = scan_dataset(flat_root, skip_invalid=True)
  assert scan.problems[0] == str(info.value)
  # Whatever survives is complete: one existing file per month and modality.
  for series in scan.splits["train"]:
    assert all(p.is_file() for p in series.s1 + series.rgb + series.cm)


def test_skip_invalid_drops_only_the_affected_series(flat_root):
  patches = [_patch(synthetic_file(flat_root, "RGB", "Jan", i)) for i in range(2)]
  synthetic_file(flat_root, "RGB", "Feb", 0).unlink()
  _unparseable_tif(flat_root)
  scan = scan_dataset(flat_root, skip_invalid=True)
  assert len(scan.problems) == 2
  assert [s.patch for s in scan.splits["train"]] == patches[1:]


def test_skip_invalid_keeps_windows_without_the_missing_month(tmp_path):
  root = write_synthetic_dataset(tmp_path / "ds", series_per_split={"training": 1}, image_size=16,
                                 months=MONTHS[:5], flat=True)
  synthetic_file(root, "VV", "Jan").unlink()
  scan = scan_dataset(root, skip_invalid=True)
  assert [s.months for s in scan.splits["train"]] == [MONTHS[1:5]]
  assert len(scan.problems) == 1 and "has no VV image for Jan" in scan.problems[0]


# --- unusable roots and split folders --------------------------------------------------------

def test_missing_root(tmp_path):
  with pytest.raises(InputError, match="dataset folder does not exist"):
    scan_dataset(tmp_path / "nope", skip_invalid=True)


def test_root_is_asynthetic_file(tmp_path):
  (tmp_path / "f.tif").write_bytes(b"")
  with pytest.raises(InputError, match="dataset path is not a folder"):
    scan_dataset(tmp_path / "f.tif", skip_invalid=True)


def test_root_without_layout(tmp_path):
  (tmp_path / "images").mkdir()
  with pytest.raises(InputError, match="holds neither sen1/ and sen2/ nor any of the") as info:
    scan_dataset(tmp_path, skip_invalid=True)
  assert info.value.path == str(tmp_path)


def test_flat_root_missing_sen2(flat_root):
  shutil.rmtree(flat_root / "sen2")
  with pytest.raises(InputError, match="has sen1/ but no sen2/"):
    scan_dataset(flat_root, skip_invalid=True)


def test_flat_and_split_layout_mixed(flat_root):
  (flat_root / "validation").mkdir()
  with pytest.raises(InputError, match="holds both sen1/sen2/ and split folders"):
    scan_dataset(flat_root)


@pytest.fixture
def split_root(tmp_path: pathlib.Path) -> pathlib.Path:
  return write_synthetic_dataset(tmp_path / "ds", series_per_split={"training": 1, "validation": 1},
                                 image_size=16)


def test_split_folder_missing_sen2(split_root):
  shutil.rmtree(split_root / "validation" / "sen2")
  with pytest.raises(InputError, match="split folder has no sen2/") as info:
    scan_dataset(split_root)
  assert info.value.path.endswith("validation")
  scan = scan_dataset(split_root, skip_invalid=True)
  assert {s: len(v) for s, v in scan.splits.items()} == {"train": 1, "validation": 0}
  assert len(scan.problems) == 1


def test_empty_split_folder(split_root):
  (split_root / "test").mkdir()
  with pytest.raises(InputError, match="empty split folder") as info:
    scan_dataset(split_root)
  assert info.value.path.endswith("test")
