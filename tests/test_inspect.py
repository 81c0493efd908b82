"""The inspect command line, run as users run it: `python -m plfm_jax.data.inspect`."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from plfm_jax.data.inspect import inspect
from plfm_jax.data.synthetic import write_synthetic_dataset

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 16


def _inspect(*args: str | pathlib.Path, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "plfm_jax.data.inspect", *map(str, args)],
                        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False,
                        env=None if env is None else {**os.environ, **env})


@pytest.fixture
def split_root(tmp_path: pathlib.Path) -> pathlib.Path:
  return write_synthetic_dataset(tmp_path / "ds", series_per_split={"training": 2, "test": 1},
                                 image_size=SIZE, patches_per_zone=2)


def _first_rgb(root: pathlib.Path) -> pathlib.Path:
  return sorted((root / "training" / "sen2").glob("*/image_RGB_*_Feb_*.tif"))[0]


def test_report_on_valid_dataset(split_root):
  result = _inspect(split_root)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0] == f"dataset: {split_root}"
  assert "train: 2 series" in lines
  assert "  zone_1_a: Jan Feb Mar Apr (2 series)" in lines
  assert "test: 1 series" in lines
  assert lines[-1] == (f"summary: 3 series (train 2, test 1), 0 problem(s), "
                       f"pixels checked at {SIZE} x {SIZE}")
  assert "validating" in result.stderr  # the progress bar


@pytest.mark.slow
def test_bad_file_is_one_line_with_exit_code_2(split_root):
  bad = _first_rgb(split_root)
  bad.write_bytes(bad.read_bytes()[:100])
  result = _inspect(split_root)
  assert result.returncode == 2
  # The progress bar shares stderr; the error is the one line after it.
  *_, error = result.stderr.splitlines()
  assert error.startswith(f"error: {bad}: not a readable TIFF")
  assert result.stderr.count("error: ") == 1
  assert "Traceback" not in result.stderr
  assert result.stdout == ""


def test_skip_invalid_lists_problems(split_root):
  bad = _first_rgb(split_root)
  bad.write_bytes(bad.read_bytes()[:100])
  # The command reads the environment variable; the function takes it as an argument.
  out = _inspect(split_root, env={"PLFM_SKIP_INVALID": "1"}).stdout.splitlines()
  assert inspect(split_root, skip_invalid=True).splitlines() == out
  assert "problems (1, affected series skipped):" in out
  assert any(line.startswith(f"  {bad}: not a readable TIFF") for line in out)
  assert out[-1].startswith("summary: 2 series (train 1, test 1), 1 problem(s)")


def test_no_validate_reads_names_only(split_root, capsys):
  _first_rgb(split_root).write_bytes(b"damaged")
  out = inspect(split_root, validate=False)
  assert out.splitlines()[-1] == ("summary: 3 series (train 2, test 1), 0 problem(s), "
                                  "pixels not checked")
  assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_layout_error_and_debug_traceback(tmp_path):
  result = _inspect(tmp_path / "missing")
  assert (result.returncode, result.stdout) == (2, "")
  assert result.stderr == f"error: {tmp_path / 'missing'}: dataset folder does not exist\n"
  debug = _inspect(tmp_path / "missing", "--debug")
  assert debug.returncode != 0 and "Traceback" in debug.stderr
