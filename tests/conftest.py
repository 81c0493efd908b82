"""Shared fixtures: the real sample (skipped when absent) and a small synthetic dataset."""

from __future__ import annotations

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_ROOT = pathlib.Path(
    os.environ.get("PLFM_SAMPLE_ROOT", REPO_ROOT.parent / "shared" / "data" / "plfm_sample"))


@pytest.fixture(scope="session")
def sample_root() -> pathlib.Path:
  """The real Sentinel-1/2 sample in the authors' layout; tests using it skip when it is absent."""
  if not (SAMPLE_ROOT / "sen2").is_dir():
    pytest.skip(f"real sample not found at {SAMPLE_ROOT}")
  return SAMPLE_ROOT
