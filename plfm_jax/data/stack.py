"""A date as the authors' downloader writes it, one GeoTIFF per band, as one R, G, B stack.

    python -m plfm_jax.data.stack DATE_DIR OUT.tif

The SentinelDataDownloaderTool that built the PLFM dataset writes, per date, a folder of
single-band uint16 GeoTIFFs named `<date>.B2.tif`, `<date>.B3.tif`, `<date>.B4.tif` and
`<date>.QA60.tif`. `predict.py` reads such a folder directly; this tool writes its B4, B3, B2
(R, G, B) as the one 3-band GeoTIFF the rest of the project reads, with the bands' georeference.
"""

from __future__ import annotations

import os
import pathlib

from absl import app
import numpy as np
import rasterio

from plfm_jax import georef
from plfm_jax.errors import InputError

# R, G, B of the stack, in order.
RGB_BANDS = ("B4", "B3", "B2")
QA60 = "QA60"
_SUFFIXES = (".tif", ".tiff")


def band_files(folder: str | os.PathLike) -> dict[str, pathlib.Path]:
  """{band: file} of a date folder: B4, B3 and B2, and QA60 when there is one.

  Raises:
    InputError: not a folder, or a band missing or present twice.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise InputError(folder, "is not a folder of per-band GeoTIFFs")
  found: dict[str, list[pathlib.Path]] = {}
  for path in sorted(folder.iterdir()):
    stem, suffix = os.path.splitext(path.name)
    band = stem.rsplit(".", 1)[-1].upper()
    if suffix.lower() in _SUFFIXES and band in (*RGB_BANDS, QA60):
      found.setdefault(band, []).append(path)
  for band in RGB_BANDS:
    if band not in found:
      raise InputError(folder, f"no {band} band (expected a file named <date>.{band}.tif)")
  twice = [band for band, paths in found.items() if len(paths) > 1]
  if twice:
    raise InputError(folder, f"band {twice[0]} is there twice: "
                     f"{', '.join(p.name for p in found[twice[0]])}")
  return {band: paths[0] for band, paths in found.items()}


def stack_rgb(folder: str | os.PathLike, out: str | os.PathLike) -> pathlib.Path:
  """Writes the folder's B4, B3, B2 as one uint16 R, G, B GeoTIFF on their grid.

  Raises:
    InputError: a band is missing, not uint16, not single-band, or on another grid.
  """
  files = band_files(folder)
  out = pathlib.Path(out)
  bands, profile = [], None
  for band in RGB_BANDS:
    with rasterio.open(files[band]) as src:
      if src.count != 1 or src.dtypes[0] != "uint16":
        raise InputError(files[band], f"expected one uint16 band ({band}, reflectance x 10000), "
                         f"found {src.count} band(s) of {src.dtypes[0]}")
      if profile is None:
        profile = src.profile
        grid = georef.Grid(src.crs, src.transform, src.shape)
      elif not georef.same_grid(src, grid):
        raise InputError(files[band], f"is not on the grid of {files[RGB_BANDS[0]].name}")
      bands.append(src.read(1))
  profile.update(count=3, dtype="uint16", photometric="minisblack", interleave="pixel",
                 compress="deflate", tiled=False)
  profile.pop("blockxsize", None)
  profile.pop("blockysize", None)
  partial = out.with_name(f".{out.name}.partial")
  with rasterio.open(partial, "w", **profile) as dst:
    dst.write(np.stack(bands))
  partial.replace(out)
  return out


def main(argv: list[str]) -> None:
  if len(argv) != 3:
    raise app.UsageError("usage: python -m plfm_jax.data.stack DATE_DIR OUT.tif")
  folder, out = pathlib.Path(argv[1]), pathlib.Path(argv[2])
  if out.exists():
    raise InputError(out, "exists already; remove it first")
  stack_rgb(folder, out)
  print(f"wrote {out}: {', '.join(RGB_BANDS)} of {folder} as R, G, B")


if __name__ == "__main__":
  from plfm_jax import cli
  cli.run(main)
