"""The model summary CLI: `python -m plfm_jax.summary --config configs/plfm.py[:variant]`."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from configs.plfm import get_config
from plfm_jax import summary

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cli_prints_paper_counts_as_last_line():
  result = subprocess.run(
      [sys.executable, "-m", "plfm_jax.summary", "--config", "configs/plfm.py:paper"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert json.loads(lines[-1]) == {"temporal": 1159139, "generator": 66626819,
                                   "discriminator": 11047809, "head": 4173635}
  assert lines[-1] == ('{"temporal": 1159139, "generator": 66626819, '
                       '"discriminator": 11047809, "head": 4173635}')
  table = "\n".join(lines[:-1])
  assert "66,617,347" in table and "9,472" in table  # generator params and batch_stats
  assert "(1, 16, 16, 1)" in table  # PatchGAN logits for 256 px


def test_summarize_demo_rows():
  rows = {row["name"]: row for row in summary.summarize(get_config("demo"))}
  assert list(rows) == ["temporal", "generator", "discriminator", "head"]
  assert rows["discriminator"]["output_shape"] == (1, 4, 4, 1)
  # The demo (plus) head outputs two gains and an offset per band.
  assert rows["head"]["output_shape"] == (1, 64, 64, 9)
  for row in rows.values():
    assert row["total"] == row["params"] + row["batch_stats"] > 0
    assert row["gflops"] > 0
