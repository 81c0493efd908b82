"""How the detector's thresholds were chosen: candidates on the validation patches of the sample.

    .venv/bin/python scripts/detection_selection.py [--sample_root=../shared/data/plfm_sample]
        [--validation_patches=3] [--out=FILE.json]

On the held-out validation patches of both zones of the real sample (the highest-numbered
`validation_patches` of each, as `scripts/real_sample_results.py` holds them out; the patches
the cross-season study tests on are never read), every candidate of `candidates()` detects the
evaluation's simulated clouds (`pipeline.transform_record`, the `detected` and
`history_clouded` scenarios) and the prior of `plus` (the robust multi-scale regression) fills
what was found. The score is the cloud-area PSNR in reflectance over the exact footprint of the
clouds, their haze and shadows, so a mask that misses haze pays for it and one that flags too
much pays for the ground it replaces. The choice: the candidate with the highest mean over both
zones and both scenarios if it beats the default by more than NOISE_DB (with 3 patches a zone,
smaller differences are noise), else the default. Prints a Markdown table and the choice; `--out`
keeps the numbers as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import jax
import numpy as np
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # The repository's configs/, as train.py reads them.
from configs.plfm import get_config  # noqa: E402
from plfm_jax import runtime  # noqa: E402
from plfm_jax.data import layout, pipeline, readers  # noqa: E402
from plfm_jax.evaluation import metrics, report  # noqa: E402
from plfm_jax.masks import detect  # noqa: E402
from plfm_jax.models import gapfill  # noqa: E402

FLAGS = flags.FLAGS
SCENARIOS = ("detected", "history_clouded")
# Mean PSNR differences within this many dB are read as no effect (as the study's ablation does).
NOISE_DB = 0.1


def candidates() -> dict[str, detect.DetectionSettings]:
  """The default and, one field at a time, a stricter and a looser value of each threshold."""
  default = detect.DEFAULT
  found = {"default": default}
  for field, values in (("cloud_sigma", (4.0, 8.0)), ("shadow_sigma", (2.0, 4.5)),
                        ("grow_sigma", (2.0, 4.0)), ("buffer", (0, 4)),
                        ("min_blue_share", (0.7, 1.0)), ("max_shadow_ratio", (0.7, 0.9))):
    for value in values:
      found[f"{field} {value}"] = dataclasses.replace(default, **{field: value})
  return found


def validation_records(sample_root: pathlib.Path, held_out: int) -> dict[str, list[dict]]:
  """{zone: records of its `held_out` highest-numbered patches}, as the dataset stores them."""
  scan = layout.scan_dataset(sample_root)
  size = readers.raw_patch_size(scan)
  by_zone: dict[str, list] = {}
  for series in scan.all_series():
    by_zone.setdefault(series.zone, []).append(series)
  records = {}
  for zone, series in sorted(by_zone.items()):
    chosen = sorted(series, key=lambda s: s.patch)[-held_out:]
    records[zone] = [{**readers.read_series(s, size), "zone": zone.encode(), "patch": s.patch,
                      "months": np.array([layout.MONTHS.index(m) + 1 for m in s.months],
                                         np.int32)} for s in chosen]
  return records


@jax.jit
def _prior_psnr(example: dict) -> jax.Array:
  prior = gapfill.matched_multiscale(example["history"][None], example["cloudy"][None],
                                     example["cloud_mask"][None])
  return metrics.standard_metrics(prior, example["target"][None],
                                  example["truth_mask"][None])["psnr_cloud"][0]


def scores(records: dict[str, list[dict]], settings: detect.DetectionSettings
           ) -> dict[str, float]:
  """{"<zone> <scenario>": mean cloud-area PSNR of the prior} under `settings`."""
  data_config = get_config("small,plus").data
  out = {}
  for zone, zone_records in records.items():  # Keys name the metric: the table reads them.
    for scenario in SCENARIOS:
      data_config.scenario = scenario
      values = []
      for record in zone_records:
        # The evaluation's clouds: its seed, the series identity, epoch 0.
        rng = pipeline.sample_rng(0, record)
        example = pipeline.transform_record(record, rng, data_config, train=False,
                                            detection=settings)
        values.append(float(_prior_psnr(example)))
      out[f"psnr_cloud {zone} {scenario}"] = float(np.mean(values))
  return out


def mean(row: dict[str, float]) -> float:
  return float(np.mean(list(row.values())))


def choice(results: dict[str, dict[str, float]]) -> str:
  """The best candidate by mean PSNR if it beats the default by more than NOISE_DB."""
  best = max(results, key=lambda name: mean(results[name]))
  return best if mean(results[best]) > mean(results["default"]) + NOISE_DB else "default"


def markdown(results: dict[str, dict[str, float]]) -> str:
  """Candidates as rows, each zone and scenario's validation PSNR as columns; best in bold."""
  columns = [(key, key.removeprefix("psnr_cloud ") + ": PSNR cloud", 2)
             for key in next(iter(results.values()))]
  rows = {name: {**row, "psnr_cloud mean": mean(row)} for name, row in results.items()}
  return report.markdown_table(rows, {}, [*columns, ("psnr_cloud mean", "mean", 2)])


def main(argv: list[str]) -> None:
  del argv
  runtime.configure(FLAGS.debug)
  records = validation_records(pathlib.Path(FLAGS.sample_root), FLAGS.validation_patches)
  results = {name: scores(records, settings) for name, settings in candidates().items()}
  table = markdown(results)
  chosen = choice(results)
  if FLAGS.out:
    pathlib.Path(FLAGS.out).write_text(json.dumps({"scores": results, "chosen": chosen},
                                                  indent=1) + "\n")
  print(table)
  print(f"\nchosen (highest mean validation PSNR, by more than {NOISE_DB} dB over the "
        f"default): {chosen}")


if __name__ == "__main__":
  from plfm_jax import cli
  flags.DEFINE_string("sample_root", str(REPO.parent / "shared" / "data" / "plfm_sample"),
                      "The real sample's root folder.")
  flags.DEFINE_integer("validation_patches", 3, "Highest-numbered patches of each zone.",
                       lower_bound=1)
  flags.DEFINE_string("out", None, "JSON file for the numbers.")
  cli.run(main)
