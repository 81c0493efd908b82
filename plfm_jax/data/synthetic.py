"""Synthetic Sentinel-1/Sentinel-2 series written in the exact on-disk layout of the PLFM dataset.

    <root>/<split>/sen1/<zone>/image_VV_<n>_<Mon>_patch_<p>.tif   float64, VV dB
    <root>/<split>/sen2/<zone>/image_RGB_<n>_<Mon>_patch_<p>.tif  uint16 (H, W, 3), B4 B3 B2 x 10000
    <root>/<split>/sen2/<zone>/image_CM_<n>_<Mon>_patch_<p>.tif   uint16 QA60, all zero

Splits are `training/`, `validation/` and `test/`; with `flat=True` `sen1/` and `sen2/` lie directly
under the root. Scenes are built to be learnable: a land-cover map (water, fields, natural
vegetation, bare soil, urban) from multi-octave noise, vegetation following a seasonal curve
with per-field timing and some harvests, zone-wide weather per date, and a VV image computed from
the same land cover with gamma speckle.

Command line: `python -m plfm_jax.data.synthetic ROOT [--image_size=64] [--train=N --validation=N
--test=N] [--seed=S] [--flat]`.
"""

from __future__ import annotations

import pathlib
from typing import Iterator, Mapping, Sequence

from absl import app
from absl import flags
import numpy as np
import tifffile

from plfm_jax.data.clouds import fractal_noise
from plfm_jax.data.layout import MONTHS, SPLIT_FOLDERS
from plfm_jax.errors import InputError

FLAGS = flags.FLAGS

DEFAULT_SERIES_PER_SPLIT = {"training": 32, "validation": 8, "test": 8}
DEFAULT_MONTHS = ("Jan", "Feb", "Mar", "Apr")

# Typical Sentinel-2 surface reflectance x 10000, (R, G, B) = (B4, B3, B2).
_WATER_RGB = np.array([300.0, 450.0, 550.0], np.float32)
_VEGETATION_RGB = np.array([420.0, 720.0, 400.0], np.float32)
_SOIL_RGB = np.array([2300.0, 1750.0, 1250.0], np.float32)
_URBAN_RGB = np.array([1600.0, 1550.0, 1500.0], np.float32)

# Sentinel-1 VV backscatter in dB: calm water is a specular reflector, buildings are corner
# reflectors, vegetation adds volume scattering over the soil.
_WATER_DB = -20.0
_SOIL_DB = -14.0
_VEGETATION_DB = -10.0
_URBAN_DB = 2.0
# Equivalent number of looks of Sentinel-1 IW GRD products: sets the speckle strength.
_ENL = 4.4

# Parcel kinds.
_CROP, _NATURAL, _BARE = 0, 1, 2

# The real patches have strips of about 8 KiB (GDAL's default).
_STRIP_BYTES = 8192


def _month_numbers(months: Sequence[str]) -> np.ndarray:
  unknown = [m for m in months if m not in MONTHS]
  if unknown or len(set(months)) != len(months) or not months:
    raise ValueError(f"months must be distinct names from {MONTHS}, got {tuple(months)}")
  return np.array([MONTHS.index(m) + 1 for m in months], np.float32)


def _parcels(rng: np.random.Generator, size: int) -> tuple[np.ndarray, int]:
  """Field parcel ids (size, size): a random rectangular grid with borders warped by noise."""
  n_rows, n_cols = rng.integers(4, 11, size=2)
  # Jittered regular cuts: parcels of similar size, no slivers.
  row_cuts = (np.arange(1, n_rows) + rng.uniform(-0.3, 0.3, n_rows - 1)) * (size / n_rows)
  col_cuts = (np.arange(1, n_cols) + rng.uniform(-0.3, 0.3, n_cols - 1)) * (size / n_cols)
  warp = 0.06 * size
  warp_y = (fractal_noise((size, size), rng, octaves=2, base_cells=2) - 0.5) * warp
  warp_x = (fractal_noise((size, size), rng, octaves=2, base_cells=2) - 0.5) * warp
  coords = np.arange(size, dtype=np.float32)
  rows = np.searchsorted(row_cuts, coords[:, None] + warp_y)
  cols = np.searchsorted(col_cuts, coords[None, :] + warp_x)
  return rows * n_cols + cols, int(n_rows * n_cols)


def _below_quantile(noise: np.ndarray, fraction: float) -> np.ndarray:
  return noise < np.quantile(noise, fraction)


def synthesize_zone(rng: np.random.Generator, n_series: int, *, image_size: int,
                    months: Sequence[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields `n_series` series of one zone as (s2 (T, H, W, 3) uint16, s1 (T, H, W) float64 dB).

  Series of a zone share what one acquisition shares: illumination, soil moisture and water
  roughness per date, soil colour and the crop calendar. Land cover differs per series.
  """
  month_numbers = _month_numbers(months)
  n_dates = len(months)
  size = image_size
  # Soil brightness varies a lot between regions, its hue only a little.
  soil_rgb = (_SOIL_RGB * rng.uniform(0.7, 1.2) * rng.uniform(0.95, 1.05, 3)).astype(np.float32)
  crop_peak = rng.uniform(4.0, 8.0)
  illumination = rng.normal(1.0, 0.03, n_dates).astype(np.float32)
  moisture = rng.uniform(0.0, 1.0, n_dates).astype(np.float32)
  water_roughness_db = rng.normal(0.0, 1.5, n_dates).astype(np.float32)

  for _ in range(n_series):
    elevation = fractal_noise((size, size), rng, base_cells=2)
    water = _below_quantile(elevation, rng.uniform(0.0, 0.15))
    urban_noise = fractal_noise((size, size), rng, base_cells=6, octaves=4)
    urban = ~_below_quantile(urban_noise, 1.0 - rng.uniform(0.0, 0.15)) & ~water
    # Persistent fine texture: crop rows, tree crowns, roofs look the same on every date.
    texture = fractal_noise((size, size), rng, base_cells=16, octaves=3) - 0.5

    parcel_ids, n_parcels = _parcels(rng, size)
    kind = rng.choice([_CROP, _NATURAL, _BARE], n_parcels, p=[0.55, 0.3, 0.15])
    base_cover = np.select([kind == _CROP, kind == _NATURAL], [0.05, 0.45], 0.0)
    amplitude = np.select([kind == _CROP, kind == _NATURAL], [0.9, 0.35], 0.05)
    peak = crop_peak + rng.normal(0.0, 1.5, n_parcels)
    harvest = np.where((kind == _CROP) & (rng.random(n_parcels) < 0.3),
                       rng.uniform(month_numbers.min(), month_numbers.max() + 1, n_parcels), 13.0)
    parcel_tint = rng.uniform(0.85, 1.15, n_parcels).astype(np.float32)
    tint = parcel_tint[parcel_ids][..., None] * (1.0 + 0.3 * texture[..., None])

    s2 = np.empty((n_dates, size, size, 3), np.uint16)
    s1 = np.empty((n_dates, size, size), np.float64)
    for t, month in enumerate(month_numbers):
      season = 0.5 + 0.5 * np.cos(2.0 * np.pi * (month - peak) / 12.0)
      cover_parcel = np.clip(base_cover + amplitude * season, 0.0, 1.0)
      cover_parcel = np.where(month >= harvest, 0.05, cover_parcel).astype(np.float32)
      cover = np.clip(cover_parcel[parcel_ids] * (1.0 + 0.4 * texture), 0.0, 1.0)[..., None]

      # Wet soil is darker in the optical and brighter in the radar.
      soil = soil_rgb * (1.0 - 0.25 * moisture[t]) * tint
      ground = cover * _VEGETATION_RGB * tint + (1.0 - cover) * soil
      rgb = np.where(water[..., None], _WATER_RGB,
                     np.where(urban[..., None], _URBAN_RGB * tint, ground))
      noise = rng.standard_normal(rgb.shape, dtype=np.float32)
      rgb = rgb * illumination[t] + noise * (10.0 + 0.01 * rgb)
      s2[t] = np.clip(np.rint(rgb), 1, 65535)

      land_db = _SOIL_DB + 3.0 * moisture[t] + (_VEGETATION_DB - _SOIL_DB) * cover[..., 0]
      db = np.where(water, _WATER_DB + water_roughness_db[t],
                    np.where(urban, _URBAN_DB + 8.0 * texture, land_db + 2.0 * texture))
      speckle = rng.gamma(_ENL, 1.0 / _ENL, (size, size))
      s1[t] = db + 10.0 * np.log10(speckle)
    yield s2, s1


def _write_tiff(path: pathlib.Path, image: np.ndarray) -> None:
  """Writes a plain TIFF stored like the real patches.

  Uncompressed, samples interleaved, 'minisblack' even for RGB (the other two bands as extra
  samples), ~8 KiB strips, no ImageDescription, Software or georeference tags.
  """
  row_bytes = image.shape[1] * image.itemsize * (image.shape[2] if image.ndim == 3 else 1)
  tifffile.imwrite(path, image, photometric="minisblack", planarconfig="contig",
                   rowsperstrip=max(1, _STRIP_BYTES // row_bytes), metadata=None, software=False)


def write_synthetic_dataset(root: str | pathlib.Path, *,
                            series_per_split: Mapping[str, int] | None = None,
                            image_size: int = 64, months: Sequence[str] = DEFAULT_MONTHS,
                            patches_per_zone: int = 8, seed: int = 0,
                            flat: bool = False) -> pathlib.Path:
  """Writes a synthetic dataset in the authors' layout under `root` and returns `root`.

  Args:
    root: destination folder; created if missing, refused (InputError) unless it is empty.
    series_per_split: series per split folder (`training`, `validation`, `test`); default
      DEFAULT_SERIES_PER_SPLIT. With `flat=True` the counts are summed and all series go directly
      under `root` (the layout of a test path).
    image_size: patch height and width in pixels.
    months: month names of every series (the same for all zones).
    patches_per_zone: series per zone folder; the last zone of a split holds the remainder.
      Patch numbers are drawn without replacement from 0..2*patches_per_zone-1, so they have gaps
      as in the real data.
    seed: seeds everything; the same arguments give byte-identical files.
    flat: write one split directly under `root`.
  """
  root = pathlib.Path(root)
  counts = dict(DEFAULT_SERIES_PER_SPLIT if series_per_split is None else series_per_split)
  unknown = set(counts) - set(SPLIT_FOLDERS)
  if unknown and not flat:
    raise ValueError(f"unknown split folder(s) {sorted(unknown)}; "
                     f"choose from {tuple(SPLIT_FOLDERS)}")
  if any(n < 0 for n in counts.values()) or image_size < 1 or patches_per_zone < 1:
    raise ValueError("series counts must be >= 0, image_size and patches_per_zone >= 1")
  _month_numbers(months)
  if root.exists() and (not root.is_dir() or any(root.iterdir())):
    raise InputError(root, "exists and is not an empty folder; choose a new or empty one")
  if flat:
    folders = {root: sum(counts.values())}
  else:
    folders = {root / s: counts[s] for s in SPLIT_FOLDERS if s in counts}

  rng = np.random.default_rng(seed)
  s1_counter = int(rng.integers(100, 200))
  s2_counter = s1_counter + int(rng.integers(100, 150))
  zone_index = 0
  for folder, n_series in folders.items():
    for first in range(0, n_series, patches_per_zone):
      n_zone = min(patches_per_zone, n_series - first)
      zone = f"zone_{zone_index // 3 + 1}_{'abc'[zone_index % 3]}"
      zone_index += 1
      patches = np.sort(rng.choice(2 * patches_per_zone, n_zone, replace=False))
      # Export counters: one per (zone, month) and sensor, increasing in export order (not
      # calendar order); S2 counters grow faster and start higher, so S1 and S2 never coincide.
      s1_numbers, s2_numbers = {}, {}
      for month in rng.permutation(list(months)):
        s1_counter += int(rng.integers(1, 4))
        s2_counter += int(rng.integers(3, 7))
        s1_numbers[month], s2_numbers[month] = s1_counter, s2_counter
      (folder / "sen1" / zone).mkdir(parents=True)
      (folder / "sen2" / zone).mkdir(parents=True)
      clear = np.zeros((image_size, image_size), np.uint16)
      series = synthesize_zone(rng, n_zone, image_size=image_size, months=months)
      for patch, (s2, s1) in zip(patches, series):
        for t, month in enumerate(months):
          s1_name = f"image_VV_{s1_numbers[month]}_{month}_patch_{patch}.tif"
          s2_stem = f"{s2_numbers[month]}_{month}_patch_{patch}.tif"
          _write_tiff(folder / "sen1" / zone / s1_name, s1[t])
          _write_tiff(folder / "sen2" / zone / f"image_RGB_{s2_stem}", s2[t])
          _write_tiff(folder / "sen2" / zone / f"image_CM_{s2_stem}", clear)
  return root


def main(argv: list[str]) -> None:
  """Command line: writes a synthetic dataset and prints what it wrote."""
  if len(argv) != 2:
    raise app.UsageError("give one destination: python -m plfm_jax.data.synthetic ROOT")
  counts = {"training": FLAGS.train, "validation": FLAGS.validation, "test": FLAGS.test}
  root = write_synthetic_dataset(pathlib.Path(argv[1]), series_per_split=counts,
                                 image_size=FLAGS.image_size, seed=FLAGS.seed, flat=FLAGS.flat)
  files = list(root.rglob("*.tif"))
  megabytes = sum(p.stat().st_size for p in files) / 2**20
  split_text = f"{sum(counts.values())} series (flat)" if FLAGS.flat else ", ".join(
      f"{split} {n}" for split, n in counts.items())
  print(f"wrote {split_text} of {len(DEFAULT_MONTHS)} dates at {FLAGS.image_size} px to {root}: "
        f"{len(files)} files, {megabytes:.1f} MiB")


if __name__ == "__main__":
  from plfm_jax import cli
  flags.DEFINE_integer("image_size", 64, "Patch height and width in pixels.")
  flags.DEFINE_integer("train", DEFAULT_SERIES_PER_SPLIT["training"], "Training series.")
  flags.DEFINE_integer("validation", DEFAULT_SERIES_PER_SPLIT["validation"],
                       "Validation series.")
  flags.DEFINE_integer("test", DEFAULT_SERIES_PER_SPLIT["test"], "Test series.")
  flags.DEFINE_integer("seed", 0, "Seed of everything drawn.")
  flags.DEFINE_bool("flat", False,
                    "Write sen1/ and sen2/ directly under ROOT with all series (their sum).")
  cli.run(main)
