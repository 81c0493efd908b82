"""De-clouds a Sentinel-2 scene with a trained PLFM model (docs/predict.md).

    python predict.py --cloudy S2_t3.tif --history S2_t0.tif,S2_t1.tif,S2_t2.tif
        --sar S1_t3.tif [--cloud_mask QA60.tif] --out OUT.tif [--weights NAME|FILE | --workdir DIR]

Without --weights or --workdir the shipped weights (docs/weights.md) are used.
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
from plfm_jax import weights as weights_lib
from plfm_jax.inference import cloud_mask, geotiff, scene

FLAGS = flags.FLAGS
flags.DEFINE_string("weights", None,
                    "Weights file, or the name of shipped weights "
                    f"({', '.join(weights_lib.SHIPPED)}); default {weights_lib.SHIPPED[0]} "
                    "unless --workdir is given.")
flags.DEFINE_string("workdir", None, "Training workdir: use its best checkpoints instead.")
flags.DEFINE_string("cloudy", None,
                    "Sentinel-2 R, G, B (uint16, reflectance x 10000) of the cloudy date: a "
                    "3-band GeoTIFF or a folder of per-band ones (<date>.B4.tif, ...).",
                    required=True)
flags.DEFINE_list("history", None,
                  "Sentinel-2 R, G, B of the earlier dates, oldest first, comma-separated "
                  "(GeoTIFFs or folders, as --cloudy).",
                  required=True)
flags.DEFINE_string("sar", None, "Sentinel-1 VV backscatter in dB of the cloudy date.",
                    required=True)
flags.DEFINE_string("cloud_mask", None,
                    "QA60 band of the cloudy date; default: the QA60 file of a --cloudy folder, "
                    "else a brightness/whiteness heuristic.")
flags.DEFINE_float("cloud_threshold", cloud_mask.DEFAULT_BRIGHTNESS,
                   "Heuristic: minimum mean R, G, B reflectance of a cloud.")
flags.DEFINE_string("out", None, "Output GeoTIFF.", required=True)
flags.DEFINE_string("mask_out", None,
                    "Also write the cloud mask used (uint8, 1 = restored) to this GeoTIFF.")
flags.DEFINE_bool("composite", True,
                  "Keep the cloudy input's clear pixels; --nocomposite writes the prediction "
                  "everywhere.")
flags.DEFINE_bool("overwrite", False, "Replace existing output files.")
flags.DEFINE_integer("overlap", None,
                     "Pixels shared by neighbouring windows (default: a quarter of the model's "
                     "window).")
flags.DEFINE_integer("batch_size", 8,
                     "Windows per model call, rounded up to a multiple of the device count.",
                     lower_bound=1)
flags.DEFINE_enum("compression", "zlib", geotiff.COMPRESSIONS, "Compression of the outputs.")
flags.DEFINE_bool("quiet", False, "No progress bar.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  runtime.configure(FLAGS.debug)
  start = time.perf_counter()
  sharding.maybe_initialize_distributed()
  if FLAGS.workdir is not None and FLAGS.weights is not None:
    raise app.UsageError("give --weights or --workdir, not both")
  if FLAGS.workdir is not None:
    model = scene.load_tile_model(FLAGS.workdir, batch_size=FLAGS.batch_size)
  else:
    weights = weights_lib.load(FLAGS.weights or weights_lib.SHIPPED[0])
    model = scene.tile_model(weights.config, weights.variables, batch_size=FLAGS.batch_size)
  if FLAGS.overlap is not None and not 0 <= FLAGS.overlap < model.tile_size:
    raise app.UsageError(f"--overlap must be in [0, {model.tile_size}) for this model's "
                         f"{model.tile_size} px windows")
  path = lambda name: None if name is None else pathlib.Path(name)
  report = scene.predict_scene(
      scene.SceneInputs(cloudy=path(FLAGS.cloudy), history=tuple(map(path, FLAGS.history)),
                        sar=path(FLAGS.sar), qa60=path(FLAGS.cloud_mask)),
      FLAGS.out, model, overlap=FLAGS.overlap, composite=FLAGS.composite,
      mask_out=FLAGS.mask_out, brightness=FLAGS.cloud_threshold, overwrite=FLAGS.overwrite,
      compression=FLAGS.compression, progress=not FLAGS.quiet)
  if jax.process_index() != 0:
    return
  for note in report.notes:
    print(f"input: {note}")
  if not report.windows:
    print("no pixel is under clouds in the cloud mask: the cloudy date is written unchanged")
  elif report.cloud_fraction == 1:
    print("every pixel is under clouds: the whole date is restored from the earlier dates and "
          "the SAR")
  print(f"wrote {FLAGS.out}: {report.height} x {report.width} px, {report.windows} windows, "
        f"{100 * report.cloud_fraction:.1f}% under clouds, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  cli.run(main)
