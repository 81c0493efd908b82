"""evaluate.py end to end on a tiny workdir (random variables, checkpointed as train.py leaves
them: training itself is tested in test_trainer.py) and a synthetic dataset."""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from plfm_jax import weight_files
from plfm_jax import workdirs
from plfm_jax.data import synthetic
from plfm_jax.errors import InputError
from plfm_jax.evaluation import baselines
from plfm_jax.evaluation import evaluate as evaluation
from plfm_jax.evaluation import inception
from tests.fid_testing import random_params
from tests.tiny import tiny_config, tiny_flags, write_random_workdir
from tfds_builders.plfm_series.build import ensure_built

# The tests run evaluate.py in subprocesses: `make test-fast` leaves them out.
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32
NUM_TEST = 5
# Metrics that average over pixels alone: exactly equal images give exactly equal values. (SSIM's
# windows reach across the cloud border, so its clear-area value also sees cloud pixels.)
PIXELWISE = ("psnr", "rmse", "mae", "sam")


def config(tfds_dir: pathlib.Path, **overrides) -> ml_collections.ConfigDict:
  """configs/plfm.py:demo with the tiny settings (tests/tiny.py) at 32 px, as evaluate.py builds
  it from its flags (`evaluate_command`)."""
  cfg = tiny_config("demo", size=SIZE)
  cfg.data.synthetic_size = SIZE
  for key, value in {"batch_size": 2, "data.tfds_dir": str(tfds_dir), **overrides}.items():
    *parents, leaf = key.split(".")
    node = cfg
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return cfg


def run(*args: str, devices: int = 1) -> subprocess.CompletedProcess:
  """A Python command of the repository, on `devices` (forced) CPU devices."""
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=900,
                        cwd=REPO, env=env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
  """(workdir, tfds_dir): a tiny model in every stage's best checkpoint."""
  root = tmp_path_factory.mktemp("evaluation")
  raw = synthetic.write_synthetic_dataset(
      root / "raw", series_per_split={"training": 4, "validation": 2, "test": NUM_TEST},
      image_size=SIZE)
  ensure_built(root / "tfds", manual_dir=raw)
  write_random_workdir(root / "work", config(root / "tfds"))
  return root / "work", root / "tfds"


def evaluate_command(workdir: pathlib.Path, tfds_dir: pathlib.Path, *extra: str) -> list[str]:
  return ["evaluate.py", "--config", "configs/plfm.py:demo", "--workdir", str(workdir),
          f"--config.data.tfds_dir={tfds_dir}", *tiny_flags(SIZE), "--config.batch_size=2", *extra]


def read_rows(path: pathlib.Path) -> list[dict[str, str]]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def by_method(rows: list[dict[str, str]], method: str,
              scenario: str = "exact") -> list[dict[str, str]]:
  return sorted((r for r in rows if r["method"] == method and r["scenario"] == scenario),
                key=lambda r: int(r["index"]))


@pytest.fixture(scope="module")
def cli_output(trained) -> pathlib.Path:
  """evaluate.py on the test split in batches of 2 over 2 devices: the last batch is padded."""
  workdir, tfds_dir = trained
  out = run(*evaluate_command(workdir, tfds_dir, "--num_panels", "5",
                              "--scenarios", "exact,detected"), devices=2)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "PLFM fused" in out.stdout
  return workdir / "eval" / "test"


def test_writes_every_output(cli_output):
  rows = read_rows(cli_output / "per_sample.csv")
  assert len(rows) == 2 * NUM_TEST * len(baselines.METHODS)
  assert list(rows[0])[:9] == ["scenario", "index", "sample", "cloud_coverage", "mask_coverage",
                               "mask_false_alarm", "mask_recall", "temporal_calibration", "method"]
  assert {r["scenario"] for r in rows} == {"exact", "detected"}
  for metric in ("psnr", "ssim", "sam", "rmse", "mae", "psnr_cloud", "ssim_clear",
                 "shifted_psnr", "shifted_ssim", "shifted_uqi", "shifted_cc"):
    assert metric in rows[0]
  assert {r["method"] for r in rows} == set(baselines.METHODS)
  samples = {r["index"]: r["sample"] for r in rows}
  assert sorted(map(int, samples)) == list(range(NUM_TEST))
  assert len(set(samples.values())) == NUM_TEST
  assert all(s.startswith("zone_") and s.endswith("/Jan-Apr") for s in samples.values())

  summary = json.loads((cli_output / "summary.json").read_text())
  assert summary["num_samples"] == NUM_TEST and summary["split"] == "test"
  assert summary["config_variant"] == "demo"
  assert summary["scenarios"] == ["exact", "detected"]
  assert all(set(summary["metrics"][s]) == set(baselines.METHODS) for s in summary["scenarios"])
  # The exact mask is the truth; the detection holds most of it and little else.
  assert summary["masks"]["mask_recall"]["exact"] == 1
  assert summary["masks"]["mask_false_alarm"]["exact"] == 0
  assert summary["masks"]["mask_recall"]["detected"] > 0.5
  assert summary["clouds"]["seed"] == 0 and summary["clouds"]["coverage_range"] == [0.2, 0.6]
  coverage = np.mean([float(r["cloud_coverage"]) for r in by_method(rows, "plfm_fused")])
  assert summary["clouds"]["mean_coverage"] == pytest.approx(coverage, abs=1e-4)
  assert 0.2 <= summary["clouds"]["mean_coverage"] <= 0.9
  assert summary["fid"] == {"computed": False, "reason": "no --fid_weights given"}
  # The demo (plus) calibrates its temporal correction: the weights it got, per sample.
  calibration = [float(r["temporal_calibration"]) for r in by_method(rows, "plfm_fused")]
  assert all(0 <= c <= 1 for c in calibration)
  assert summary["temporal_calibration"]["exact"] == pytest.approx(np.mean(calibration), abs=1e-4)
  assert summary["timing"]["total_seconds"] > 0 and summary["timing"]["device"] == "2 x cpu"
  # Means in the summary are the means of the per-sample values.
  fused = by_method(rows, "plfm_fused")
  assert summary["metrics"]["exact"]["plfm_fused"]["psnr_cloud"] == pytest.approx(
      np.mean([float(r["psnr_cloud"]) for r in fused]), rel=1e-5)

  table = (cli_output / "summary.md").read_text()
  assert "| PLFM fused |" in table and "**" in table and "FID: not computed" in table
  assert table.index("## Scenario `exact`") < table.index("## Scenario `detected`")
  for scenario in ("exact", "detected"):
    panels = sorted(p.name for p in (cli_output / "panels" / scenario).iterdir())
    assert panels == ["samples_0000-0003.png", "samples_0004-0004.png"]
  assert not list(cli_output.parent.glob(".*")), "temporary folder left behind"


def test_composite_equals_cloudy_input_outside_the_clouds(cli_output):
  rows = read_rows(cli_output / "per_sample.csv")
  cloudy, composite = by_method(rows, "cloudy_input"), by_method(rows, "plfm_composite")
  fused = by_method(rows, "plfm_fused")
  for a, b, c in zip(cloudy, composite, fused):
    for metric in PIXELWISE:
      assert a[f"{metric}_clear"] == b[f"{metric}_clear"], metric
      # ... and the fused prediction under them.
      assert b[f"{metric}_cloud"] == c[f"{metric}_cloud"], metric
    assert float(a["rmse_clear"]) == 0.0 and float(a["psnr_clear"]) == float("inf")


def test_same_samples_and_clouds_for_any_batch_size_and_devices(trained, cli_output):
  """A TFDS slice of the whole split in batches of 4 (one padded) on one device scores the same
  samples under the same clouds as batches of 2 on two devices."""
  workdir, tfds_dir = trained
  summary = evaluation.run_evaluation(config(tfds_dir, batch_size=4), workdir,
                                      split=f"test[:{NUM_TEST}]", scenarios=("exact",),
                                      num_panels=0)
  out = workdir / "eval" / "test_-5"
  assert summary["num_samples"] == NUM_TEST and (out / "summary.json").is_file()
  assert not (out / "panels").exists()
  rows, reference = read_rows(out / "per_sample.csv"), read_rows(cli_output / "per_sample.csv")
  for method, rel in (("cloudy_input", 1e-5), ("persistence", 1e-5), ("temporal_mean", 1e-5),
                      ("temporal_median", 1e-5), ("plfm_fused", 5e-3)):
    # Other batch shapes compile to other float roundings (~1e-7), nothing more: a different
    # cloud would change every score of the sample by percents. The model's outputs pass
    # through two float32 least-squares fits (the multi-scale prior, ~5e-5 here, and the
    # calibration of a small temporal correction), which amplify them to up to 0.4% of a score.
    for a, b in zip(by_method(rows, method), by_method(reference, method), strict=True):
      assert (a["index"], a["sample"], a["cloud_coverage"]) == (
          b["index"], b["sample"], b["cloud_coverage"])
      metrics = [k for k in a if k not in ("scenario", "index", "sample", "method",
                                           "temporal_calibration")
                 and not k.endswith("_coverage") and not k.startswith("mask_")]
      assert [float(a[k]) for k in metrics] == pytest.approx([float(b[k]) for k in metrics],
                                                             rel=rel), method
      # The model's calibration (a fact of the sample, on every method's row), written with 4
      # decimals: a least-squares output like the model's, within the model's tolerance or
      # one unit of its last digit (1.5e-4: 0.0047 - 0.0046 is a hair above 1e-4 in floats).
      assert float(a["temporal_calibration"]) == pytest.approx(
          float(b["temporal_calibration"]), rel=5e-3, abs=1.5e-4)

  # --overwrite replaces the folder as a whole: no file of the previous run survives.
  evaluation.run_evaluation(config(tfds_dir, batch_size=4), workdir, split=f"test[:{NUM_TEST}]",
                            scenarios=("exact",), num_panels=1, overwrite=True)
  assert [p.name for p in (out / "panels" / "exact").iterdir()] == ["samples_0000-0000.png"]


def test_existing_output_is_refused_without_overwrite(trained, cli_output):
  workdir, tfds_dir = trained
  before = (cli_output / "summary.json").stat().st_mtime_ns
  out = run(*evaluate_command(workdir, tfds_dir))
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      f"error: {cli_output}: exists already; pass --overwrite to replace it"]
  assert (cli_output / "summary.json").stat().st_mtime_ns == before


@pytest.mark.parametrize("weights", ["missing.bin", "garbage.bin"])
def test_unusable_fid_weights_are_one_line_errors(trained, tmp_path, weights):
  workdir, tfds_dir = trained
  (tmp_path / "garbage.bin").write_bytes(b"not inception weights")
  out = run(*evaluate_command(workdir, tfds_dir, "--split", "validation",
                              "--fid_weights", str(tmp_path / weights)))
  assert out.returncode == 2, out.stderr[-3000:]
  [line] = out.stderr.strip().splitlines()
  assert line.startswith(f"error: {tmp_path / weights}: ")
  assert not (workdir / "eval" / "validation").exists()


def test_config_that_does_not_fit_the_checkpoints(trained):
  workdir, tfds_dir = trained
  with pytest.raises(InputError, match=r"model.head_features: 4 -> 8"):
    evaluation.run_evaluation(config(tfds_dir, **{"model.head_features": 8}), workdir,
                              split="validation")
  # Numerics-only settings may differ; they are reported, not refused.
  assert workdirs.check_model_config(config(tfds_dir, **{"model.time_loop": "scan"}),
                                     workdir) == [
      "model.time_loop: 'unroll' -> 'scan'"]


def test_untrained_workdir(tmp_path):
  with pytest.raises(InputError, match="no trained model here"):
    evaluation.run_evaluation(config(tmp_path / "tfds"), tmp_path / "nothing")


def test_fid_of_every_method_against_the_ground_truth(trained, tmp_path):
  """Real FID through the Inception network, with random weights (no real ones here)."""
  workdir, tfds_dir = trained
  weights = tmp_path / "inception.npz"
  inception.save_inception(weights, random_params())
  summary = evaluation.run_evaluation(config(tfds_dir, batch_size=4), workdir,
                                      split="validation[:2]", scenarios=("exact",),
                                      fid_weights=weights, num_panels=0)
  out = workdir / "eval" / "validation_-2"
  written = json.loads((out / "summary.json").read_text())["fid"]
  assert written == summary["fid"]
  assert written["computed"] and written["inception_weights"] == str(weights)
  values = written["values"]
  assert list(values) == list(baselines.METHODS)
  assert all(math.isfinite(v) and v > 0 for v in values.values()), values
  assert "FID (lower is better): cloudy input" in (out / "summary.md").read_text()


def test_reflectance_batch_of_a_minmax_batch_is_the_reflectance_batch():
  """Scores of every variant share one scale: a min-max batch unscaled with its `s2_scale`
  is the batch a reflectance model reads (clouds aside, drawn in each normalisation)."""
  from configs.plfm import data_config
  from plfm_jax.data import pipeline

  rng = np.random.default_rng(0)
  record = {"s2": rng.integers(100, 4000, (4, SIZE, SIZE, 3)).astype(np.uint16),
            "s1": rng.uniform(-20, 0, (4, SIZE, SIZE, 1)).astype(np.float32),
            "cm": np.zeros((4, SIZE, SIZE), np.uint16), "zone": b"z", "patch": 0,
            "months": np.arange(1, 5, dtype=np.int32)}
  cfg = data_config()
  cfg.crop_size = SIZE
  batches = {}
  for normalization in ("minmax", "reflectance"):
    cfg.s2_normalization = normalization
    example = pipeline.transform_record(record, np.random.default_rng(1), cfg, train=False)
    batches[normalization] = {k: v[None] for k, v in example.items()}
  unscaled = evaluation._reflectance_batch(batches["minmax"])
  for key in ("history", "target"):
    np.testing.assert_allclose(unscaled[key], batches["reflectance"][key], atol=1e-6)
  np.testing.assert_array_equal(batches["minmax"]["cloud_mask"],
                                batches["reflectance"]["cloud_mask"])


def test_minmax_model_is_scored_in_reflectance_and_in_its_own_normalisation():
  import jax
  from plfm_jax.models.plfm import PLFM
  from tests.tiny import random_batch
  plfm = PLFM.from_config(tiny_config("paper", size=SIZE).model)
  variables = plfm.init(jax.random.key(0), image_size=SIZE, series_length=4)
  batch = random_batch(2, SIZE)
  images, scores, facts = evaluation._make_step(plfm, "minmax")(variables, batch)
  # Nothing calibrated in paper.
  assert set(facts) == {"cloud_coverage", "mask_coverage", "mask_recall", "mask_false_alarm"}
  assert {"psnr_cloud", "ssim_cloud", evaluation.NORMALIZED_PREFIX + "psnr_cloud"} <= set(scores)
  assert all(v.shape == (2, len(baselines.METHODS)) for v in scores.values())
  # Reflectance scores of the persistence baseline are those of the unscaled earlier date where
  # the mask flags clouds, of the cloudy date elsewhere.
  reflectance = evaluation._reflectance_batch(batch)
  filled = np.where(batch["cloud_mask"] > 0.5, reflectance["history"][:, -1], reflectance["cloudy"])
  rmse = np.sqrt(np.mean((filled - reflectance["target"])**2, axis=(1, 2, 3)))
  method = baselines.METHODS.index("persistence")
  np.testing.assert_allclose(scores["rmse"][:, method], rmse, rtol=1e-4)


def test_weights_file_evaluates_like_its_workdir(trained, cli_output, tmp_path):
  workdir, tfds_dir = trained
  exported = weight_files.export(workdir, tmp_path / "model.msgpack", description="test")
  # The model comes from the weights, whatever the config says of it; the data from the config.
  cfg = config(tfds_dir, **{"model.head_features": 16, "model.head_output": "image"})
  summary = evaluation.run_evaluation(cfg, tmp_path / "out", split="test", scenarios=("exact",),
                                      weights=exported)
  assert summary["weights"] == str(exported.path)
  reference = json.loads((cli_output / "summary.json").read_text())
  # (Within the float32 roundings that the model's least-squares fits amplify: the variables
  # are placed differently, so the program is compiled differently.)
  for method in ("plfm_fused", "temporal_branch"):
    for metric in ("psnr_cloud", "ssim_cloud", "sam"):
      assert summary["metrics"]["exact"][method][metric] == pytest.approx(
          reference["metrics"]["exact"][method][metric], rel=5e-3), (method, metric)
