"""Reports what a dataset root holds: series per split, months per zone and any problems.

    python -m plfm_jax.data.inspect ROOT [--image-size 256] [--skip-invalid] [--no-validate]
"""

from __future__ import annotations

import argparse
from typing import Sequence

from plfm_jax.data.layout import Scan, scan_dataset
from plfm_jax.data.readers import validate_scan
from plfm_jax.errors import run_cli


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m plfm_jax.data.inspect",
      description="Scan a PLFM dataset root (sen1/, sen2/ or training/, validation/, test/) and "
      "check every image.")
  parser.add_argument("root", help="dataset root folder")
  parser.add_argument("--image-size", type=int, default=256,
                      help="expected image height and width in pixels (default: %(default)s)")
  parser.add_argument("--skip-invalid", action="store_true",
                      help="list problems and skip the series they affect instead of stopping")
  parser.add_argument("--no-validate", action="store_true",
                      help="check file names only, without reading pixels")
  parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
  return parser


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


def main(argv: Sequence[str]) -> int:
  """Scans (and by default validates) the dataset named on the command line and prints a report."""
  args = _parser().parse_args(argv)
  scan = scan_dataset(args.root, skip_invalid=args.skip_invalid)
  if not args.no_validate:
    scan = validate_scan(scan, args.image_size, skip_invalid=args.skip_invalid)
  print(format_report(scan, None if args.no_validate else args.image_size))
  return 0


if __name__ == "__main__":
  run_cli(main)
