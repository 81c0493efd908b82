"""Free disk space is checked before the TFDS build and before writing a predicted scene."""

from __future__ import annotations

import collections
import pathlib
import shutil

import numpy as np
import pytest

from plfm_jax.data.synthetic import synthesize_zone, write_synthetic_dataset
from plfm_jax.data.tfds_data import is_built
from plfm_jax.diskspace import check_free_space, format_size
from plfm_jax.errors import InputError
from plfm_jax.inference import scene
from tfds_builders.plfm_series.build import ensure_built

from test_inference_scene import TILE, identity, write_scene

SIZE = 16
DiskUsage = collections.namedtuple("DiskUsage", "total used free")


@pytest.fixture
def free_bytes(monkeypatch) -> list[int]:
  """Pretends every file system has `free_bytes[0]` bytes free (set by the test)."""
  free = [0]
  monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(2**40, 2**40 - free[0], free[0]))
  return free


def test_format_size():
  assert [format_size(n) for n in (5 * 2**10, 12 * 2**20 + 1, 3.44 * 2**30)] == [
      "5 KiB", "12 MiB", "3.4 GiB"]


def test_check_names_the_mount_and_both_sizes(free_bytes, tmp_path):
  target = tmp_path / "not" / "yet" / "there.bin"
  free_bytes[0] = 2**30
  check_free_space(target, 2**30, "the test file")
  with pytest.raises(InputError) as info:
    check_free_space(target, 2**30 + 2**29, "the test file")
  assert info.value.path == str(target)
  mount = pathlib.Path(tmp_path)
  while not mount.is_mount():
    mount = mount.parent
  assert info.value.problem == f"the test file needs 1.5 GiB free on {mount}, has 1.0 GiB"


def test_tfds_build_stops_before_writing(free_bytes, tmp_path):
  raw = write_synthetic_dataset(tmp_path / "raw", image_size=SIZE,
                                series_per_split={"training": 3, "validation": 1})
  # 4 series, plus the largest split again for TFDS's shuffler, of 4 dates x 16 x 16 px x 12 B.
  needed = (4 + 3) * 4 * SIZE * SIZE * 12
  free_bytes[0] = needed - 1
  with pytest.raises(InputError, match=rf"building plfm_series of {SIZE} px patches needs 84 KiB "
                     r"free on /\S*, has 84 KiB$") as info:
    ensure_built(tmp_path / "tfds", manual_dir=raw)
  assert info.value.path == str(tmp_path / "tfds")
  assert not is_built(tmp_path / "tfds")
  assert not list((tmp_path / "tfds").rglob("*.array_record*"))
  free_bytes[0] = needed
  assert ensure_built(tmp_path / "tfds", manual_dir=raw).info.splits[
      "train"].num_examples == 3


def test_predict_stops_before_writing(free_bytes, tmp_path):
  s2, s1 = next(synthesize_zone(np.random.default_rng(0), 1, image_size=40,
                                months=("Jan", "Feb", "Mar", "Apr")))
  inputs = write_scene(tmp_path / "scene", s2, s1, np.random.default_rng(1))["inputs"]
  out, mask_out = tmp_path / "out.tif", tmp_path / "mask.tif"
  model = scene.TileModel(identity, tile_size=TILE)
  # uint16 R, G, B and a uint8 mask, uncompressed: an upper bound of what is written.
  free_bytes[0] = 40 * 40 * 7 - 1
  with pytest.raises(InputError, match=r"the output needs 11 KiB free on /\S*, has 11 KiB$"):
    scene.predict_scene(inputs, out, model, mask_out=mask_out, progress=False)
  assert not out.exists() and not mask_out.exists()
  assert not list(tmp_path.glob(".*partial*"))
  free_bytes[0] += 1
  scene.predict_scene(inputs, out, model, mask_out=mask_out, progress=False)
  assert out.exists() and mask_out.exists()
