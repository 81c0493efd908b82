"""Writers of an evaluation's results: per-sample CSV, summary JSON and a Markdown table.

Every file is written under a temporary name and renamed, so a reader never sees half a file.
Non-finite numbers: the CSV holds Python's spellings (`nan`, `inf`, which `float()` reads back);
JSON has no such numbers, so the summary writes NaN (no sample had the region) as `null` and an
infinite value (a PSNR over pixels copied exactly, e.g. the clear area of the cloudy input) as
the string `"inf"`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pathlib
from typing import Any, Mapping, Sequence

# Metrics where a larger value is better; for all others (errors, angles, distances) smaller is.
_HIGHER_IS_BETTER = ("psnr", "ssim", "uqi", "cc")

# Columns of the Markdown table: (metric, header, decimals).
KEY_COLUMNS = (
    ("psnr", "PSNR", 2),
    ("ssim", "SSIM", 4),
    ("sam", "SAM (deg)", 2),
    ("rmse", "RMSE", 4),
    ("mae", "MAE", 4),
    ("psnr_cloud", "PSNR cloud", 2),
    ("ssim_cloud", "SSIM cloud", 4),
    ("shifted_psnr", "PSNR shifted", 2),
    ("shifted_ssim", "SSIM shifted", 4),
)


def higher_is_better(metric: str) -> bool:
  """Whether larger values of `metric` (e.g. `psnr_cloud`, `shifted_ssim`) are better."""
  base = metric.removeprefix("shifted_").split("_")[0]
  return base in _HIGHER_IS_BETTER


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
  """Writes `text` to `path` through a temporary file and a rename."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)
  return path


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
              columns: Sequence[str]) -> pathlib.Path:
  """One line per row with exactly `columns`, in that order (a missing value is left empty)."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(columns), restval="", extrasaction="raise",
                          lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  return write_text(path, buffer.getvalue())


def json_safe(value: Any) -> Any:
  """`value` with NaN as None and +-inf as "inf" / "-inf", recursively; tuples become lists."""
  if isinstance(value, float):
    if math.isnan(value):
      return None
    if math.isinf(value):
      return "inf" if value > 0 else "-inf"
    return value
  if isinstance(value, Mapping):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  return value


def write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> pathlib.Path:
  """Strict JSON (see the module docstring for non-finite numbers), indented for people."""
  return write_text(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def read_summary(path: str | os.PathLike) -> dict[str, Any]:
  """A summary.json with its metric means as floats again (null -> NaN, "inf" -> inf)."""
  summary = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
  summary["metrics"] = {
      scenario: {method: {k: math.nan if v is None else float(v) for k, v in row.items()}
                 for method, row in methods.items()}
      for scenario, methods in summary["metrics"].items()}
  return summary


def _format(value: float, decimals: int) -> str:
  if math.isnan(value):
    return "n/a"
  if math.isinf(value):
    return "inf" if value > 0 else "-inf"
  return f"{value:.{decimals}f}"


def markdown_table(means: Mapping[str, Mapping[str, float]], labels: Mapping[str, str],
                   columns: Sequence[tuple[str, str, int]] = KEY_COLUMNS) -> str:
  """A table of methods (rows, in `means` order) by metrics, the best of each column in bold.

  Args:
    means: {method: {metric: mean}}; NaN shows as n/a and is never best.
    labels: display name of each method.
    columns: (metric, header, decimals); the header says whether higher or lower is better.
  """
  headers = ["method"] + [f"{h} {'↑' if higher_is_better(m) else '↓'}" for m, h, _ in columns]
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" + "---:|" * len(columns)]
  best = {}
  for metric, _, _ in columns:
    values = [means[method].get(metric, math.nan) for method in means]
    values = [v for v in values if not math.isnan(v)]
    if values:
      best[metric] = max(values) if higher_is_better(metric) else min(values)
  for method, row in means.items():
    cells = [labels.get(method, method)]
    for metric, _, decimals in columns:
      value = row.get(metric, math.nan)
      text = _format(value, decimals)
      cells.append(f"**{text}**" if metric in best and value == best[metric] else text)
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


# What each scenario of an evaluation gives the methods, for the report.
SCENARIO_TITLES = {
    "detected": "the tool's own detection (no mask given)",
    "exact": "the exact mask (the upper bound)",
    "qa60": "a QA60-like mask of the opaque cores, with the tool's detection",
    "history_clouded": "no mask given, the latest earlier date clouded too",
}


def summary_markdown(summary: Mapping[str, Any], labels: Mapping[str, str]) -> str:
  """The human-readable report of an evaluation summary (as written to summary.json)."""
  clouds = summary["clouds"]
  timing = summary["timing"]
  low, high = clouds["coverage_range"]
  parts = [
      f"# Evaluation: split `{summary['split']}`\n",
      f"- workdir: `{summary['workdir']}` (config variant `{summary['config_variant']}`)",
      f"- samples: {summary['num_samples']} at {summary['image_size']} px",
      f"- clouds: simulated with seed {clouds['seed']}, coverage (clouds, haze fading out "
      f"over a margin of {clouds['haze_margin']} and shadows) drawn from {low:.0%}-{high:.0%} "
      f"per sample, union with QA60 cloud flags; measured mean coverage "
      f"{clouds['mean_coverage']:.1%}; every method sees the same clouds",
      f"- time: {timing['total_seconds']:.1f} s on {timing['device']}\n",
      "Means over samples (a sample without cloud pixels is left out of the cloud-area means). "
      "PSNR in dB, SAM in degrees; `cloud` = every pixel the clouds, their haze and shadows "
      "changed, whatever mask the methods were given; `shifted` = the PLFM reference protocol "
      f"(crop {summary['shifted_protocol']['border']} px, best of shifts up to "
      f"{summary['shifted_protocol']['max_shift']} px). Best per column in bold. Every metric, "
      "also over clear pixels, per sample: `per_sample.csv`; means: `summary.json`.\n",
  ]
  masks = summary["masks"]
  for scenario in summary["scenarios"]:
    parts.append(f"## Scenario `{scenario}`: {SCENARIO_TITLES.get(scenario, scenario)}\n")
    parts.append(f"The mask given covers {masks['mask_coverage'][scenario]:.1%} of the pixels, "
                 f"{masks['mask_recall'][scenario]:.1%} of the exact mask and "
                 f"{masks['mask_false_alarm'][scenario]:.2%} of the pixels outside it.\n")
    parts.append(markdown_table(summary["metrics"][scenario], labels))
    calibration = summary.get("temporal_calibration", {}).get(scenario)
    if calibration is not None:
      parts.append(f"The temporal branch's correction was weighted by {calibration:.2f} on "
                   "average (1: applied whole, 0: turned off where it did not fit the cloudy "
                   "dates' clear pixels).\n")
  fid = summary["fid"]
  if fid["computed"]:
    parts.append("FID (lower is better): " + ", ".join(
        f"{labels.get(m, m)} {v:.2f}" for m, v in fid["values"].items()) + "\n")
  else:
    parts.append(f"FID: not computed ({fid['reason']}).\n")
  return "\n".join(parts)
