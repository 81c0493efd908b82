"""Reports what a dataset root holds: series per split, months per zone and any problems.

    python -m plfm_jax.data.inspect ROOT [--image_size=256] [--skip_invalid] [--novalidate]

ROOT holds sen1/ and sen2/, or training/, validation/ and test/ with them; every image is checked
unless --novalidate.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags

from plfm_jax.data.layout import Scan, scan_dataset
from plfm_jax.data.readers import validate_scan

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


def inspect(root: str | os.PathLike, *, image_size: int = 256, skip_invalid: bool = False,
            validate: bool = True) -> str:
  """Scans (and validates, unless `validate` is False) the dataset at `root`: the report."""
  scan = scan_dataset(root, skip_invalid=skip_invalid)
  if validate:
    scan = validate_scan(scan, image_size, skip_invalid=skip_invalid)
  return format_report(scan, image_size if validate else None)


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError("give one dataset root: python -m plfm_jax.data.inspect ROOT")
  print(inspect(argv[1], image_size=FLAGS.image_size, skip_invalid=FLAGS.skip_invalid,
                validate=FLAGS.validate))


if __name__ == "__main__":
  from plfm_jax import cli
  flags.DEFINE_integer("image_size", 256, "Expected image height and width in pixels.")
  flags.DEFINE_bool("skip_invalid", False,
                    "List problems and skip the series they affect instead of stopping.")
  flags.DEFINE_bool("validate", True, "Read every image; --novalidate checks file names only.")
  cli.run(main)
