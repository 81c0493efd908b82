"""De-clouds a Sentinel-2 scene with a trained PLFM model (docs/predict.md).

    python predict.py --cloudy S2_t3.tif --history S2_t0.tif,S2_t1.tif,S2_t2.tif [--sar S1_t3.tif]
        [--cloud_mask MASK.tif] --out OUT.tif [--weights NAME|FILE | --workdir DIR]

Clouds, haze and shadows are found in every date from the series itself (and any mask given);
`--history` takes one or more earlier dates (of more than the model reads, each window reads the
clearest, latest). Without --weights or --workdir the shipped weights (docs/weights.md) are used.
"""

from __future__ import annotations

import pathlib
import time

from absl import app
from absl import flags
import jax

from plfm_jax import cli
from plfm_jax import runtime
from plfm_jax import sharding
from plfm_jax import weight_files
from plfm_jax.data import inputs
from plfm_jax.inference import rasters, scene
from plfm_jax.masks import formats
from plfm_jax.models import gapfill

FLAGS = flags.FLAGS
flags.DEFINE_string("weights", None,
                    "Weights file, or the name of shipped weights "
                    f"({', '.join(weight_files.SHIPPED)}); default {weight_files.SHIPPED[0]} "
                    "unless --workdir is given.")
flags.DEFINE_string("workdir", None, "Training workdir: use its best checkpoints instead.")
flags.DEFINE_enum("method", "plfm", ("plfm", *gapfill.METHODS),
                  "plfm: the model. Or restore with a gap-filling baseline alone, no network "
                  "and no weights, on the same windows, detection and earlier dates "
                  "(matched_multiscale is the prior the shipped model corrects).")
flags.DEFINE_string("cloudy", None,
                    "Sentinel-2 R, G, B (uint16, reflectance x 10000) of the cloudy date: a "
                    "3-band GeoTIFF or a folder of per-band ones (<date>.B4.tif, ...).",
                    required=True)
flags.DEFINE_list("history", None,
                  "Sentinel-2 R, G, B of one or more earlier dates, oldest first, "
                  "comma-separated (GeoTIFFs or folders, as --cloudy; a folder's QA60 is its "
                  "date's mask). Of more dates than the model reads, each window reads the "
                  "clearest, latest ones.",
                  required=True)
flags.DEFINE_string("sar", None,
                    "Sentinel-1 VV backscatter in dB of the cloudy date; without it the scene "
                    "is restored from the optical dates alone.")
flags.DEFINE_string("cloud_mask", None,
                    "A cloud mask of the cloudy date (QA60, Sen2Cor SCL, a cloud probability, "
                    "OmniCloudMask classes or 0/1): added to what the tool finds. Default: the "
                    "QA60 file of a --cloudy folder.")
flags.DEFINE_enum("mask_format", "auto", formats.FORMATS,
                  "Format of --cloud_mask; auto tells it from the values.")
flags.DEFINE_float("mask_threshold", formats.DEFAULT_PROBABILITY_THRESHOLD,
                   "Probability masks: a pixel above this (of 1) is cloud.")
flags.DEFINE_bool("detect", True,
                  "Find clouds, haze and shadows in every date from the series; --nodetect "
                  "restores what the given masks flag, nothing else.")
flags.DEFINE_string("out", None, "Output GeoTIFF.", required=True)
flags.DEFINE_string("mask_out", None,
                    "Also write what was restored to this GeoTIFF (uint8: 0 kept, 1 cloud or "
                    "haze, 2 shadow).")
flags.DEFINE_bool("composite", True,
                  "Keep the cloudy input's pixels where nothing is to be restored; "
                  "--nocomposite writes the prediction everywhere.")
flags.DEFINE_bool("overwrite", False, "Replace existing output files.")
flags.DEFINE_integer("window", scene.DEFAULT_WINDOW,
                     f"Largest window side in pixels, a multiple of {scene.WINDOW_MULTIPLE}: the "
                     "detection and the prior are fitted on the whole window; smaller where "
                     "that covers the scene with as many windows.",
                     lower_bound=scene.WINDOW_MULTIPLE)
flags.DEFINE_integer("overlap", None,
                     "Pixels shared by neighbouring windows (default: an eighth of the window).")
flags.DEFINE_integer("batch_size", scene.DEFAULT_BATCH_SIZE,
                     "Windows per model call, rounded up to a multiple of the device count "
                     "(more for small windows or accelerators).",
                     lower_bound=1)
flags.DEFINE_enum("compression", "deflate", rasters.COMPRESSIONS, "Compression of the outputs.")
flags.DEFINE_bool("cog", False, "Write Cloud-Optimised GeoTIFFs (with overviews).")
flags.DEFINE_bool("quiet", False, "No progress bar.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  runtime.configure(FLAGS.debug)
  start = time.perf_counter()
  sharding.maybe_initialize_distributed()
  if FLAGS.workdir is not None and FLAGS.weights is not None:
    raise app.UsageError("give --weights or --workdir, not both")
  if FLAGS.window % scene.WINDOW_MULTIPLE:
    raise app.UsageError(f"--window must be a multiple of {scene.WINDOW_MULTIPLE}")
  if FLAGS.method != "plfm":
    if FLAGS.workdir is not None or FLAGS.weights is not None:
      raise app.UsageError(f"--method={FLAGS.method} uses no model: leave out --weights and "
                           "--workdir")
    model = scene.gapfill_tile_model(FLAGS.method, batch_size=FLAGS.batch_size)
  elif FLAGS.workdir is not None:
    model = scene.load_tile_model(FLAGS.workdir, batch_size=FLAGS.batch_size)
  else:
    weights = weight_files.load(FLAGS.weights or weight_files.SHIPPED[0])
    model = scene.tile_model(weights.config, weights.variables, batch_size=FLAGS.batch_size)
  path = lambda name: None if name is None else pathlib.Path(name)
  report = scene.predict_scene(
      scene.SceneInputs(cloudy=path(FLAGS.cloudy), history=tuple(map(path, FLAGS.history)),
                        # A gap-filling method reads no radar.
                        sar=path(FLAGS.sar) if FLAGS.method == "plfm" else None,
                        cloud_mask=path(FLAGS.cloud_mask),
                        mask_format=FLAGS.mask_format, mask_threshold=FLAGS.mask_threshold),
      FLAGS.out, model, window=FLAGS.window, overlap=FLAGS.overlap, composite=FLAGS.composite,
      mask_out=FLAGS.mask_out, masking=inputs.Masking(detect=FLAGS.detect),
      overwrite=FLAGS.overwrite, compression=FLAGS.compression, cog=FLAGS.cog,
      progress=not FLAGS.quiet)
  if jax.process_index() != 0:
    return
  for note in report.notes:
    print(f"input: {note}")
  if FLAGS.method != "plfm":
    unused = "; --sar is not used" if FLAGS.sar else ""
    print(f"restored with the gap-filling method {FLAGS.method} (no network){unused}")
  elif not report.sar:
    print("no --sar: restored from the optical dates alone (the SAR branch and the fusion "
          "head are not used)")
  for date in report.dates:
    print(f"found in {date.name}: cloud or haze {100 * date.cloud:.1f}%, shadow "
          f"{100 * date.shadow:.1f}%, flagged by its mask {100 * date.given:.1f}%")
  if not report.windows:
    print("nothing to restore: the cloudy date is written unchanged")
  elif report.cloud_fraction == 1:
    print("every pixel is restored: the whole date comes from the earlier dates")
  print(f"wrote {FLAGS.out}: {report.height} x {report.width} px, {report.windows} windows run, "
        f"{100 * report.cloud_fraction:.1f}% restored, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  cli.run(main)
