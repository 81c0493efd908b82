"""Shared fixtures: the real samples (skipped when absent) and a small synthetic dataset."""

from __future__ import annotations

import os
import pathlib
import struct
import tempfile

import numpy as np
import pytest
import tifffile

from plfm_jax import hugepages

# One XLA compilation cache for the whole session, inherited by the train.py subprocesses: the
# tiny models are compiled once instead of once per process (75 s -> 12 s for a repeated run).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="plfm_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# Tiny shapes make compilation most of the suite's time: XLA's cheapest code generation
# (inherited by the subprocesses) compiles the same programs faster, which more than pays for
# their slower code. Benchmarks and users' runs keep the default.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# The malloc tunable the entry points would restart themselves for (plfm_jax.hugepages), set
# here so that the command-line subprocesses start once.
os.environ.update(hugepages.environment(os.environ) or {})

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_ROOT = pathlib.Path(
    os.environ.get("PLFM_SAMPLE_ROOT", REPO_ROOT.parent / "shared" / "data" / "plfm_sample"))
# Real clouds and shadows (QA60 empty): tests that read it skip when it is absent.
MULTIEARTH_ROOT = REPO_ROOT.parent / "shared" / "data" / "multiearth_sample"


# GeoTIFF tags of a UTM zone 32N grid of 10 m pixels as GDAL writes it (scale + tiepoint), as
# tifffile `extratags` (code, type, count, value, write once).
GEOKEYS = (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 1026, 34737, 22, 0, 3072, 0, 1, 32632)
GEO_TAGS = [
    (33550, 12, 3, (10.0, 10.0, 0.0), True),
    (33922, 12, 6, (0.0, 0.0, 0.0, 399960.0, 5000040.0, 0.0), True),
    (34735, 3, len(GEOKEYS), GEOKEYS, True),
    (34736, 12, 2, (6378137.0, 298.257223563), True),
    (34737, 2, None, "WGS 84 / UTM zone 32N|", True),
    (42113, 2, None, "0", True),
]

def multiearth_rgb(date: str) -> np.ndarray:
  """One MultiEarth date's B4, B3, B2 as (H, W, 3) uint16 R, G, B (reflectance x 10000)."""
  return np.stack([tifffile.imread(MULTIEARTH_ROOT / "sent2"
                                   / f"Sentinel2_{band}_-55.20_-4.39_{date}.tiff")
                   for band in ("B4", "B3", "B2")], axis=-1)


# The first zone the synthetic writer creates.
SYNTHETIC_ZONE = "zone_1_a"


@pytest.fixture
def flat_root(tmp_path: pathlib.Path) -> pathlib.Path:
  """Two synthetic series (one zone, Jan-Apr) at 16 px directly under the root: one train split."""
  from plfm_jax.data.synthetic import write_synthetic_dataset
  return write_synthetic_dataset(tmp_path / "ds", series_per_split={"training": 2}, image_size=16,
                                 flat=True)


def synthetic_file(root: pathlib.Path, kind: str, month: str = "Feb",
                   index: int = 0) -> pathlib.Path:
  """The `index`-th file (by patch number) of `kind` (VV, RGB, CM) and `month` in SYNTHETIC_ZONE."""
  folder = "sen1" if kind == "VV" else "sen2"
  files = (root / folder / SYNTHETIC_ZONE).glob(f"image_{kind}_*_{month}_patch_*.tif")
  return sorted(files, key=lambda p: int(p.stem.rsplit("_", 1)[1]))[index]


def drop_strip_byte_counts(path: pathlib.Path) -> None:
  """Damages a little-endian TIFF written by tifffile: its StripByteCounts tag becomes an unknown
  private tag. tifffile still reads the file, after logging that the byte counts are missing
  (the pixels are whatever it guesses)."""
  data = bytearray(path.read_bytes())
  [ifd] = struct.unpack_from("<I", data, 4)
  for i in range(struct.unpack_from("<H", data, ifd)[0]):
    entry = ifd + 2 + 12 * i
    if struct.unpack_from("<H", data, entry)[0] == 279:  # StripByteCounts
      struct.pack_into("<H", data, entry, 65000)
  path.write_bytes(data)


@pytest.fixture(scope="session")
def sample_root() -> pathlib.Path:
  """The real Sentinel-1/2 sample in the authors' layout; tests using it skip when it is absent."""
  if not (SAMPLE_ROOT / "sen2").is_dir():
    pytest.skip(f"real sample not found at {SAMPLE_ROOT}")
  return SAMPLE_ROOT
