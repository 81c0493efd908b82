"""Real clouds, real shadows, no mask: the README's MultiEarth panel and its numbers.

    .venv/bin/python scripts/multiearth_example.py [--sample_root=../shared/data/multiearth_sample]
        [--png=docs/images/multiearth_panel.png] [--workdir=workdir/multiearth]

The MultiEarth sample (Amazon, Para; see its README) has real cumulus clouds and their shadows on
three of six Sentinel-2 dates, and a QA60 band that flags nothing. This script stacks each date's
B4, B3, B2 as one GeoTIFF and runs `scene.predict_scene` (what `predict.py` does) with the shipped
weights on 2019-07-11, given every earlier date (2019-06-06, 06-11, 07-01, two of them clouded
themselves), no mask and no SAR (the sample's nearest S1 is 9 days off). It prints what was found
in every date, the share of cloud-bright pixels (mean R, G, B reflectance above 0.15) before and
after against that of the clear dates, and the PSNR of the restored pixels against the next clear
date (2019-07-26) matched band by band to 2019-07-11's kept pixels (the closest thing to a ground
truth there is), beside every gap-filling baseline run the same way (`predict.py --method`: the
same detection, earlier dates and windows, no network); and draws: the earlier dates, the cloudy
date, what was found (clouds red, shadows blue), the result and the next clear date.
"""

from __future__ import annotations

import pathlib

from absl import flags
import numpy as np
import tifffile

from plfm_jax import runtime
from plfm_jax import visualize
from plfm_jax import weight_files
from plfm_jax.data.normalize import s2_reflectance
from plfm_jax.inference import scene
from plfm_jax.models import gapfill

FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parents[1]
EARLIER = ("2019_06_06", "2019_06_11", "2019_07_01")
CLOUDY, NEXT_CLEAR = "2019_07_11", "2019_07_26"
CLEAR_DATES = ("2019_07_01", "2019_07_26", "2020_07_20")
BRIGHT = 0.15


def rgb(sample_root: pathlib.Path, date: str) -> np.ndarray:
  """A date's B4, B3, B2 as (H, W, 3) uint16 R, G, B (reflectance x 10000)."""
  return np.stack([tifffile.imread(sample_root / "sent2"
                                   / f"Sentinel2_{band}_-55.20_-4.39_{date}.tiff")
                   for band in ("B4", "B3", "B2")], axis=-1)


def stack(sample_root: pathlib.Path, folder: pathlib.Path, date: str) -> pathlib.Path:
  """A date's B4, B3, B2 as one R, G, B GeoTIFF in `folder`."""
  path = folder / f"{date}.tif"
  tifffile.imwrite(path, rgb(sample_root, date), photometric="rgb")
  return path


def bright_share(path: pathlib.Path) -> float:
  return float((s2_reflectance(tifffile.imread(path)).mean(axis=-1) > BRIGHT).mean())


def main(argv) -> None:
  del argv
  runtime.configure(FLAGS.debug)
  sample_root, workdir = pathlib.Path(FLAGS.sample_root), pathlib.Path(FLAGS.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  dates = {d: stack(sample_root, workdir, d) for d in (*EARLIER, CLOUDY, *CLEAR_DATES)}
  shipped = weight_files.load(weight_files.SHIPPED[0])
  out, mask_out = workdir / "restored.tif", workdir / "mask.tif"
  report = scene.predict_scene(
      scene.SceneInputs(cloudy=dates[CLOUDY], history=tuple(dates[d] for d in EARLIER)), out,
      scene.tile_model(shipped.config, shipped.variables), mask_out=mask_out, overwrite=True,
      progress=False)
  for found in report.dates:
    print(f"found in {pathlib.Path(found.name).stem}: cloud or haze {found.cloud:.1%}, "
          f"shadow {found.shadow:.1%}")
  clear = {d: bright_share(dates[d]) for d in CLEAR_DATES}
  print(f"cloud-bright pixels (mean R, G, B > {BRIGHT}): {CLOUDY} {bright_share(dates[CLOUDY]):.2%}"
        f" -> restored {bright_share(out):.2%}; clear dates "
        + ", ".join(f"{d} {v:.2%}" for d, v in clear.items()))
  mask = tifffile.imread(mask_out)
  restored = mask > 0
  cloudy = s2_reflectance(tifffile.imread(dates[CLOUDY]))
  reference = np.asarray(gapfill.match_bands(
      s2_reflectance(tifffile.imread(dates[NEXT_CLEAR]))[None], cloudy[None],
      restored[None, ..., None].astype(np.float32)))[0]
  result = s2_reflectance(tifffile.imread(out))
  psnr = lambda image: -10 * np.log10(np.mean((image[restored] - reference[restored]) ** 2))
  print(f"restored pixels ({restored.mean():.1%} of the date) against {NEXT_CLEAR} matched to "
        f"{CLOUDY}: PSNR {psnr(result):.2f} dB (the cloudy date there: {psnr(cloudy):.2f} dB)")
  print(f"\n| method (the same detection and earlier dates) | cloud-bright pixels | PSNR of the "
        f"restored pixels (dB) |\n|---|---:|---:|\n| shipped model | {bright_share(out):.2%} | "
        f"{psnr(result):.2f} |")
  for method in gapfill.METHODS:
    baseline = workdir / f"{method}.tif"
    scene.predict_scene(scene.SceneInputs(cloudy=dates[CLOUDY],
                                          history=tuple(dates[d] for d in EARLIER)),
                        baseline, scene.gapfill_tile_model(method), overwrite=True,
                        progress=False)
    print(f"| {method} | {bright_share(baseline):.2%} | "
          f"{psnr(s2_reflectance(tifffile.imread(baseline))):.2f} |")

  label = lambda date: date[5:].replace("_", "-")
  images = {f"{label(d)} (earlier)": s2_reflectance(tifffile.imread(dates[d])) for d in EARLIER}
  images[f"{label(CLOUDY)} cloudy"] = cloudy
  images["restored"] = result
  images[f"{label(NEXT_CLEAR)} (next clear)"] = s2_reflectance(
      tifffile.imread(dates[NEXT_CLEAR]))
  # One contrast for every column: that of the result, so the ground compares across dates.
  stretch = visualize.stretch_like(result[None])
  columns = {name: stretch(image[None]) for name, image in images.items()}
  found = columns[f"{label(CLOUDY)} cloudy"][0].copy()
  for value, colour in ((scene.MASK_CLOUD, (1.0, 0.0, 0.0)), (scene.MASK_SHADOW, (0.0, 0.3, 1.0))):
    found[mask == value] = 0.4 * found[mask == value] + 0.6 * np.array(colour)
  names = list(columns)
  columns = {**{n: columns[n] for n in names[:4]}, "found (no mask given)": found[None],
             **{n: columns[n] for n in names[4:]}}
  print(f"wrote {visualize.save_png(pathlib.Path(FLAGS.png), visualize.panel(columns))}")


if __name__ == "__main__":
  from plfm_jax import cli
  flags.DEFINE_string("sample_root", str(REPO.parent / "shared" / "data" / "multiearth_sample"),
                      "The MultiEarth sample's folder.")
  flags.DEFINE_string("png", str(REPO / "docs" / "images" / "multiearth_panel.png"),
                      "The panel to write.")
  flags.DEFINE_string("workdir", str(REPO / "workdir" / "multiearth"), "Scratch folder.")
  cli.run(main)
