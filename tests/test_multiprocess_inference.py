"""Evaluation and scene inference in several JAX processes on one machine, launched through
scripts/launch_local.py: the same numbers as one process with as many devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from test_inference_scene import assert_same_grid
from test_inference_scene import scenes, workdir  # noqa: F401  (fixtures, used by name)
from test_multiprocess_training import FOUR_DEVICES, LAUNCH, REPO
from test_trainer import TINY, TRAINING_PRIOR
from test_trainer import tfds_dir  # noqa: F401  (a fixture, used by name)
from tests.tiny import tiny_config, write_random_workdir


@pytest.mark.slow
def test_evaluation_in_two_processes_matches_one(tfds_dir, tmp_path):  # noqa: F811
  config = tiny_config("demo", size=32, conv_impl="lax", temporal_prior=TRAINING_PRIOR)
  config.data.tfds_dir = str(tfds_dir)
  workdir = write_random_workdir(tmp_path / "trained", config)
  evaluate = [sys.executable, str(REPO / "evaluate.py"), "--config",
              str(REPO / "configs/plfm.py:demo"), "--workdir", str(workdir),
              f"--config.data.tfds_dir={tfds_dir}", *TINY, "--config.batch_size=4",
              "--split", "validation", "--overwrite", "--scenarios", "exact"]
  summaries = {}
  # One process with as many devices as the two together: the same samples on each device.
  for name, command, env in (("two", [*LAUNCH, "--", *evaluate], {}),
                             ("one", evaluate, {"XLA_FLAGS": FOUR_DEVICES})):
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    # The table once, from process 0.
    assert done.stdout.count("| PLFM fused |") == 1, name
    out = workdir / "eval" / "validation"
    summaries[name] = (json.loads((out / "summary.json").read_text()),
                       (out / "per_sample.csv").read_text().splitlines())
  (two, two_rows), (one, one_rows) = summaries["two"], summaries["one"]
  assert two["num_samples"] == one["num_samples"] == 2
  # The same samples in the same order; the scores to float precision (programs compiled for
  # one and for two processes round differently in the last digits).
  assert [r.split(",")[:3] for r in two_rows] == [r.split(",")[:3] for r in one_rows]
  for method, values in one["metrics"]["exact"].items():
    for metric, value in values.items():
      if isinstance(value, str):  # "inf", "nan": spelled out in JSON
        assert two["metrics"]["exact"][method][metric] == value, (method, metric)
      else:
        np.testing.assert_allclose(two["metrics"]["exact"][method][metric], value, rtol=1e-5,
                                   atol=1e-6, err_msg=f"{method} {metric}")


@pytest.mark.slow
def test_predict_in_two_processes_writes_the_scene_of_one(scenes, workdir, tmp_path):  # noqa: F811
  inputs = scenes["small"]["inputs"]
  args = ["--workdir", str(workdir), "--cloudy", str(inputs.cloudy), "--history",
          ",".join(map(str, inputs.history)), "--sar", str(inputs.sar), "--cloud_mask",
          str(inputs.cloud_mask), "--nodetect", "--quiet", "--batch_size=4", "--window=64"]
  predict = [sys.executable, str(REPO / "predict.py"), *args]
  two = subprocess.run([*LAUNCH, "--devices_per_process=1", "--", *predict, "--out",
                        str(tmp_path / "two.tif")], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
  assert two.returncode == 0, two.stderr[-3000:]
  # One process with as many devices: the same windows on each device, so the same numbers.
  one = subprocess.run([*predict, "--out", str(tmp_path / "one.tif")], cwd=REPO,
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert one.returncode == 0, one.stderr[-3000:]
  # Written once, by process 0; the same pixels and georeference as one process writes.
  assert two.stdout.count("wrote ") == 1
  assert sorted(p.name for p in tmp_path.iterdir()) == ["one.tif", "two.tif"]
  np.testing.assert_array_equal(tifffile.imread(tmp_path / "two.tif"),
                                tifffile.imread(tmp_path / "one.tif"))
  assert_same_grid(tmp_path / "one.tif", tmp_path / "two.tif")
