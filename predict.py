"""De-clouds a Sentinel-2 scene with a trained PLFM model (docs/predict.md).

python predict.py --workdir DIR --cloudy S2_t3.tif --history S2_t0.tif S2_t1.tif S2_t2.tif
    --sar S1_t3.tif [--cloud-mask QA60.tif] --out OUT.tif
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import Sequence

from plfm_jax import runtime
from plfm_jax.errors import exit_on_input_error
from plfm_jax.inference import cloud_mask, geotiff, scene


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python predict.py", description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", type=pathlib.Path, required=True,
                      help="training workdir holding the model's best checkpoints")
  parser.add_argument("--cloudy", type=pathlib.Path, required=True,
                      help="Sentinel-2 R, G, B (uint16, reflectance x 10000) of the cloudy date")
  parser.add_argument("--history", type=pathlib.Path, nargs="+", required=True,
                      help="Sentinel-2 R, G, B of the earlier dates, oldest first")
  parser.add_argument("--sar", type=pathlib.Path, required=True,
                      help="Sentinel-1 VV backscatter in dB of the cloudy date")
  parser.add_argument("--cloud-mask", type=pathlib.Path,
                      help="QA60 band of the cloudy date; default: brightness/whiteness heuristic")
  parser.add_argument("--cloud-threshold", type=float, default=cloud_mask.DEFAULT_BRIGHTNESS,
                      help="heuristic: minimum mean R, G, B reflectance of a cloud "
                           "(default %(default)s)")
  parser.add_argument("--out", type=pathlib.Path, required=True, help="output GeoTIFF")
  parser.add_argument("--mask-out", type=pathlib.Path,
                      help="also write the cloud mask used (uint8, 1 = restored) to this GeoTIFF")
  parser.add_argument("--no-composite", dest="composite", action="store_false",
                      help="write the prediction everywhere, not only under clouds")
  parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
  parser.add_argument("--overlap", type=int,
                      help="pixels shared by neighbouring windows (default: a quarter of the "
                           "model's window)")
  parser.add_argument("--batch-size", type=int, default=8,
                      help="windows per model call, rounded up to a multiple of the device count")
  parser.add_argument("--compression", choices=geotiff.COMPRESSIONS, default="zlib")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")
  parser.add_argument("--debug", action="store_true",
                      help="show tracebacks for input errors and library logs")
  args = parser.parse_args(argv)
  if args.batch_size < 1:
    parser.error("--batch-size must be positive")
  args.parser = parser
  return args


def main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  runtime.configure(args.debug)
  start = time.perf_counter()
  with exit_on_input_error(args.debug):
    model = scene.load_tile_model(args.workdir, batch_size=args.batch_size)
    if args.overlap is not None and not 0 <= args.overlap < model.tile_size:
      args.parser.error(f"--overlap must be in [0, {model.tile_size}) for this model's "
                        f"{model.tile_size} px windows")
    report = scene.predict_scene(
        scene.SceneInputs(cloudy=args.cloudy, history=tuple(args.history), sar=args.sar,
                          qa60=args.cloud_mask),
        args.out, model, overlap=args.overlap, composite=args.composite, mask_out=args.mask_out,
        brightness=args.cloud_threshold, overwrite=args.overwrite, compression=args.compression,
        progress=not args.quiet)
  print(f"wrote {args.out}: {report.height} x {report.width} px, {report.windows} windows, "
        f"{100 * report.cloud_fraction:.1f}% under clouds, {time.perf_counter() - start:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
