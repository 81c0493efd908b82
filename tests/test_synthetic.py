"""The synthetic dataset: the authors' on-disk layout and file format, and learnable content."""

from __future__ import annotations

import collections
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from plfm_jax.data import synthetic
from plfm_jax.data.layout import scan_dataset
from plfm_jax.data.readers import read_series
from plfm_jax.errors import InputError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

COUNTS = {"training": 10, "validation": 3, "test": 3}
SIZE = 64
NAME = re.compile(r"image_(VV|RGB|CM)_(\d+)_([A-Z][a-z]{2})_patch_(\d+)\.tif")
# Tags that would make a file a GeoTIFF; the real patches carry none.
GEO_TAGS = {33550, 33922, 34264, 34735, 34736, 34737}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> pathlib.Path:
  return synthetic.write_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "data",
                                           series_per_split=COUNTS, image_size=SIZE,
                                           patches_per_zone=4, seed=3)


@pytest.fixture(scope="module")
def series_arrays(dataset) -> list[dict[str, np.ndarray]]:
  return [read_series(s, SIZE) for s in scan_dataset(dataset).all_series()]


def _names(root: pathlib.Path) -> dict[tuple[str, str, str, str, int], int]:
  """(split folder, zone, kind, month, patch) -> export counter, for every file under root."""
  names = {}
  for path in root.rglob("*.tif"):
    kind, n, month, patch = NAME.fullmatch(path.name).groups()
    split, modality, zone = path.relative_to(root).parts[:3]
    assert modality == ("sen1" if kind == "VV" else "sen2")
    names[(split, zone, kind, month, int(patch))] = int(n)
  return names


def test_layout_and_file_names(dataset):
  assert sorted(p.name for p in dataset.iterdir()) == sorted(COUNTS)
  names = _names(dataset)
  assert len(names) == sum(COUNTS.values()) * 4 * 3
  assert all(re.fullmatch(r"zone_\d+_[a-z]", zone) for _, zone, *_ in names)
  for (split, zone, kind, month, patch), n in names.items():
    if kind == "RGB":
      assert names[(split, zone, "CM", month, patch)] == n
      assert names[(split, zone, "VV", month, patch)] != n
  # One counter per (zone, month): all months of a zone differ, as in the real data.
  per_zone = collections.defaultdict(set)
  for (split, zone, kind, month, _), n in names.items():
    per_zone[(split, zone, kind)].add((month, n))
  for months in per_zone.values():
    assert len({n for _, n in months}) == len(months) == 4
  patches = collections.defaultdict(set)
  for (split, zone, _, _, patch) in names:
    patches[(split, zone)].add(patch)
  assert any(max(p) - min(p) + 1 > len(p) for p in patches.values()), "patch numbers need gaps"


def test_scan_finds_every_series(dataset):
  scan = scan_dataset(dataset)
  assert {split: len(s) for split, s in scan.splits.items()} == {
      "train": 10, "validation": 3, "test": 3}
  assert not scan.problems


def test_flat_layout_holds_the_sum_of_the_counts(tmp_path):
  root = synthetic.write_synthetic_dataset(
      tmp_path / "flat", series_per_split={"test": 2, "training": 1}, image_size=16, flat=True)
  assert sorted(p.name for p in root.iterdir()) == ["sen1", "sen2"]
  assert len(scan_dataset(root).splits["train"]) == 3


@pytest.mark.parametrize("kind, modality", [("VV", "sen1"), ("RGB", "sen2"), ("CM", "sen2")])
def test_file_format_matches_real_files(dataset, sample_root, kind, modality):
  [real] = sorted((sample_root / modality).glob(f"*/image_{kind}_*_patch_5.tif"))[:1]
  [ours] = sorted(dataset.glob(f"training/{modality}/*/image_{kind}_*.tif"))[:1]
  with tifffile.TiffFile(real) as a, tifffile.TiffFile(ours) as b:
    pa, pb = a.pages[0], b.pages[0]
    assert a.byteorder == b.byteorder and len(a.pages) == len(b.pages) == 1
    for attribute in ("dtype", "photometric", "planarconfig", "samplesperpixel", "compression",
                      "extrasamples"):
      assert getattr(pa, attribute) == getattr(pb, attribute), attribute
    assert pa.shape[2:] == pb.shape[2:] and pb.shape[:2] == (SIZE, SIZE)
    assert not GEO_TAGS & set(pb.tags.keys())


def test_values_look_like_sentinel(series_arrays):
  s2 = np.stack([s["s2"] for s in series_arrays])
  s1 = np.stack([s["s1"] for s in series_arrays])
  assert s2.dtype == np.uint16 and s1.dtype == np.float32
  assert 1 <= s2.min() and s2.max() < 10000
  assert 200 < np.median(s2) < 3000
  low, high = np.percentile(s1, [1, 99])
  assert -32 < low < -15 and -2 < high < 10
  assert all(not s["cm"].any() for s in series_arrays)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
  def files(name: str, seed: int) -> dict[str, bytes]:
    root = synthetic.write_synthetic_dataset(tmp_path / name, series_per_split={"training": 2},
                                             image_size=16, seed=seed)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*.tif")}

  first = files("a", 7)
  assert files("b", 7) == first
  other = files("c", 8)
  assert other != first
  common = first.keys() & other.keys()
  assert all(first[k] != other[k] for k in common if "_CM_" not in k)


def test_season_changes_the_frames_but_keeps_the_structure(series_arrays):
  changes, correlations = [], []
  for s in series_arrays:
    green = s["s2"][..., 1].astype(np.float64)
    changes.append(np.abs(green[-1].mean() - green[0].mean()) / green[0].mean())
    for t in range(3):
      correlations.append(np.corrcoef(green[t].ravel(), green[t + 1].ravel())[0, 1])
  assert np.median(changes) > 0.03, "frames should change with the season"
  assert np.median(correlations) > 0.8, "the scene should persist from month to month"


def test_sar_follows_the_optical_land_cover(series_arrays):
  s2 = np.stack([s["s2"] for s in series_arrays]).astype(np.float64)
  s1 = np.stack([s["s1"][..., 0] for s in series_arrays])
  red, green, blue = np.moveaxis(s2, -1, 0)
  # Only water reflects more blue than green; only buildings are bright and grey.
  water = blue > green * 1.1
  urban = (red > 1200) & (np.abs(red - blue) < 0.15 * red)
  other = ~water & ~urban
  assert water.mean() > 0.01 and urban.mean() > 0.01
  assert s1[water].mean() < s1[other].mean() - 5
  assert s1[urban].mean() > s1[other].mean() + 5


def test_refuses_a_non_empty_folder(tmp_path):
  (tmp_path / "keep.txt").write_text("x")
  with pytest.raises(InputError, match="not an empty folder"):
    synthetic.write_synthetic_dataset(tmp_path)


@pytest.mark.parametrize("kwargs", [dict(series_per_split={"train": 1}),
                                    dict(months=("Jan", "Foo")), dict(months=("Jan", "Jan"))])
def test_rejects_bad_arguments(tmp_path, kwargs):
  with pytest.raises(ValueError):
    synthetic.write_synthetic_dataset(tmp_path / "x", **kwargs)


@pytest.mark.slow
def test_cli(tmp_path):
  command = [sys.executable, "-m", "plfm_jax.data.synthetic", str(tmp_path / "cli"),
             "--image_size=16", "--train=2", "--validation=1", "--test=0"]
  done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
  assert done.returncode == 0, done.stderr
  assert "training 2, validation 1, test 0" in done.stdout
  assert {s: len(v) for s, v in scan_dataset(tmp_path / "cli").splits.items()} == {
      "train": 2, "validation": 1}
  again = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
  assert again.returncode == 2
  assert again.stderr.startswith("error: ") and again.stderr.count("\n") == 1
