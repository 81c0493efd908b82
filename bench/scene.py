"""Scene throughput of `predict.py` with the shipped weights: `python -m bench.scene`.

    .venv/bin/python -m bench.scene [--size=2048] [--dates=3] [--coverage=0.3] [--out=FILE.json]
        [--previous=PATH]

Writes a synthetic georeferenced scene (`--size` px square, `--dates` earlier dates, the last
date under simulated clouds, haze and shadows covering `--coverage`, S1 VV), then runs
`scene.predict_scene` on it, as `predict.py` does, once per layout of LAYOUTS, each in its own
worker process (its own compilation, its own peak memory), one after the other in one run: the
default (windows of at most 512 px, one per model call, the detection and the prior fitted per
window) and the previous release's layout (64 px windows overlapping by 16, the model's crop
size, eight per call), whose ratio to the default is the speed-up measured side by side. For
each: wall seconds (after one warm-up run on the same scene, so compilation is not counted),
pixels per second, the windows run, the time a 10980 x 10980 Sentinel-2 granule would take at
that rate, the worker's peak resident memory, and what it restored: the cloud-area PSNR of the
output against the scene's cloud-free truth, in reflectance, over every pixel the clouds, their
haze and shadows changed (the footprint the study scores, `docs/results.md`). Prints a table;
`--out` (default bench/results/<machine>-scene.json) keeps the JSON.

`--previous=PATH` also times, one after the other on the same scene, the whole `predict.py`
command of today's repository (with the shipped weights, and with `--method=matched_multiscale`:
their prior alone, no network) and of PATH, a checkout of an earlier release (`git worktree add
PATH <commit>`; run with this interpreter and PATH first on PYTHONPATH, so its dependencies
must be today's): wall seconds a user waits, start-up and compilation included, the faster of
two runs each, and their ratio, the speed-up against that release; and each output's
cloud-area PSNR.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import flags
import numpy as np
import rasterio
from rasterio.transform import from_origin

from bench import measure

FLAGS = flags.FLAGS
GRANULE = 10980
# (name, largest window, overlap, windows per call): the default and the previous release's
# layout.
LAYOUTS = (("default", 512, 64, 1), ("64 px windows (previous layout)", 64, 16, 8))
# predict.py with the shipped model's prior alone, no network.
PRIOR_ALONE = ("--method=matched_multiscale",)


def write_scene(folder: pathlib.Path, size: int, dates: int, coverage: float) -> dict[str, Any]:
  """The scene's GeoTIFFs (UTM 32N, 10 m), as predict.py's flags."""
  from plfm_jax.data.clouds import simulate_clouds
  from plfm_jax.data.normalize import s2_reflectance
  from plfm_jax.data.synthetic import synthesize_zone
  rng = np.random.default_rng(0)
  months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug")[:dates + 1]
  s2, s1 = next(synthesize_zone(rng, 1, image_size=size, months=months))
  truth = s2_reflectance(s2[-1])
  cloudy, footprint, _ = simulate_clouds(truth, rng, coverage=coverage, haze_margin=0.1)
  np.save(folder / "truth.npy", truth.astype(np.float32))
  np.save(folder / "footprint.npy", np.asarray(footprint, bool))
  profile = dict(driver="GTiff", height=size, width=size, crs="EPSG:32632",
                 transform=from_origin(399960.0, 5000040.0, 10.0, 10.0), tiled=True)

  def write(name: str, image: np.ndarray) -> str:
    image = image if image.ndim == 3 else image[..., None]
    path = folder / name
    with rasterio.open(path, "w", count=image.shape[-1], dtype=image.dtype, **profile) as dst:
      dst.write(np.moveaxis(image, -1, 0))
    return str(path)

  return {"truth": str(folder / "truth.npy"), "footprint": str(folder / "footprint.npy"),
          "cloudy": write("cloudy.tif", np.rint(cloudy * 10000).astype(np.uint16)),
          "history": [write(f"date_{t}.tif", s2[t]) for t in range(dates)],
          "sar": write("vv.tif", s1[-1].astype(np.float32))}


def cloud_psnr(output: pathlib.Path, truth: str, footprint: str) -> float:
  """PSNR (dB, data range 1) of an output GeoTIFF against the truth in reflectance over the
  footprint the clouds, their haze and shadows changed."""
  from plfm_jax.data.normalize import REFLECTANCE_SCALE
  from plfm_jax.evaluation import metrics
  with rasterio.open(output) as src:
    restored = np.moveaxis(src.read(), 0, -1).astype(np.float32) / REFLECTANCE_SCALE
  return float(metrics.psnr(restored[None], np.load(truth)[None], np.load(footprint)[None])[0])


def run_layout(spec: dict[str, Any]) -> dict[str, Any]:
  """Worker: predict_scene with the shipped weights, a warm-up run and a timed one."""
  from plfm_jax import runtime
  runtime.configure(False)
  from plfm_jax import weight_files
  from plfm_jax.inference import scene
  shipped = weight_files.load(weight_files.SHIPPED[0])
  model = scene.tile_model(shipped.config, shipped.variables, batch_size=spec["batch_size"])
  inputs = scene.SceneInputs(cloudy=pathlib.Path(spec["cloudy"]),
                             history=tuple(map(pathlib.Path, spec["history"])),
                             sar=pathlib.Path(spec["sar"]))
  out = pathlib.Path(spec["folder"]) / f"restored_{spec['window']}.tif"
  run = lambda: scene.predict_scene(inputs, out, model, window=spec["window"],
                                    overlap=spec["overlap"], overwrite=True, progress=False)
  run()
  started = time.perf_counter()
  report = run()
  seconds = time.perf_counter() - started
  pixels = report.height * report.width
  return {"seconds": seconds, "pixels_per_second": pixels / seconds, "windows": report.windows,
          "restored_fraction": report.cloud_fraction,
          "psnr_cloud": cloud_psnr(out, spec["truth"], spec["footprint"]),
          "granule_minutes": GRANULE**2 / (pixels / seconds) / 60,
          "peak_rss_mib": measure.peak_rss_mib()}


def command_seconds(repo: pathlib.Path, scene_files: dict[str, Any], out: pathlib.Path,
                    extra: tuple[str, ...] = (), runs: int = 2) -> float:
  """Wall seconds of `repo`'s predict.py de-clouding the scene into `out` (start-up and
  compilation included) with the `extra` flags, the fastest of `runs`."""
  command = [sys.executable, str(repo / "predict.py"), "--cloudy", scene_files["cloudy"],
             "--history", ",".join(scene_files["history"]), "--sar", scene_files["sar"],
             "--out", str(out), "--overwrite", "--quiet", *extra]
  env = {**os.environ, "PYTHONPATH": str(repo)}
  seconds = []
  for _ in range(runs):
    started = time.perf_counter()
    subprocess.run(command, cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds.append(time.perf_counter() - started)
  return min(seconds)


def _commit(repo: pathlib.Path) -> str:
  # "-dirty" when the checkout has uncommitted changes: the figures are not that commit's.
  found = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty"],
                         capture_output=True, text=True)
  return found.stdout.strip() or "unknown"


def compare_commands(previous: pathlib.Path, scene_files: dict[str, Any],
                     folder: pathlib.Path) -> dict[str, Any]:
  """Today's predict.py (with the shipped weights, and with the prior alone) and the `previous`
  release's on the same scene, one after the other."""
  today = pathlib.Path(measure.REPO_ROOT)
  result = {}
  for name, repo, extra in (("previous", previous, ()), ("today", today, ()),
                            ("today_prior_alone", today, PRIOR_ALONE)):
    commit = _commit(repo)
    measure.log(f"{' '.join(['predict.py', *extra])} of {repo} (commit {commit})")
    out = folder / f"{name}.tif"
    result[name] = {"repo": str(repo), "commit": commit, "flags": list(extra),
                    "seconds": command_seconds(repo, scene_files, out, extra),
                    "psnr_cloud": cloud_psnr(out, scene_files["truth"],
                                             scene_files["footprint"])}
  result["speedup"] = result["previous"]["seconds"] / result["today"]["seconds"]
  result["speedup_prior_alone"] = (result["previous"]["seconds"]
                                   / result["today_prior_alone"]["seconds"])
  return result


def main(argv) -> None:
  del argv
  started = time.perf_counter()
  results = []
  with tempfile.TemporaryDirectory(prefix="plfm_bench_scene_") as tmp:
    folder = pathlib.Path(tmp)
    measure.log(f"writing a {FLAGS.size} x {FLAGS.size} px scene, {FLAGS.dates} earlier dates")
    scene_files = write_scene(folder, FLAGS.size, FLAGS.dates, FLAGS.coverage)
    for name, window, overlap, batch_size in LAYOUTS:
      measure.log(f"{name}: window {window}, overlap {overlap}, batch {batch_size}")
      spec = {"job": "layout", **scene_files, "folder": tmp, "window": window,
              "overlap": overlap, "batch_size": batch_size}
      results.append({"layout": name, "window": window, "overlap": overlap,
                      "batch_size": batch_size, **measure.run_job("bench.scene", spec)})
    commands = None
    if FLAGS.previous:
      commands = compare_commands(pathlib.Path(FLAGS.previous).resolve(), scene_files, folder)
  default = results[0]
  for row in results:
    row["default_speedup"] = row["seconds"] / default["seconds"]
  result = {"machine": measure.machine_info(), "load_average": measure.load_average(),
            "scene": {"size": FLAGS.size, "earlier_dates": FLAGS.dates,
                      "coverage": FLAGS.coverage, "sar": True},
            "weights": "plus_sample (shipped)", "layouts": results, "commands": commands,
            "total_seconds": time.perf_counter() - started}
  out = pathlib.Path(FLAGS.out or pathlib.Path(measure.REPO_ROOT) / "bench" / "results"
                     / f"{measure.machine_name()}-scene.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1) + "\n")
  print(f"| layout | windows run | seconds | Mpx/s | granule (min) | peak RSS (MiB) | "
        f"default's speed-up | PSNR cloud (dB) |\n|---|---:|---:|---:|---:|---:|---:|---:|")
  for row in results:
    print(f"| {row['layout']} | {row['windows']} | {row['seconds']:.1f} | "
          f"{row['pixels_per_second'] / 1e6:.3f} | {row['granule_minutes']:.0f} | "
          f"{row['peak_rss_mib']:.0f} | {row['default_speedup']:.2f}x | "
          f"{row['psnr_cloud']:.2f} |")
  if commands:
    print(f"\npredict.py, whole command (start-up and compilation included): today "
          f"{commands['today']['seconds']:.1f} s, the previous release (commit "
          f"{commands['previous']['commit']}) {commands['previous']['seconds']:.1f} s: "
          f"{commands['speedup']:.2f}x; PSNR cloud {commands['today']['psnr_cloud']:.2f} dB "
          f"against {commands['previous']['psnr_cloud']:.2f} dB\n"
          f"predict.py {' '.join(PRIOR_ALONE)} (the prior alone, no network): "
          f"{commands['today_prior_alone']['seconds']:.1f} s, "
          f"{commands['speedup_prior_alone']:.2f}x; PSNR cloud "
          f"{commands['today_prior_alone']['psnr_cloud']:.2f} dB")
  print(f"wrote {out}")


if __name__ == "__main__":
  import sys
  if "--spec" in " ".join(sys.argv):
    measure.job_main({"layout": run_layout})
  else:
    from plfm_jax import cli
    flags.DEFINE_integer("size", 2048, "Scene side in pixels.", lower_bound=64)
    flags.DEFINE_integer("dates", 3, "Earlier dates.", lower_bound=1, upper_bound=7)
    flags.DEFINE_float("coverage", 0.3, "Share of the cloudy date under clouds, haze, shadows.")
    flags.DEFINE_string("out", None, "JSON results; default bench/results/<machine>-scene.json.")
    flags.DEFINE_string("previous", None, "A checkout of an earlier release: its predict.py and "
                        "today's are timed side by side on the scene.")
    cli.run(main)
