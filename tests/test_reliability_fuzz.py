"""Fuzzing the TIFF readers and the layout scanner: only InputError, one line naming the file.

Reproducible (derandomized, no example database) and small: 2100 cases in all, ~15 s on 2 cores.
"""

from __future__ import annotations

import io
import logging
import os
import pathlib
import shutil
import struct
import tempfile
import tracemalloc
from typing import Iterator

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from plfm_jax.data.layout import MONTHS, scan_dataset
from plfm_jax.data.readers import read_cm, read_rgb, read_s1, validate_scan
from plfm_jax.data.synthetic import write_synthetic_dataset
from plfm_jax.errors import InputError

from conftest import SYNTHETIC_ZONE, drop_strip_byte_counts, synthetic_file

SIZE = 8
READERS = {"VV": read_s1, "RGB": read_rgb, "CM": read_cm}


def fuzz(max_examples: int) -> settings:
  return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None)


# --- TIFF bytes ----------------------------------------------------------------------------

@st.composite
def tiff_bytes(draw) -> bytes:
  """A TIFF tifffile writes: random dtype, shape, band layout, compression, special values."""
  dtype = draw(st.sampled_from([np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64]))
  ndim = draw(st.integers(2, 4))
  shape = tuple(draw(st.lists(st.sampled_from([1, 2, 3, 4, SIZE]), min_size=ndim,
                              max_size=ndim)))
  image = np.random.default_rng(draw(st.integers(0, 3))).uniform(-50, 3000, shape).astype(dtype)
  if dtype == np.float64 and draw(st.booleans()):
    image.flat[draw(st.integers(0, image.size - 1))] = draw(
        st.sampled_from([np.nan, np.inf, -np.inf, 1e300]))
  options = {"compression": draw(st.sampled_from([None, "zlib", "lzma"])),
             "photometric": "minisblack"}
  if ndim == 3 and shape[-1] in (3, 4) and draw(st.booleans()):
    options["photometric"] = "rgb"
  elif ndim == 3 and shape[0] in (3, 4) and draw(st.booleans()):
    options.update(photometric="rgb", planarconfig="separate")
  buffer = io.BytesIO()
  tifffile.imwrite(buffer, image, **options)
  return buffer.getvalue()


@st.composite
def damaged(draw, data: st.SearchStrategy[bytes]) -> bytes:
  """`data` intact, truncated, with bytes changed or with a random run pasted over it."""
  data = bytearray(draw(data))
  how = draw(st.sampled_from(["intact", "truncate", "change", "paste"]))
  if how == "truncate":
    data = data[:draw(st.integers(0, len(data) - 1))]
  elif how == "change":
    for _ in range(draw(st.integers(1, 8))):
      data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
  elif how == "paste":
    start = draw(st.integers(0, len(data) - 1))
    run = draw(st.binary(min_size=1, max_size=16))
    data[start:start + len(run)] = run
  return bytes(data)


# Random bytes, with and without a TIFF signature (classic and BigTIFF) so the parser goes on.
FILES = st.one_of(
    damaged(tiff_bytes()),
    st.binary(max_size=200),
    st.builds(lambda head, rest: head + rest,
              st.sampled_from([b"II*\0", b"MM\0*", b"II+\0\x08\0\0\0"]), st.binary(max_size=200)))


def check_result(kind: str, path: pathlib.Path, read) -> None:
  """`read()` returns an image within the readers' contract or raises a one-line InputError."""
  try:
    image = read()
  except InputError as e:
    assert e.path == str(path) and str(e).isprintable()
    return
  if kind == "RGB":
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint16
  else:
    assert image.shape == (SIZE, SIZE)
    assert image.dtype == (np.float32 if kind == "VV" else np.uint16)
    assert kind == "CM" or np.isfinite(image).all()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Iterator[pathlib.Path]:
  """A folder for the examples' files: on tmpfs where there is one, since creating and removing
  thousands of files and folders costs microseconds there and milliseconds on a disk."""
  shm = pathlib.Path("/dev/shm")
  if shm.is_dir() and os.access(shm, os.W_OK):
    with tempfile.TemporaryDirectory(dir=shm, prefix="plfm_fuzz_") as folder:
      yield pathlib.Path(folder)
  else:
    yield tmp_path_factory.mktemp("fuzz")


@fuzz(1200)
@given(data=FILES)
def test_readers_raise_only_input_errors(scratch, data):
  path = scratch / "image.tif"
  path.write_bytes(data)
  # The readers keep tifffile's warnings to themselves: nothing reaches its handlers.
  seen = []
  handler = logging.Handler()
  handler.emit = seen.append
  tifffile_log = logging.getLogger("tifffile")
  tifffile_log.addHandler(handler)
  try:
    for kind, reader in READERS.items():
      check_result(kind, path, lambda: reader(path, SIZE))
  finally:
    tifffile_log.removeHandler(handler)
  assert seen == []


@pytest.fixture(scope="module")
def dataset(scratch) -> pathlib.Path:
  """Two synthetic series at SIZE px, one train split."""
  return write_synthetic_dataset(scratch / "ds", series_per_split={"training": 2},
                                 image_size=SIZE, flat=True)


@fuzz(200)
@given(kind=st.sampled_from(list(READERS)), month=st.sampled_from(MONTHS[:4]),
       index=st.integers(0, 1), data=FILES)
def test_validate_scan_reports_a_damaged_file(dataset, kind, month, index, data):
  path = synthetic_file(dataset, kind, month, index)
  original = path.read_bytes()
  path.write_bytes(data)
  try:
    scan = scan_dataset(dataset)
    try:
      validate_scan(scan, SIZE, progress=False)
      strict = None
    except InputError as e:
      strict = e
      assert e.path == str(path)
    skipped = validate_scan(scan, SIZE, skip_invalid=True, progress=False)
  finally:
    path.write_bytes(original)
  if strict is None:
    assert skipped == scan
  else:
    assert skipped.problems == [str(strict)]
    [kept] = skipped.splits["train"]
    assert path not in kept.s1 + kept.rgb + kept.cm


def test_tiff_with_damaged_strips_is_rejected_quietly(tmp_path, capfd):
  # tifffile reads this file after logging that the strip byte counts are missing: the reader
  # calls it damaged and prints nothing itself.
  path = tmp_path / "image.tif"
  tifffile.imwrite(path, np.ones((SIZE, SIZE), np.uint16))
  drop_strip_byte_counts(path)
  with pytest.raises(InputError, match=r"^.*image.tif: not a readable TIFF \(damaged: "):
    read_cm(path, SIZE)
  assert capfd.readouterr() == ("", "")


def test_tiff_declaring_a_huge_image_is_not_decoded(tmp_path):
  # A damaged header can declare a huge image: its allocation (1.7 GB here, billions of pixels
  # elsewhere) would exhaust the memory before the size check could name the file.
  path = tmp_path / "image.tif"
  tifffile.imwrite(path, np.ones((SIZE, SIZE), np.uint16))
  data = bytearray(path.read_bytes())
  [ifd] = struct.unpack_from("<I", data, 4)
  for i in range(struct.unpack_from("<H", data, ifd)[0]):
    entry = ifd + 2 + 12 * i
    code = struct.unpack_from("<H", data, entry)[0]
    if code in (256, 257):  # ImageWidth, ImageLength
      struct.pack_into("<HHII", data, entry, code, 4, 1, 30000)  # one LONG
  path.write_bytes(data)
  tracemalloc.start()
  try:
    # Named as damaged (the strips do not cover the declared size) or as the wrong size.
    with pytest.raises(InputError, match="not a readable TIFF|found 30000 x 30000"):
      read_cm(path, SIZE)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 2**24


# --- layouts -------------------------------------------------------------------------------

SERIES_LENGTH = 2
NAME_PARTS = {
    "kind": st.sampled_from(["VV", "RGB", "CM", "rgb", "vv", "B8", ""]),
    "n": st.sampled_from(["1", "07", "123", "", "x"]),
    "month": st.sampled_from(["Jan", "Feb", "Mar", "jan", "FEB", "Foo", ""]),
    "patch": st.sampled_from(["0", "1", "01", "2147483648", "-1", ""]),
    "suffix": st.sampled_from([".tif", ".tiff", ".TIF", ".png", ""]),
}
# Any name Linux allows, TIFF or not, often with characters that would break a one-line message:
# line breaks, control characters, an undecodable byte (read by Python as a lone surrogate).
ODD_NAMES = st.builds(
    lambda name, suffix: name + suffix,
    st.text(st.one_of(st.sampled_from("\n\r\t\x1b\x7f\xa0\u2028\udcff"),
                      st.characters(codec="utf-8", exclude_characters="/\0")),
            min_size=1, max_size=12),
    st.sampled_from(["", ".tif"])).filter(lambda name: name not in (".", ".."))
NAMES = st.one_of(
    st.builds("image_{kind}_{n}_{month}_patch_{patch}{suffix}".format, **NAME_PARTS), ODD_NAMES)
FOLDERS = st.sampled_from(["training", "validation", "test", "sen1", "sen2", "zone_1_a",
                           "zone_2_b", ".hidden", "other"])
# (folders from the root, entry name, what it is)
ENTRIES = st.lists(st.tuples(st.lists(FOLDERS, max_size=3), NAMES,
                             st.sampled_from(["file", "folder"])), max_size=30)


@st.composite
def layouts(draw) -> list[tuple[list[str], str, str]]:
  """Mostly well-formed trees (one of the two layouts, complete series) with random damage."""
  entries = []
  if draw(st.booleans()):
    splits = draw(st.lists(st.sampled_from([[], ["training"], ["validation"], ["test"]]),
                           min_size=1, max_size=2, unique_by=tuple))
    for split in splits:
      for zone in draw(st.lists(st.sampled_from(["zone_1_a", "zone_2_b"]), min_size=1,
                                max_size=2, unique=True)):
        for patch in draw(st.lists(st.sampled_from(["0", "1"]), min_size=1, unique=True)):
          for month in MONTHS[:draw(st.integers(SERIES_LENGTH - 1, 3))]:
            for folder, kind in (("sen1", "VV"), ("sen2", "RGB"), ("sen2", "CM")):
              entries.append(([*split, folder, zone],
                              f"image_{kind}_{len(entries)}_{month}_patch_{patch}.tif", "file"))
    removed = draw(st.sets(st.integers(0, max(0, len(entries) - 1)), max_size=3))
    entries = [e for i, e in enumerate(entries) if i not in removed]
  return entries + draw(ENTRIES)


def build(root: pathlib.Path, entries: list[tuple[list[str], str, str]]) -> None:
  for folders, name, what in entries:
    parent = root.joinpath(*folders)
    try:
      parent.mkdir(parents=True, exist_ok=True)
      if what == "folder":
        (parent / name).mkdir(exist_ok=True)
      elif not (parent / name).exists():
        (parent / name).write_bytes(b"")
    except (FileExistsError, NotADirectoryError):
      pass  # The tree already has a file where this entry needs a folder, or the reverse.


@fuzz(700)
@given(entries=layouts())
def test_scan_raises_only_input_errors_and_skips_the_rest(scratch, entries):
  with tempfile.TemporaryDirectory(dir=scratch) as folder:
    root = pathlib.Path(folder) / "root"
    root.mkdir()
    build(root, entries)
    try:
      strict, error = scan_dataset(root, series_length=SERIES_LENGTH), None
    except InputError as e:
      strict, error = None, e
      assert e.path.startswith(str(root)) and str(e).isprintable()
    try:
      skipped = scan_dataset(root, series_length=SERIES_LENGTH, skip_invalid=True)
    except InputError as e:
      # Only a root that is no dataset at all stops a skipping scan.
      assert e.path == str(root) and str(e) == str(error)
      return
  if error is None:
    assert skipped == strict
  else:
    assert skipped.problems[0] == str(error)
  assert all(problem.isprintable() for problem in skipped.problems)
  for series in skipped.all_series():
    assert len(series.months) == SERIES_LENGTH
    for month, *paths in zip(series.months, series.s1, series.rgb, series.cm):
      assert [p.parent.name for p in paths] == [series.zone] * 3
      assert all(f"_{month.lower()}_patch_" in p.name.lower() for p in paths)


def test_unlistable_folders_are_reported_and_skipped(tmp_path, monkeypatch):
  # Permissions do not stop the root user (who may run the tests): listing fails by substitution.
  root = write_synthetic_dataset(tmp_path / "ds", series_per_split={"training": 1, "test": 1},
                                 image_size=SIZE)
  locked = {root / "training" / "sen2" / SYNTHETIC_ZONE, root / "test" / "sen1"}
  iterdir = pathlib.Path.iterdir

  def guarded(self):
    if self in locked:
      raise PermissionError(13, "Permission denied", str(self))
    return iterdir(self)

  monkeypatch.setattr(pathlib.Path, "iterdir", guarded)
  with pytest.raises(InputError, match="cannot list folder \\(Permission denied\\)") as info:
    scan_dataset(root)
  assert info.value.path in map(str, locked)
  scan = scan_dataset(root, skip_invalid=True)
  assert sorted(scan.problems) == sorted(f"{p}: cannot list folder (Permission denied)"
                                         for p in locked)
  assert scan.all_series() == []


def test_entries_without_search_permission_stop_the_scan(tmp_path, monkeypatch):
  root = write_synthetic_dataset(tmp_path / "ds", series_per_split={"training": 1},
                                 image_size=SIZE, flat=True)
  is_file = pathlib.Path.is_file

  def denied(self):
    if self.parent.name == SYNTHETIC_ZONE:
      raise PermissionError(13, "Permission denied", str(self))
    return is_file(self)

  monkeypatch.setattr(pathlib.Path, "is_file", denied)
  with pytest.raises(InputError, match="cannot read \\(Permission denied\\)") as info:
    scan_dataset(root, skip_invalid=True)
  assert SYNTHETIC_ZONE in info.value.path


def test_patch_number_beyond_int32_is_a_name_problem(tmp_path):
  root = write_synthetic_dataset(tmp_path / "ds", series_per_split={"training": 1},
                                 image_size=SIZE, flat=True)
  huge = root / "sen2" / SYNTHETIC_ZONE / "image_RGB_1_Jan_patch_2147483648.tif"
  shutil.copy(synthetic_file(root, "RGB", "Jan"), huge)
  with pytest.raises(InputError, match="patch number 2147483648 is too large") as info:
    scan_dataset(root)
  assert info.value.path == str(huge)
