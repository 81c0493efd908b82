"""Smoke test of `make bench`: the whole machinery on tiny shapes, one repeat, and its JSON."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from bench import jax_steps
from bench import run

# The benchmark's quick run takes a minute: `make test-fast` leaves these tests out.
pytestmark = pytest.mark.slow

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory) -> tuple[dict, str]:
  out = tmp_path_factory.mktemp("bench") / "quick.json"
  # The workers' persistent XLA cache (plfm_jax.runtime.configure) instead of the session's
  # fresh one: a repeated run then skips the compiles, which are most of its time.
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  completed = subprocess.run(
      [sys.executable, "-m", "bench.run", "--quick", "--stages", "temporal", "--repeats", "1",
       "--repeats_large", "1", "--out", str(out)],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
  assert completed.returncode == 0, completed.stderr[-3000:]
  return json.loads(out.read_text()), completed.stdout


def _is_stats(value) -> bool:
  return (set(value) == {"median", "min", "max", "n"}
          and value["min"] <= value["median"] <= value["max"])


def test_json_schema(quick_result):
  result, _ = quick_result
  assert result["schema"] == 1 and result["quick"]
  assert {"cpu_model", "cores", "name", "jax_backend"} <= set(result["machine"])
  assert {"jax", "tensorflow", "keras"} <= set(result["versions"])
  assert len(result["load_average"]["before"]) == len(result["load_average"]["after"]) == 3
  assert result["matmul_peak"]["peak_gflops"] > 0
  # temporal: the default path and lax for JAX, and Keras, each at batches 1 and 2.
  keys = {(r["framework"], r["conv_impl"], r["batch"]) for r in result["train"]}
  assert keys == {(f, impl, b) for f, impl in [("jax", "matmul"), ("jax", "lax"),
                                               ("keras", None)] for b in (1, 2)}
  for row in result["train"]:
    assert _is_stats(row["seconds"]) and row["seconds"]["n"] == 1
    assert row["model_flops"] > 0 and 0 < row["mfu"] and row["peak_rss_mib"] > 0
    # Tiny shapes run no Winograd chunk loop, so every JAX step has its executed count.
    assert ("executed_utilization" in row) == (row["framework"] == "jax")
  assert {(r["batch"], r["conv_impl"]) for r in result["speedup"]} == {
      (1, "matmul"), (2, "matmul"), (1, "lax"), (2, "lax")}
  assert all(isinstance(r["met"], bool) == r["default_path"] for r in result["speedup"])
  assert result["param_counts"]["temporal"]["match"]
  assert result["keras_updates"] == {"temporal": {"temporal": True}}
  assert _is_stats(result["inference"]["tiles_per_second"])
  assert result["inference"]["granule"]["windows"] > 0
  pipe = result["input_pipeline"]
  assert _is_stats(pipe["samples_per_second"]) and pipe["cores_used"] > 0
  # One target per (stage, batch) of the quick run and the input pipeline's; each met exactly
  # when its measured value reaches it, and all met only when every one is.
  targets = result["targets"]
  assert len(targets) == 3 and "input pipeline" in targets[-1]["what"]
  for target, batch in zip(targets, (1, 2)):
    ratio = next(r for r in result["speedup"] if r["default_path"] and r["batch"] == batch)
    assert target["value"] == ratio["speedup"] and target["met"] == ratio["met"]
    assert target["met"] == (ratio["speedup"] >= run.SPEEDUP_TARGETS["temporal"])
  assert targets[-1]["met"] == (targets[-1]["value"] >= run.PIPELINE_TARGET)
  assert result["all_targets_met"] == all(t["met"] for t in targets)


def test_table_printed(quick_result):
  _, stdout = quick_result
  assert "speed-up" in stdout and "input pipeline" in stdout and "matmul peak" in stdout


def test_jax_only_in_bfloat16_starts_no_keras_worker(monkeypatch):
  """The GPU set-up: every JAX worker gets the dtype, and no Keras worker starts."""
  started = []

  def fake_run_job(module, spec, **kwargs):
    started.append((module, spec))
    # A train job that measured nothing reads as stopped, like a worker killed for memory.
    return {"results": [], "stopped": "fake", "versions": {}}

  monkeypatch.setattr(run.measure, "run_job", fake_run_job)
  run.collect(run.Options(quick=True, stages=("gan", "head"), skip_keras=True,
                          dtype="bfloat16"))
  modules = {module for module, _ in started}
  assert modules == {"bench.jax_steps", "bench.input_pipeline"}
  jax_specs = [spec for module, spec in started if module == "bench.jax_steps"]
  assert {spec["job"] for spec in jax_specs} == {"peak", "train", "inference"}
  assert all(spec["dtype"] == "bfloat16" for spec in jax_specs)


def test_executed_flops_unknown_where_the_program_loops():
  """XLA counts a loop body once, so a looping program reports no executed FLOPs."""
  x = jnp.ones((4, 8, 8))
  plain = jax.jit(lambda a: a @ a).lower(x).compile()
  looped = jax.jit(lambda a: jax.lax.map(lambda m: jnp.sin(m) @ m, a)).lower(x).compile()
  assert jax_steps.executed_flops(plain) == pytest.approx(4 * 2 * 8**3, rel=0.01)
  assert jax_steps.executed_flops(looped) is None


def test_rejects_unknown_stage():
  with pytest.raises(ValueError, match="subset of temporal,gan,head"):
    run.Options(stages=("temporal", "joint"))
  # The command line says so in one line, before any worker starts.
  completed = subprocess.run([sys.executable, "-m", "bench.run", "--stages=temporal,joint"],
                             cwd=REPO_ROOT, capture_output=True, text=True, check=False)
  assert completed.returncode == 1
  assert "--stages must be a non-empty subset of temporal,gan,head" in completed.stderr
  assert "matmul peak" not in completed.stderr


def test_scene_command_is_timed_on_the_benchmark_scene(tmp_path):
  """bench.scene's side-by-side timing runs a repository's predict.py on the scene it wrote."""
  import rasterio
  from bench import scene
  files = scene.write_scene(tmp_path, 64, 1, 0.3)
  out = tmp_path / "restored.tif"
  seconds = scene.command_seconds(REPO_ROOT, files, out, runs=1)
  assert seconds > 0
  with rasterio.open(out) as restored, rasterio.open(files["cloudy"]) as cloudy:
    assert (restored.count, restored.shape, restored.crs) == (3, (64, 64), cloudy.crs)
    # Something was restored: the scene's clouds, haze and shadows cover 30% of it.
    assert (restored.read() != cloudy.read()).any()
  # Closer to the scene's truth under its clouds than the cloudy input is.
  psnr = lambda path: scene.cloud_psnr(path, files["truth"], files["footprint"])
  assert psnr(out) > psnr(files["cloudy"]) + 3
