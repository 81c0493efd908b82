"""plfm_jax.inference.geotiff: windowed reading, tiled writing, georeference tags, grid checks."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import tifffile

from plfm_jax.errors import InputError
from plfm_jax.inference import geotiff

from conftest import GEOKEYS, GEO_TAGS, drop_strip_byte_counts



def write(path: pathlib.Path, image: np.ndarray, tags=GEO_TAGS, **kwargs) -> pathlib.Path:
  options = dict(photometric="minisblack", planarconfig="contig", rowsperstrip=7)
  options.update(kwargs)
  tifffile.imwrite(path, image, extratags=tags, metadata=None, **options)
  return path


def open_s2(path: pathlib.Path) -> geotiff.Raster:
  return geotiff.open_raster(path, what="R, G, B", bands=3, dtype_ok=lambda d: d == np.uint16,
                             dtype_wanted="uint16")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
  return np.random.default_rng(0).integers(0, 10000, (101, 77, 3), dtype=np.uint16)


@pytest.mark.parametrize("layout", [
    dict(), dict(rowsperstrip=1000), dict(tile=(32, 48), rowsperstrip=None),
    dict(compression="zlib", tile=(16, 16), rowsperstrip=None), dict(compression="zlib"),
    dict(planarconfig="separate", planar=True)])
def test_read_rows_any_layout(tmp_path, image, layout):
  layout = dict(layout)
  data = np.moveaxis(image, -1, 0) if layout.pop("planar", False) else image
  path = write(tmp_path / "a.tif", data, **layout)
  with open_s2(path) as raster:
    assert (raster.height, raster.width, raster.bands) == image.shape
    for start, stop in [(0, 101), (0, 1), (5, 40), (33, 101), (100, 101)]:
      np.testing.assert_array_equal(raster.read_rows(start, stop), image[start:stop])
    np.testing.assert_array_equal(
        np.concatenate([band for _, band in raster.row_bands(30)]), image)


def test_write_keeps_tags_and_pixels(tmp_path, image):
  source = write(tmp_path / "in.tif", image)
  with open_s2(source) as raster:
    tags = raster.tags
  assert set(tags) == set(geotiff.GEO_TAGS) - {34264}
  out = tmp_path / "out.tif"
  blocks = [(0, image[:50]), (50, image[50:51]), (51, image[51:])]
  geotiff.write_geotiff(out, iter(blocks), height=101, width=77, bands=3, dtype=np.uint16,
                        tags=tags)
  with tifffile.TiffFile(source) as a, tifffile.TiffFile(out) as b:
    assert b.pages[0].is_tiled
    np.testing.assert_array_equal(b.asarray(), image)
    for code in geotiff.GEO_TAGS:
      if code in tags:
        tag_a, tag_b = a.pages[0].tags[code], b.pages[0].tags[code]
        assert (tag_b.dtype, tag_b.count, tag_b.value) == (tag_a.dtype, tag_a.count, tag_a.value)
  assert not list(tmp_path.glob(".*partial*"))


def test_write_single_band_and_model_transformation(tmp_path):
  mask = np.random.default_rng(1).integers(0, 2, (300, 270, 1), dtype=np.uint8)
  transform = (10.0, 0.0, 0.0, 399960.0, 0.0, -10.0, 0.0, 5000040.0,
               0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
  tags = {34264: geotiff.GeoTag(34264, 12, 16, transform)}
  out = tmp_path / "mask.tif"
  geotiff.write_geotiff(out, iter([(0, mask)]), height=300, width=270, bands=1, dtype=np.uint8,
                        tags=tags, compression="none")
  with tifffile.TiffFile(out) as tif:
    np.testing.assert_array_equal(tif.asarray(), mask[..., 0])
    assert tif.pages[0].tags[34264].value == transform


def test_failed_write_leaves_nothing(tmp_path, image):
  def blocks():
    yield 0, image[:60]
    raise RuntimeError("model crashed")
  out = tmp_path / "out.tif"
  with pytest.raises(RuntimeError):
    geotiff.write_geotiff(out, blocks(), height=101, width=77, bands=3, dtype=np.uint16,
                          tags={})
  assert list(tmp_path.iterdir()) == []


def test_rejects_bad_files(tmp_path, image):
  with pytest.raises(InputError, match="no such file"):
    open_s2(tmp_path / "missing.tif")
  (tmp_path / "text.tif").write_text("not a tiff")
  with pytest.raises(InputError, match="not a readable TIFF"):
    open_s2(tmp_path / "text.tif")
  with pytest.raises(InputError, match=r"expected 3 band\(s\)"):
    open_s2(write(tmp_path / "one.tif", image[..., 0]))
  with pytest.raises(InputError, match="dtype uint16, found float32"):
    open_s2(write(tmp_path / "float.tif", image.astype(np.float32)))


def test_damaged_file_rejected_quietly(tmp_path, image, capfd):
  # tifffile would read it after logging to stderr, guessing the strips' lengths.
  path = write(tmp_path / "a.tif", image)
  drop_strip_byte_counts(path)
  with pytest.raises(InputError, match=r"not a readable TIFF \(damaged: .*ByteCounts") as info:
    open_s2(path)
  assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
  assert capfd.readouterr() == ("", "")


def test_truncated_file_rejected(tmp_path, image):
  path = write(tmp_path / "a.tif", image)
  with tifffile.TiffFile(path) as tif:
    page = tif.pages[0]
    end = max(o + n for o, n in zip(page.dataoffsets, page.databytecounts))
    # tifffile writes the tags before the pixels, so a cut-off file still opens as a TIFF.
    assert page.offset < page.dataoffsets[0]
  path.write_bytes(path.read_bytes()[:end - 1000])
  with pytest.raises(InputError, match="truncated") as info:
    open_s2(path)
  assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def raster_with(tmp_path: pathlib.Path, name: str, tags, shape=(40, 30, 3)) -> geotiff.Raster:
  return open_s2(write(tmp_path / name, np.zeros(shape, np.uint16), tags=tags))


def replaced(code: int, value) -> list:
  return [(c, t, n, value if c == code else v, w) for c, t, n, v, w in GEO_TAGS]


def test_grid_check(tmp_path):
  reference = raster_with(tmp_path, "ref.tif", GEO_TAGS)
  same = raster_with(tmp_path, "same.tif", GEO_TAGS)
  as_matrix = raster_with(tmp_path, "matrix.tif", [
      (34264, 12, 16, (10.0, 0.0, 0.0, 399960.0, 0.0, -10.0, 0.0, 5000040.0,
                       0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0), True)] + GEO_TAGS[2:])
  geotiff.check_same_grid(reference, [same, as_matrix])
  cases = {
      "size": raster_with(tmp_path, "size.tif", GEO_TAGS, shape=(40, 31, 3)),
      "geotransform": raster_with(tmp_path, "shift.tif",
                                  replaced(33922, (0.0, 0.0, 0.0, 399970.0, 5000040.0, 0.0))),
      "coordinate reference system": raster_with(
          tmp_path, "crs.tif", replaced(34735, GEOKEYS[:-1] + (32633,))),
      "georeferenced": raster_with(tmp_path, "plain.tif", []),
  }
  for problem, other in cases.items():
    with pytest.raises(InputError, match=problem) as info:
      geotiff.check_same_grid(reference, [same, other])
    message = str(info.value)
    assert message.startswith(str(other.path)) and str(reference.path) in message
  for raster in [reference, same, as_matrix, *cases.values()]:
    raster.close()


def test_nodata_and_geotransform(tmp_path):
  with raster_with(tmp_path, "a.tif", GEO_TAGS) as raster:
    assert raster.nodata == 0.0
    assert raster.geotransform == (399960.0, 10.0, 0.0, 5000040.0, 0.0, -10.0)
  with raster_with(tmp_path, "b.tif", []) as raster:
    assert raster.nodata is None and raster.geotransform is None
