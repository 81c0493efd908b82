"""Finds the S1/S2/CM series of a dataset in the authors' layout, from file names alone.

    <root>/sen1/<zone>/image_VV_<n>_<Mon>_patch_<p>.tif
    <root>/sen2/<zone>/image_RGB_<n>_<Mon>_patch_<p>.tif
    <root>/sen2/<zone>/image_CM_<n>_<Mon>_patch_<p>.tif

`<root>` either holds `sen1/` and `sen2/` directly (one `train` split) or the split folders
`training/`, `validation/` and `test/`, each holding `sen1/` and `sen2/`. `<n>` is an export counter
that differs between modalities and months, so files are paired by (zone, month, patch) only.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import re

from plfm_jax.errors import InputError

# Dates per series: three earlier dates and the one to restore (the authors' dataset has four
# months per zone).
SERIES_LENGTH = 4
# The one switch that makes every reader of a raw dataset (`tfds build`, train.py, evaluate.py,
# inspect) leave out series with invalid files, logging each, instead of stopping at the first.
# Only those entry points read it; the functions they call take `skip_invalid`.
SKIP_INVALID_ENV = "PLFM_SKIP_INVALID"

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
SPLIT_FOLDERS = {"training": "train", "validation": "validation", "test": "test"}
MODALITY_FOLDERS = ("sen1", "sen2")
# Which images each modality folder holds; each (zone, month, patch) needs exactly one of each.
FOLDER_KINDS = {"sen1": ("VV",), "sen2": ("RGB", "CM")}

# Records store the patch number as int32.
MAX_PATCH = 2**31 - 1

_MONTH_INDEX = {m: i for i, m in enumerate(MONTHS)}
_TIFF_SUFFIXES = (".tif", ".tiff")
_NAME_PATTERNS = {
    folder: re.compile(
        rf"image_(?P<kind>{'|'.join(kinds)})_(?P<n>\d+)_(?P<month>{'|'.join(MONTHS)})"
        r"_patch_(?P<patch>\d+)\.tiff?", re.IGNORECASE)
    for folder, kinds in FOLDER_KINDS.items()
}


def skip_invalid_requested() -> bool:
  """Whether PLFM_SKIP_INVALID asks to leave out series with invalid files (1/0, true/false)."""
  value = os.environ.get(SKIP_INVALID_ENV, "").strip().lower()
  if value in ("", "0", "false", "no"):
    return False
  if value in ("1", "true", "yes"):
    return True
  raise InputError(SKIP_INVALID_ENV, f"environment variable must be 1 or 0, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Series:
  """One patch of one zone over `len(months)` consecutive months present in the zone."""
  split: str
  zone: str
  patch: int
  months: tuple[str, ...]
  s1: tuple[pathlib.Path, ...]
  rgb: tuple[pathlib.Path, ...]
  cm: tuple[pathlib.Path, ...]

  @property
  def key(self) -> str:
    """A unique, stable name such as `train/zone_9_a/patch_5/Jan-Apr`."""
    return f"{self.split}/{self.zone}/patch_{self.patch}/{self.months[0]}-{self.months[-1]}"


@dataclasses.dataclass
class Scan:
  """The series found under `root`, per split, and what was skipped (only with skip_invalid)."""
  root: pathlib.Path
  splits: dict[str, list[Series]]
  problems: list[str]
  months_per_zone: dict[tuple[str, str], tuple[str, ...]]

  def all_series(self) -> list[Series]:
    """The series of every split, split after split."""
    return [s for series in self.splits.values() for s in series]


class _Problems:
  """Raises on the first problem (strict) or collects `path: problem` lines (skip_invalid)."""

  def __init__(self, skip_invalid: bool):
    self.skip_invalid = skip_invalid
    self.lines: list[str] = []

  def add(self, path: os.PathLike | str, problem: str) -> None:
    error = InputError(path, problem)
    if not self.skip_invalid:
      raise error
    self.lines.append(str(error))


def _month_order(months) -> tuple[str, ...]:
  return tuple(sorted(months, key=_MONTH_INDEX.__getitem__))


def _visible(folder: pathlib.Path, problems: _Problems) -> list[pathlib.Path] | None:
  """The entries of `folder` that are not hidden, sorted; None once reported as unlistable."""
  try:
    entries = list(folder.iterdir())
  except OSError as e:
    problems.add(folder, f"cannot list folder ({e.strerror or type(e).__name__})")
    return None
  # Hidden entries (.DS_Store, ._image_VV_... AppleDouble files, .ipynb_checkpoints) are not data.
  return sorted(p for p in entries if not p.name.startswith("."))


def _is_tiff(path: pathlib.Path) -> bool:
  return path.suffix.lower() in _TIFF_SUFFIXES


def _split_roots(root: pathlib.Path) -> dict[str, pathlib.Path]:
  """Maps split names to the folders holding their sen1/ and sen2/; raises if root is unusable."""
  if not root.exists():
    raise InputError(root, "dataset folder does not exist")
  if not root.is_dir():
    raise InputError(root, "dataset path is not a folder")
  flat = [m for m in MODALITY_FOLDERS if (root / m).is_dir()]
  split_dirs = {SPLIT_FOLDERS[f]: root / f for f in SPLIT_FOLDERS if (root / f).is_dir()}
  if flat and split_dirs:
    raise InputError(root, f"holds both {'/'.join(flat)}/ and split folders "
                     f"({', '.join(p.name for p in split_dirs.values())}); keep one layout")
  if flat:
    if len(flat) < len(MODALITY_FOLDERS):
      [missing] = set(MODALITY_FOLDERS) - set(flat)
      raise InputError(root, f"has {flat[0]}/ but no {missing}/")
    return {"train": root}
  if not split_dirs:
    raise InputError(root, "holds neither sen1/ and sen2/ nor any of the split folders "
                     f"{', '.join(f + '/' for f in SPLIT_FOLDERS)}")
  return split_dirs


def _zone_files(zone_dir: pathlib.Path, folder: str, problems: _Problems
                ) -> dict[tuple[str, str, int], list[pathlib.Path]]:
  """Maps (kind, month, patch) to the files of one modality's zone folder."""
  found = collections.defaultdict(list)
  entries = _visible(zone_dir, problems)
  if entries is None:
    return found
  tiffs = [p for p in entries if p.is_file() and _is_tiff(p)]
  if not tiffs:
    problems.add(zone_dir, "empty zone folder: no .tif files")
  for path in tiffs:
    match = _NAME_PATTERNS[folder].fullmatch(path.name)
    if match is None:
      expected = " or ".join(f"image_{k}_<n>_<Mon>_patch_<p>.tif" for k in FOLDER_KINDS[folder])
      problems.add(path, f"file name does not match {expected} (in {folder}/)")
      continue
    # Case-insensitive matching tolerates `image_rgb_..._jan_...`; store the canonical spellings.
    kind = match["kind"].upper()
    month = match["month"].capitalize()
    patch = int(match["patch"])
    if patch > MAX_PATCH:
      problems.add(path, f"patch number {patch} is too large (at most {MAX_PATCH})")
      continue
    found[(kind, month, patch)].append(path)
  return found


def _zone_folders(modality_dir: pathlib.Path, problems: _Problems
                  ) -> dict[str, pathlib.Path] | None:
  """The zone folders of sen1/ or sen2/ by name (None if unlistable); TIFFs lying there directly
  are misplaced."""
  entries = _visible(modality_dir, problems)
  if entries is None:
    return None
  for path in entries:
    if path.is_file() and _is_tiff(path):
      problems.add(path, f"TIFF file directly in {modality_dir.name}/; "
                   "images belong in zone folders")
  zones = {p.name: p for p in entries if p.is_dir()}
  if not zones:
    problems.add(modality_dir, "empty folder: no zone folders")
  return zones


def _scan_zone(split: str, zone: str, dirs: dict[str, pathlib.Path], series_length: int,
               problems: _Problems) -> tuple[tuple[str, ...], list[Series]]:
  """Returns the months present in the zone and its complete series."""
  per_folder = {folder: _zone_files(path, folder, problems) for folder, path in dirs.items()}
  files = {key: paths for found in per_folder.values() for key, paths in found.items()}
  dir_of_kind = {kind: dirs[folder] for folder in dirs for kind in FOLDER_KINDS[folder]}
  months = _month_order({month for _, month, _ in files})
  if not all(per_folder.values()):
    # The empty folder is reported already; listing every image it lacks would bury that.
    return months, []
  if len(months) < series_length:
    problems.add(dirs["sen2"], f"zone has {len(months)} month(s) ({', '.join(months)}), "
                 f"fewer than the series length {series_length}")
    return months, []

  patches = sorted({patch for _, _, patch in files})
  series = []
  for patch in patches:
    complete = set()
    for month in months:
      ok = True
      for kind, zone_dir in dir_of_kind.items():
        paths = files.get((kind, month, patch), [])
        if not paths:
          problems.add(zone_dir, f"patch {patch} has no {kind} image for {month}")
          ok = False
        elif len(paths) > 1:
          problems.add(zone_dir, f"patch {patch} has {len(paths)} {kind} images for {month}: "
                       f"{', '.join(p.name for p in paths)}")
          ok = False
      if ok:
        complete.add(month)
    for start in range(len(months) - series_length + 1):
      window = months[start:start + series_length]
      if complete.issuperset(window):
        series.append(Series(
            split=split, zone=zone, patch=patch, months=window,
            s1=tuple(files[("VV", m, patch)][0] for m in window),
            rgb=tuple(files[("RGB", m, patch)][0] for m in window),
            cm=tuple(files[("CM", m, patch)][0] for m in window)))
  return months, series


def _scan_split(split: str, split_dir: pathlib.Path, scan: Scan, series_length: int,
                problems: _Problems) -> None:
  entries = _visible(split_dir, problems)
  if entries is None:
    return
  if not entries:
    problems.add(split_dir, "empty split folder: expected sen1/ and sen2/")
    return
  missing = [m for m in MODALITY_FOLDERS if not (split_dir / m).is_dir()]
  if missing:
    problems.add(split_dir, f"split folder has no {' and no '.join(m + '/' for m in missing)}")
    return
  zones = {m: _zone_folders(split_dir / m, problems) for m in MODALITY_FOLDERS}
  if any(z is None for z in zones.values()):
    # Every zone would look missing on the unlistable side; that folder is reported already.
    return
  for zone in sorted(zones["sen1"].keys() | zones["sen2"].keys()):
    lacking = [m for m in MODALITY_FOLDERS if zone not in zones[m]]
    if lacking:
      [have] = set(MODALITY_FOLDERS) - set(lacking)
      problems.add(split_dir / lacking[0] / zone,
                   f"zone folder missing, but {have}/{zone} exists")
      continue
    dirs = {m: zones[m][zone] for m in MODALITY_FOLDERS}
    months, series = _scan_zone(split, zone, dirs, series_length, problems)
    if months:
      scan.months_per_zone[(split, zone)] = months
    scan.splits[split].extend(series)


def scan_dataset(root: str | os.PathLike, *, series_length: int = SERIES_LENGTH,
                 skip_invalid: bool = False) -> Scan:
  """Finds every series of `series_length` consecutive months under `root`, by file names only.

  Strict by default: the first problem raises an InputError naming the file or folder. With
  `skip_invalid`, series touched by a problem are left out and each problem becomes one line of
  `Scan.problems`; a root that is missing or holds no dataset layout still raises.
  """
  if series_length < 1:
    raise ValueError(f"series_length must be at least 1, got {series_length}")
  root = pathlib.Path(root)
  try:
    split_dirs = _split_roots(root)
    problems = _Problems(skip_invalid)
    scan = Scan(root=root, splits={s: [] for s in split_dirs}, problems=problems.lines,
                months_per_zone={})
    for split, split_dir in split_dirs.items():
      _scan_split(split, split_dir, scan, series_length, problems)
      scan.splits[split].sort(key=lambda s: (s.zone, s.patch, _MONTH_INDEX[s.months[0]]))
  except OSError as e:
    # Unlistable folders are reported where they are listed; what remains is a folder whose
    # entries cannot even be looked at (no search permission): nothing in it can be read.
    raise InputError(e.filename or root, f"cannot read ({e.strerror or type(e).__name__})") from e
  return scan
