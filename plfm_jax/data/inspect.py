"""Reports what a dataset root holds: series per split, months per zone and any problems.

    [PLFM_SKIP_INVALID=1] python -m plfm_jax.data.inspect ROOT [--novalidate]

ROOT holds sen1/ and sen2/, or training/, validation/ and test/ with them; every image is checked
(at the size of the first RGB image, as `tfds build` does) unless --novalidate. The first problem
stops the report, as it would stop a build; with PLFM_SKIP_INVALID=1 every problem is listed and
the series they affect are left out, as a build would leave them out.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags

from plfm_jax.data.layout import Scan, scan_dataset, skip_invalid_requested
from plfm_jax.data.readers import raw_patch_size, validate_scan

FLAGS = flags.FLAGS


def format_report(scan: Scan, validated_size: int | None) -> str:
  """The text report of `scan`; `validated_size` is the checked image size, None if unchecked."""
  lines = [f"dataset: {scan.root}"]
  for split, series in scan.splits.items():
    lines.append(f"{split}: {len(series)} series")
    for (zone_split, zone), months in sorted(scan.months_per_zone.items()):
      if zone_split == split:
        count = sum(s.zone == zone for s in series)
        lines.append(f"  {zone}: {' '.join(months)} ({count} series)")
  if scan.problems:
    lines.append(f"problems ({len(scan.problems)}, affected series skipped):")
    lines.extend(f"  {p}" for p in scan.problems)
  per_split = ", ".join(f"{split} {len(s)}" for split, s in scan.splits.items())
  checked = (f"pixels checked at {validated_size} x {validated_size}" if validated_size
             else "pixels not checked")
  lines.append(f"summary: {len(scan.all_series())} series ({per_split}), "
               f"{len(scan.problems)} problem(s), {checked}")
  return "\n".join(lines)


def inspect(root: str | os.PathLike, *, validate: bool = True, skip_invalid: bool = False) -> str:
  """Scans (and validates, unless `validate` is False) the dataset at `root`: the report.

  `skip_invalid` lists every problem and leaves out the series they affect, instead of stopping
  at the first.
  """
  scan = scan_dataset(root, skip_invalid=skip_invalid)
  if not validate:
    return format_report(scan, None)
  size = raw_patch_size(scan)
  return format_report(validate_scan(scan, size, skip_invalid=skip_invalid), size)


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError("give one dataset root: python -m plfm_jax.data.inspect ROOT")
  print(inspect(argv[1], validate=FLAGS.validate, skip_invalid=skip_invalid_requested()))


if __name__ == "__main__":
  from plfm_jax import cli
  flags.DEFINE_bool("validate", True, "Read every image; --novalidate checks file names only.")
  cli.run(main)
