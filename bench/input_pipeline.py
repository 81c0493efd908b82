"""Input-pipeline worker of the benchmark: training samples per second through grain.

Builds `plfm_series` (array_record) with `tfds_builders.plfm_series.build.ensure_built` from the real
sample when present (256 px) or from a synthetic dataset (--quick), then draws training batches
from `plfm_jax.data.pipeline.make_iterator(train=True)`: random crops, flips, normalisation and
simulated clouds, with the config's read threads and no worker processes. The CPU time the
process spent while drawing gives the cores used, and so samples per second per core.

Run by `bench/run.py` as `python -m bench.input_pipeline --spec JSON --out FILE`; job "pipeline".
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import time
from typing import Any

from bench import measure
from plfm_jax import runtime
from plfm_jax.data import pipeline
from plfm_jax.data.synthetic import write_synthetic_dataset
from tfds_builders.plfm_series.build import ensure_built

# The real sample (authors' layout, 256 px); tests/conftest.py looks in the same place.
SAMPLE_ROOT = pathlib.Path(os.environ.get(
    "PLFM_SAMPLE_ROOT", pathlib.Path(measure.REPO_ROOT).parent / "shared" / "data" / "plfm_sample"))
QUICK_SERIES = 4


def _build(config: Any, quick: bool, data_dir: pathlib.Path, scratch: pathlib.Path) -> str:
  """Builds the dataset into `data_dir` (reused when built) and says what it was built from."""
  if not quick and (SAMPLE_ROOT / "sen2").is_dir():
    raw, source = SAMPLE_ROOT, f"real sample {SAMPLE_ROOT}"
  else:
    raw = write_synthetic_dataset(scratch / "raw", series_per_split={"training": QUICK_SERIES},
                                  image_size=config.data.crop_size, flat=True)
    source = f"synthetic, {QUICK_SERIES} series"
  measure.log(f"input pipeline: building plfm_series from {source} (if not built)")
  ensure_built(data_dir, manual_dir=raw)
  return source


def samples_per_second(spec: dict[str, Any]) -> dict[str, Any]:
  """Training samples per second after `warmup` batches, `repeats` rounds of `batches` batches."""
  config = measure.bench_config(spec["quick"])
  with tempfile.TemporaryDirectory(prefix="plfm_bench_data_") as scratch:
    data_dir = pathlib.Path(spec["data_dir"] or scratch) / "tfds"
    source = _build(config, spec["quick"], data_dir, pathlib.Path(scratch))
    data_config = {**config.data.to_dict(), "tfds_dir": str(data_dir), "worker_count": 0}
    batch_size = spec["batch"]
    iterator = pipeline.make_iterator(data_config, split="train", global_batch_size=batch_size,
                                      train=True, seed=0, shard_index=0, shard_count=1)

    def draw() -> None:
      for _ in range(spec["batches"]):
        next(iterator)

    for _ in range(spec["warmup"]):
      draw()
    cpu_start, start = measure.cpu_seconds(), time.perf_counter()
    times = measure.time_repeats(draw, warmup=0, repeats=spec["repeats"])
    cores_used = (measure.cpu_seconds() - cpu_start) / (time.perf_counter() - start)
  rates = [spec["batches"] * batch_size / t for t in times]
  median = measure.stats(rates)["median"]
  return {"source": source, "image_size": config.data.crop_size, "batch": batch_size,
          "read_threads": data_config["read_threads"], "worker_count": 0,
          "samples_per_second": measure.stats(rates), "cores_used": cores_used,
          "samples_per_second_per_core": median / max(cores_used, 1e-9),
          "peak_rss_mib": measure.peak_rss_mib()}


if __name__ == "__main__":
  runtime.configure()
  measure.job_main({"pipeline": samples_per_second})
