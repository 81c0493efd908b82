"""Trains and exports the shipped weights, `plus_sample` (docs/weights.md).

    .venv/bin/python scripts/train_release_weights.py [--sample_root=../shared/data/plfm_sample]
        [--workdir=workdir/release] [--out=plfm_jax/weights/plus_sample.msgpack]

Trains `configs/plfm.py:small,plus` (seed 0) on both zones of the real sample, every patch but
the three highest-numbered of each zone, which are held out as the validation split (early
stopping and the choice of checkpoints); evaluates the best model on them; and writes it as a
weights file (`plfm_jax.weight_files.export`) with a description of this run. Then it de-clouds the
first held-out patch of each zone with predict.py's code path (the patch's last date under
simulated clouds, as GeoTIFF inputs) and draws docs/images/weights_example.png. About 10 minutes
on 2 CPU cores. The cross-season numbers of the model card come from scripts/real_sample_study.py,
which trains the same configuration on one season and tests it on the other.
"""

from __future__ import annotations

import pathlib
import sys

from absl import flags
import numpy as np
import tifffile

from plfm_jax import visualize
from plfm_jax import weight_files
from plfm_jax.data import layout
from plfm_jax.data.clouds import simulate_clouds
from plfm_jax.data.normalize import REFLECTANCE_SCALE, s2_reflectance
from plfm_jax.evaluation import report
from plfm_jax.inference import scene

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import real_sample_results  # noqa: E402  (a sibling script)

FLAGS = flags.FLAGS
REPO = real_sample_results.REPO
ZONES = ("zone_9_a", "zone_9_b")
VARIANT = "small,plus"


def main(argv: list[str]) -> None:
  del argv
  workdir = pathlib.Path(FLAGS.workdir).absolute()
  out = pathlib.Path(FLAGS.out)
  splits = real_sample_results.link_splits(pathlib.Path(FLAGS.sample_root), workdir / "raw",
                                           ZONES, None, FLAGS.validation_patches)
  python = sys.executable
  common = ["--config", f"configs/plfm.py:{VARIANT}", "--workdir", str(workdir),
            f"--config.data.tfds_dir={workdir / 'tfds'}", "--config.seed=0"]
  real_sample_results.run([python, "train.py", *common,
                           f"--config.data.manual_dir={workdir / 'raw'}"])
  real_sample_results.run([python, "evaluate.py", *common, "--split", "validation",
                           "--overwrite"])
  summary = report.read_summary(workdir / "eval" / "validation" / "summary.json")
  lead = summary["scenarios"][0]
  fused = summary["metrics"][lead]["plfm_fused"]
  held_out = "; ".join(f"{zone} patches {', '.join(map(str, patches))}"
                       for zone, patches in splits["validation"].items())
  description = (
      f"configs/plfm.py:{VARIANT}, seed 0, trained by scripts/train_release_weights.py on the "
      f"real sample's {' and '.join(ZONES)} (one place, Jan-Aug, RGB + VV, 10 m), held out for "
      f"validation: {held_out}. Validation cloud-area PSNR {fused['psnr_cloud']:.2f} dB, "
      f"SSIM {fused['ssim_cloud']:.4f} under simulated clouds, haze and shadows, masks found by "
      f"the tool (scenario {lead}). See docs/weights.md.")
  exported = weight_files.export(workdir, out, description=description)
  print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): {exported.metadata['description']}")
  example = example_panel(exported, workdir / "raw" / "validation", workdir / "example",
                          pathlib.Path(FLAGS.example))
  print(f"wrote {example}")


def example_panel(exported: weight_files.Weights, validation_root: pathlib.Path,
                  scratch: pathlib.Path, png: pathlib.Path) -> pathlib.Path:
  """De-clouds the first held-out series of each zone through `scene.predict_scene` and draws
  cloudy | latest earlier date | restored | truth, one row per zone."""
  model = scene.tile_model(exported.config, exported.variables)
  rng = np.random.default_rng(0)
  columns = {"cloudy (simulated clouds)": [], "latest earlier date": [], "restored": [],
             "truth": []}
  held_out = layout.scan_dataset(validation_root).all_series()
  for zone in ZONES:
    series = next(s for s in held_out if s.zone == zone)
    folder = scratch / zone
    folder.mkdir(parents=True, exist_ok=True)
    truth = tifffile.imread(series.rgb[-1])
    cloudy, _, _ = simulate_clouds(s2_reflectance(truth), rng, coverage=0.4, haze_margin=0.1)
    # No mask given: the tool finds the clouds, haze and shadows itself.
    inputs = scene.SceneInputs(
        cloudy=folder / "cloudy.tif", history=tuple(series.rgb[:-1]), sar=series.s1[-1])
    tifffile.imwrite(inputs.cloudy, np.rint(cloudy * REFLECTANCE_SCALE).astype(np.uint16))
    scene.predict_scene(inputs, folder / "restored.tif", model, overwrite=True, progress=False)
    for name, image in zip(columns, (inputs.cloudy, series.rgb[-2], folder / "restored.tif",
                                     series.rgb[-1])):
      columns[name].append(s2_reflectance(tifffile.imread(image)))
  columns = {name: np.stack(images) for name, images in columns.items()}
  stretch = visualize.stretch_like(columns["truth"])
  return visualize.save_png(png, visualize.panel(
      {name: stretch(images) for name, images in columns.items()}))


if __name__ == "__main__":
  from plfm_jax import cli
  flags.DEFINE_string("sample_root", str(real_sample_results.DEFAULT_SAMPLE),
                      "The real sample's root folder.")
  flags.DEFINE_string("workdir", str(REPO / "workdir" / "release"), "Training workdir.")
  flags.DEFINE_string("out", str(weight_files.shipped_path(weight_files.SHIPPED[0])),
                      "The weights file to write (it must not exist).")
  flags.DEFINE_string("example", str(REPO / "docs" / "images" / "weights_example.png"),
                      "The example picture to write.")
  flags.DEFINE_integer("validation_patches", 3,
                       "Highest-numbered patches of each zone held out.", lower_bound=1)
  cli.run(main)
