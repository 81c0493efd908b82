"""`make bench`: train-step speed vs a Keras re-creation of the reference, MFU, inference and
input-pipeline throughput, peak memory; writes bench/results/<machine>.json and prints a table.

Usage: .venv/bin/python -m bench.run [--quick] [--stages=temporal,gan,head] [--repeats=5]
       [--repeats_large=3] [--warmup=1] [--out=FILE] [--data_dir=DIR] [--dtype=float32]
       [--skip_keras]

Every measurement runs in its own worker process (JAX: bench/jax_steps.py and
bench/input_pipeline.py; Keras/TensorFlow: bench/keras_reference.py), one after the other, so
that the frameworks never share threads or a memory high-water mark, and JAX and Keras steps of
a stage run back to back under the same machine load. Figures are medians over repeats after
warm-up, with min and max; ratios compare medians of the same run. See bench/README.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Sequence

from absl import flags

from bench import measure
from plfm_jax import cli
from plfm_jax import hugepages

STAGES = ("temporal", "gan", "head")
# Our train step must beat the Keras reference by these factors.
SPEEDUP_TARGETS = {"temporal": 1.5, "gan": 1.5, "head": 1.0}
# The input pipeline must deliver samples this many times faster than training consumes them.
PIPELINE_TARGET = 10.0
# Exact reference counts, params + BatchNorm statistics (docs/reference_model.md), paper widths.
REFERENCE_PARAM_COUNTS = {"temporal": 1159139, "generator": 66626819,
                          "discriminator": 11047809, "head": 4173635}
FULL = {"batches": (1, 8), "peak_n": 4096, "inference_batch": 8, "pipeline_batch": 8,
        "pipeline_batches": 8}
QUICK = {"batches": (1, 2), "peak_n": 256, "inference_batch": 2, "pipeline_batch": 2,
         "pipeline_batches": 2}
# The lax convolution path is timed at batch 1 only: at batch 8 one temporal step takes minutes.
LAX_BATCHES = (1,)
KERAS_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}
DEFAULT_DATA_DIR = os.path.join(measure.REPO_ROOT, "workdir", "bench")


_STAGES_RULE = f"stages must be a non-empty subset of {','.join(STAGES)}"


def _valid_stages(stages: Sequence[str]) -> bool:
  return bool(stages) and set(stages) <= set(STAGES)


@dataclasses.dataclass(frozen=True)
class Options:
  """What one benchmark run measures: the command line's flags of the same names (below)."""
  quick: bool = False
  stages: tuple[str, ...] = STAGES
  repeats: int = 5
  repeats_large: int = 3
  warmup: int = 1
  data_dir: str = DEFAULT_DATA_DIR
  dtype: str = "float32"
  skip_keras: bool = False

  def __post_init__(self):
    if not _valid_stages(self.stages):
      raise ValueError(f"{_STAGES_RULE}, got {','.join(self.stages)}")

  @classmethod
  def from_flags(cls) -> "Options":
    return cls(**{field.name: FLAGS[field.name].value for field in dataclasses.fields(cls)}
               | {"stages": tuple(FLAGS.stages)})


FLAGS = flags.FLAGS
_DEFAULT = Options()
flags.DEFINE_bool("quick", _DEFAULT.quick, "Tiny widths at 32 px, batches 1 and 2 (checks the "
                  "machinery; figures meaningless); writes only with --out.")
flags.DEFINE_list("stages", list(_DEFAULT.stages), f"Subset of {','.join(STAGES)}.")
flags.register_validator("stages", _valid_stages, f"--{_STAGES_RULE}")
flags.DEFINE_integer("repeats", _DEFAULT.repeats, "Timed repeats at batch 1.", lower_bound=1)
flags.DEFINE_integer("repeats_large", _DEFAULT.repeats_large,
                     "Timed repeats at the larger batch (slow steps).", lower_bound=1)
flags.DEFINE_integer("warmup", _DEFAULT.warmup,
                     "Untimed calls before timing (Keras: the first one traces).", lower_bound=0)
flags.DEFINE_string("out", None, "JSON result (default bench/results/<machine>.json).")
flags.DEFINE_string("data_dir", _DEFAULT.data_dir,
                    "Where the input-pipeline dataset is built once and reused.")
flags.DEFINE_enum("dtype", _DEFAULT.dtype, ["float32", "bfloat16"],
                  "Compute dtype of the JAX model and of the matmul peak (the Keras reference "
                  "stays float32).")
flags.DEFINE_bool("skip_keras", _DEFAULT.skip_keras,
                  "JAX only: e.g. on a GPU machine, where the CPU build of TensorFlow would "
                  "time the host, not the accelerator.")


def _train_spec(options: Options, stage: str, batches: Sequence[int],
                **extra: Any) -> dict[str, Any]:
  repeats = [options.repeats if b == 1 else options.repeats_large for b in batches]
  return {"job": "train", "quick": options.quick, "stage": stage, "batches": list(batches),
          "repeats": repeats, "warmup": options.warmup, "dtype": options.dtype, **extra}


def lax_batches(options: Options) -> tuple[int, ...]:
  """Batch sizes the temporal stage is timed at with lax convolutions."""
  return QUICK["batches"] if options.quick else LAX_BATCHES


def _train_job(worker: str, spec: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
  """A train worker's result; batch sizes it did not reach (stopped for memory) are listed as
  skipped with the reason."""
  result = measure.run_job(worker, spec, **kwargs)
  result.setdefault("framework", "keras" if worker.endswith("keras_reference") else "jax")
  result.setdefault("stage", spec["stage"])
  result.setdefault("conv_impl", None)
  result.setdefault("param_counts", {})
  results = result.setdefault("results", [])
  done = {r["batch"] for r in results}
  results += [{"batch": b, "skipped": result["stopped"]} for b in spec["batches"]
              if b not in done]
  return result


def collect(options: Options) -> dict[str, Any]:
  """Runs every worker and returns their raw results."""
  sizes = QUICK if options.quick else FULL
  jax_worker, keras_worker = "bench.jax_steps", "bench.keras_reference"
  peak = {"job": "peak", "n": sizes["peak_n"], "repeats": max(options.repeats, 5),
          "dtype": options.dtype}
  raw: dict[str, Any] = {"train": []}
  measure.log("matmul peak")
  raw["peak_start"] = measure.run_job(jax_worker, peak)
  for stage in options.stages:
    raw["train"].append(_train_job(
        jax_worker, _train_spec(options, stage, sizes["batches"], conv_impl="auto")))
    if stage == "temporal":
      raw["train"].append(_train_job(
          jax_worker, _train_spec(options, stage, lax_batches(options), conv_impl="lax")))
    if not options.skip_keras:
      raw["train"].append(_train_job(
          keras_worker, _train_spec(options, stage, sizes["batches"], threads=measure.cores()),
          env=KERAS_ENV))
  raw["inference"] = measure.run_job(jax_worker, {
      "job": "inference", "quick": options.quick, "batch": sizes["inference_batch"],
      "warmup": options.warmup, "repeats": options.repeats, "dtype": options.dtype})
  raw["pipeline"] = measure.run_job("bench.input_pipeline", {
      "job": "pipeline", "quick": options.quick, "data_dir": "" if options.quick else options.data_dir,
      "batch": sizes["pipeline_batch"], "batches": sizes["pipeline_batches"],
      "warmup": 2, "repeats": options.repeats})
  measure.log("matmul peak again")
  raw["peak_end"] = measure.run_job(jax_worker, peak)
  return raw


def train_rows(raw: dict[str, Any], peak_flops: float) -> list[dict[str, Any]]:
  """One row per (framework, stage, conv path, batch): times, samples/s, FLOPs, MFU, memory.

  `default_path` marks JAX rows with the config's default convolution ("auto"). Keras rows take
  the model FLOPs of the same stage and batch from the JAX results (skipped ones included).
  JAX rows also get `executed_utilization`: the FLOPs the compiled step really executes (fewer
  than the model's with Winograd) / step time / peak.
  """
  rows = []
  flops = {}
  for job in raw["train"]:
    for result in job["results"]:
      if "model_flops" in result:
        flops[(job["stage"], result["batch"])] = result["model_flops"]
      if "skipped" in result:
        continue
      rows.append({"framework": job["framework"], "stage": job["stage"],
                   "conv_impl": job.get("conv_impl"),
                   "default_path": job.get("default_path", False), **result,
                   "samples_per_second": result["batch"] / result["seconds"]["median"]})
  for row in rows:
    row["model_flops"] = flops.get((row["stage"], row["batch"]))
    if row["model_flops"] is not None:
      row["mfu"] = row["model_flops"] / row["seconds"]["median"] / peak_flops
    if row.get("executed_flops") is not None:
      row["executed_utilization"] = (row["executed_flops"] / row["seconds"]["median"]
                                     / peak_flops)
  return rows


def skipped(raw: dict[str, Any]) -> list[dict[str, Any]]:
  """Train measurements that did not run, with the reason (memory)."""
  return [{"framework": job["framework"], "stage": job["stage"], "conv_impl": job["conv_impl"],
           "batch": r["batch"], "reason": r["skipped"]}
          for job in raw["train"] for r in job["results"] if "skipped" in r]


def _find(rows: list[dict[str, Any]], framework: str, stage: str, batch: int,
          conv_impl: str | None = None) -> dict[str, Any] | None:
  for row in rows:
    if (row["framework"], row["stage"], row["batch"]) == (framework, stage, batch) and (
        conv_impl is None or row["conv_impl"] == conv_impl):
      return row
  return None


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Keras median / JAX median per stage, batch and JAX conv path, with the stage's target.

  Only the default path decides whether a target is met.
  """
  out = []
  for jax_row in (r for r in rows if r["framework"] == "jax"):
    keras_row = _find(rows, "keras", jax_row["stage"], jax_row["batch"])
    if keras_row is None:
      continue
    ratio = keras_row["seconds"]["median"] / jax_row["seconds"]["median"]
    target = SPEEDUP_TARGETS[jax_row["stage"]]
    counts = jax_row["default_path"]
    out.append({"stage": jax_row["stage"], "batch": jax_row["batch"],
                "conv_impl": jax_row["conv_impl"], "default_path": counts,
                "jax_seconds": jax_row["seconds"]["median"],
                "keras_seconds": keras_row["seconds"]["median"], "speedup": ratio,
                "target": target, "met": ratio >= target if counts else None})
  return out


def param_counts(raw: dict[str, Any], quick: bool) -> dict[str, Any]:
  """Per component: the JAX and Keras counts (params + BatchNorm statistics) and the reference's."""
  out: dict[str, Any] = {}
  for job in raw["train"]:
    for name, count in job["param_counts"].items():
      entry = out.setdefault(name, {})
      entry[job["framework"]] = count
  for name, entry in out.items():
    expected = {entry.get("jax"), entry.get("keras")} - {None}
    if not quick:
      entry["reference"] = REFERENCE_PARAM_COUNTS[name]
      expected.add(entry["reference"])
    entry["match"] = len(expected) == 1
  return out


def pipeline_summary(raw: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
  """Pipeline samples/s against the samples/s each JAX default-path training step consumes."""
  pipe = raw["pipeline"]
  rate = pipe["samples_per_second"]["median"]
  consumers = [{"stage": r["stage"], "batch": r["batch"],
                "train_samples_per_second": r["samples_per_second"],
                "ratio": rate / r["samples_per_second"]}
               for r in rows if r["default_path"]]
  worst = min((c["ratio"] for c in consumers), default=None)
  return {**pipe, "vs_training": consumers, "min_ratio": worst, "target": PIPELINE_TARGET,
          "met": None if worst is None else worst >= PIPELINE_TARGET}


def summarize(raw: dict[str, Any], options: Options, started: float,
              load_before: list[float]) -> dict[str, Any]:
  """The result JSON (see bench/README.md for the fields)."""
  peaks = [raw["peak_start"], raw["peak_end"]]
  peak_gflops = max(p["peak_gflops"] for p in peaks)
  rows = train_rows(raw, peak_gflops * 1e9)
  jax_versions = raw["peak_start"]["versions"]
  ratios = speedups(rows)
  pipe = pipeline_summary(raw, rows)
  keras_job = next((j for j in raw["train"] if j["framework"] == "keras"), None)
  not_run = skipped(raw)
  targets = []
  for stage in options.stages:
    for batch in (QUICK if options.quick else FULL)["batches"]:
      what = f"{stage} train step, batch {batch}: JAX >= {SPEEDUP_TARGETS[stage]}x Keras"
      ratio = next((r for r in ratios if r["default_path"] and r["stage"] == stage
                    and r["batch"] == batch), None)
      if ratio is not None:
        targets.append({"what": what, "value": ratio["speedup"], "met": ratio["met"]})
      else:
        reasons = [f"{s['framework']}: {s['reason']}" for s in not_run
                   if s["stage"] == stage and s["batch"] == batch]
        targets.append({"what": what, "value": None, "met": None,
                        "not_measured": "; ".join(reasons)})
  targets.append({"what": f"input pipeline >= {PIPELINE_TARGET}x the fastest training step's "
                  "sample rate", "value": pipe["min_ratio"], "met": pipe["met"]})
  accelerator = jax_versions["backend"]
  return {
      "schema": 1,
      "quick": options.quick,
      "machine": {**measure.machine_info(), "name": measure.machine_name(),
                  "jax_backend": accelerator},
      "gpu": ("no GPU on this machine: CPU figures only; run `make bench` on a GPU machine "
              "to record one" if accelerator == "cpu" else f"ran on {jax_versions['devices']}"),
      "versions": {**jax_versions, **(keras_job["versions"] if keras_job else {}),
                   "keras_jit_compile": keras_job["jit_compile"] if keras_job else None},
      "settings": {"stages": list(options.stages), "repeats": options.repeats,
                   "repeats_large_batch": options.repeats_large, "warmup": options.warmup,
                   "threads": measure.cores(), "lax_batches": list(lax_batches(options)),
                   "dtype": options.dtype, "skip_keras": options.skip_keras,
                   "command": " ".join(sys.argv),
                   "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
                   "huge_pages": hugepages.enabled()},
      "load_average": {"before": load_before, "after": measure.load_average()},
      "matmul_peak": {"n": raw["peak_start"]["n"], "start": raw["peak_start"]["gflops"],
                      "end": raw["peak_end"]["gflops"], "peak_gflops": peak_gflops},
      "train": rows,
      "speedup": ratios,
      "param_counts": param_counts(raw, options.quick),
      "skipped": not_run,
      "keras_updates": {j["stage"]: j.get("updated") for j in raw["train"]
                        if j["framework"] == "keras"},
      "inference": raw["inference"],
      "input_pipeline": pipe,
      "targets": targets,
      "all_targets_met": all(t["met"] is True for t in targets),
      "wall_seconds": time.perf_counter() - started,
  }


def _span(s: dict[str, float], scale: float = 1.0) -> str:
  return f"{s['median'] * scale:.3g} ({s['min'] * scale:.3g}-{s['max'] * scale:.3g})"


def _or_dash(value: Any) -> str:
  return "-" if value is None else str(value)


def format_table(result: dict[str, Any]) -> str:
  """The human-readable summary printed at the end of the run."""
  rows = result["train"]
  lines = [f"PLFM benchmark on {result['machine']['cpu_model']}, {result['machine']['cores']} "
           f"cores ({result['machine']['jax_backend']}); load average before "
           f"{result['load_average']['before']}, after {result['load_average']['after']}",
           f"GPU: {result['gpu']}",
           "malloc huge pages: " + ("on" if result["settings"].get("huge_pages") else
                                    "off (run through `make bench` to turn them on)"), ""]
  header = ("stage", "batch", "JAX path", "JAX s/step", "Keras s/step", "speed-up", "target",
            "MFU JAX", "MFU Keras", "RSS JAX MiB", "RSS Keras MiB")
  default_impl = next((r["conv_impl"] for r in rows if r["default_path"]), None)
  measured = [*rows, *result["skipped"]]
  keys = sorted({(r["stage"], r["batch"]) for r in measured},
                key=lambda k: (STAGES.index(k[0]), k[1]))
  table = []

  def cell(row: dict[str, Any] | None, key: str, fmt: str) -> str:
    return "-" if row is None or row.get(key) is None else format(row[key], fmt)

  for stage, batch in keys:
    impls = {r["conv_impl"] for r in measured if r["framework"] == "jax"
             and (r["stage"], r["batch"]) == (stage, batch)}
    keras_row = _find(rows, "keras", stage, batch)
    for impl in sorted(impls, key=lambda i: i != default_impl) or [default_impl]:
      jax_row = _find(rows, "jax", stage, batch, impl)
      ratio = next((r for r in result["speedup"] if (r["stage"], r["batch"], r["conv_impl"])
                    == (stage, batch, impl)), None)
      if impl != default_impl:
        target = "(info)"
      elif ratio is None:
        target = f">={SPEEDUP_TARGETS[stage]}x not measured"
      else:
        target = f">={ratio['target']}x {'met' if ratio['met'] else 'MISSED'}"
      table.append((stage, str(batch), impl or "-",
                    "-" if jax_row is None else _span(jax_row["seconds"]),
                    "-" if keras_row is None else _span(keras_row["seconds"]),
                    "-" if ratio is None else f"{ratio['speedup']:.2f}x", target,
                    cell(jax_row, "mfu", ".1%"), cell(keras_row, "mfu", ".1%"),
                    cell(jax_row, "peak_rss_mib", ".0f"),
                    cell(keras_row, "peak_rss_mib", ".0f")))
  widths = [max(len(x[i]) for x in [header, *table]) for i in range(len(header))]
  lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in [header, *table]]
  peak, inf, pipe = result["matmul_peak"], result["inference"], result["input_pipeline"]
  lines += [f"not measured: {s['framework']} {s['stage']}"
            f"{' (' + s['conv_impl'] + ')' if s['conv_impl'] else ''} batch {s['batch']}: "
            f"{s['reason']}" for s in result["skipped"]]
  lines += [
      "",
      "times: median (min-max) seconds; speed-up = Keras median / JAX median; MFU = model FLOPs "
      "(XLA cost analysis, direct convolutions) / step time / matmul peak",
      f"matmul peak ({result['settings']['dtype']} {peak['n']}^2, best repeat): "
      f"{peak['peak_gflops']:.0f} GFLOP/s; "
      f"start {_span(peak['start'])}, end {_span(peak['end'])} GFLOP/s",
      f"inference ({inf['conv_impl']}, batch {inf['batch']}, {inf['tile']} px): "
      f"{_span(inf['tiles_per_second'])} tiles/s -> {inf['granule']['pixels']} px granule "
      f"({inf['granule']['windows']} windows, overlap {inf['granule']['overlap']}): "
      f"{inf['granule']['seconds']:.0f} s; peak RSS {inf['peak_rss_mib']:.0f} MiB",
      f"input pipeline ({pipe['source']}, {pipe['image_size']} px, {pipe['read_threads']} read "
      f"threads, 0 workers): {_span(pipe['samples_per_second'])} samples/s using "
      f"{pipe['cores_used']:.2f} cores = {pipe['samples_per_second_per_core']:.0f} samples/s "
      f"per core; {pipe['min_ratio']:.1f}x the fastest training step (target "
      f">={pipe['target']:.0f}x: {'met' if pipe['met'] else 'MISSED'}); peak RSS "
      f"{pipe['peak_rss_mib']:.0f} MiB",
      "parameters (params + BN statistics, JAX / Keras / reference): " + "; ".join(
          f"{name} {_or_dash(c.get('jax'))} / {_or_dash(c.get('keras'))} / "
          f"{_or_dash(c.get('reference'))}{'' if c['match'] else ' MISMATCH'}"
          for name, c in result["param_counts"].items()),
      "Keras steps updated: " + ("; ".join(
          f"{stage}: {', '.join(f'{k} {v}' for k, v in (u or {}).items()) or 'not measured'}"
          for stage, u in result["keras_updates"].items()) or "not measured (--skip_keras)"),
      f"all targets met: {result['all_targets_met']}; wall time {result['wall_seconds']:.0f} s",
  ]
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  del argv
  options = Options.from_flags()
  started = time.perf_counter()
  load_before = measure.load_average()
  raw = collect(options)
  result = summarize(raw, options, started, load_before)
  out = FLAGS.out
  if out is None and not options.quick:
    out = os.path.join(measure.REPO_ROOT, "bench", "results",
                       f"{result['machine']['name']}.json")
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
      json.dump(result, f, indent=1)
  print(format_table(result))
  if out:
    print(f"written: {out}")


if __name__ == "__main__":
  # Every worker, JAX and Keras alike, inherits this process's malloc settings (`make bench`
  # sets the huge-page tunable, plfm_jax/hugepages.py), so that ratios compare code, not
  # allocators; the result records them.
  cli.run(main)
