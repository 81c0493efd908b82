"""The evaluation's CSV, JSON and Markdown writers."""

from __future__ import annotations

import csv
import json
import math

from plfm_jax.evaluation import report

LABELS = {"a": "method A", "b": "method B"}


def test_csv_has_exactly_the_columns_in_order(tmp_path):
  path = report.write_csv(tmp_path / "out" / "x.csv",
                          [{"index": 0, "method": "a", "psnr": "nan"},
                           {"index": 0, "method": "b", "psnr": "inf"}],
                          ["index", "method", "psnr", "ssim"])
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ["index", "method", "psnr", "ssim"]
  assert [r["method"] for r in rows] == ["a", "b"]
  assert math.isnan(float(rows[0]["psnr"])) and float(rows[1]["psnr"]) == math.inf
  assert rows[0]["ssim"] == ""
  assert not list(tmp_path.glob("out/.*")), "temporary file left behind"


def test_json_is_strict_and_reads_back(tmp_path):
  summary = {"metrics": {"exact": {"a": {"psnr": math.inf, "ssim": math.nan, "sam": 2.5}}},
             "seed": (1, 2)}
  path = report.write_json(tmp_path / "summary.json", summary)
  text = path.read_text()
  assert "NaN" not in text and "Infinity" not in text
  data = json.loads(text)
  assert data["metrics"]["exact"]["a"] == {"psnr": "inf", "ssim": None, "sam": 2.5}
  assert data["seed"] == [1, 2]
  back = report.read_summary(path)["metrics"]["exact"]["a"]
  assert back["psnr"] == math.inf and math.isnan(back["ssim"]) and back["sam"] == 2.5


def test_markdown_table_bolds_the_best_of_each_column():
  means = {"a": {"psnr": 20.0, "sam": 3.0, "ssim": math.nan},
           "b": {"psnr": 25.0, "sam": 4.0, "ssim": 0.5}}
  table = report.markdown_table(means, LABELS, columns=(("psnr", "PSNR", 2), ("sam", "SAM", 2),
                                                        ("ssim", "SSIM", 3)))
  header, rule, row_a, row_b = table.strip().splitlines()
  assert header == "| method | PSNR ↑ | SAM ↓ | SSIM ↑ |"
  assert rule == "|---|---:|---:|---:|"
  assert row_a == "| method A | 20.00 | **3.00** | n/a |"
  assert row_b == "| method B | **25.00** | 4.00 | **0.500** |"


def test_ties_are_all_bold_and_directions_follow_the_metric():
  table = report.markdown_table({"a": {"psnr_cloud": 7.0}, "b": {"psnr_cloud": 7.0}}, LABELS,
                                columns=(("psnr_cloud", "PSNR cloud", 1),))
  assert table.count("**7.0**") == 2
  assert report.higher_is_better("shifted_ssim") and report.higher_is_better("psnr_clear")
  assert not report.higher_is_better("shifted_sam") and not report.higher_is_better("rmse_cloud")
