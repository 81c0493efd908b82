"""What every benchmark process shares: settings, timing statistics, memory, machine facts, jobs.

Importable without JAX and without TensorFlow: the orchestrator (`bench/run.py`) starts every
measurement as a separate worker process (`python -m bench.jax_steps` or
`python -m bench.keras_reference`) so that the two frameworks never share a process, a thread
pool or a memory high-water mark.

Worker protocol: `python -m <module> --spec '<json>' --out <file>`; the worker writes one JSON
object to <file>, rewritten after every finished part when the job is a generator, so that a
worker stopped for using too much memory still leaves what it measured. `job_main` implements
the worker side, `run_job` the orchestrator side.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from absl import flags

from plfm_jax import cli

from configs import plfm as plfm_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --quick: widths and image size small enough for the smoke test (the U-Nets need H % 32 == 0).
QUICK_IMAGE_SIZE = 32
QUICK_FEATURES = 4
# Share of the memory available when a worker starts that it may use: the machine is shared, and
# with no swap an oversized step would thrash the page cache or call the OOM killer.
MEMORY_FRACTION = 0.8


def cores() -> int:
  """CPU cores this process may run on: both frameworks get this many threads."""
  return len(os.sched_getaffinity(0))


def bench_config(quick: bool, conv_impl: str = "auto", dtype: str = "float32") -> Any:
  """The `paper` config of configs/plfm.py (256 px, reference widths), or a tiny one for --quick;
  `dtype` is the JAX model's compute dtype."""
  config = plfm_config.get_config("paper")
  config.model.conv_impl = conv_impl
  config.model.dtype = dtype
  if quick:
    config.data.crop_size = QUICK_IMAGE_SIZE
    config.model.temporal_features = (QUICK_FEATURES,) * 3
    config.model.generator_features = QUICK_FEATURES
    config.model.discriminator_features = QUICK_FEATURES
    config.model.head_features = QUICK_FEATURES
  return config


def random_batch(batch_size: int, image_size: int, series_length: int,
                 seed: int = 0) -> dict[str, np.ndarray]:
  """A float32 batch with the input pipeline's keys and ranges (docs/architecture.md)."""
  rng = np.random.default_rng(seed)
  image = (batch_size, image_size, image_size)
  uniform = lambda *shape: rng.uniform(size=shape).astype(np.float32)
  return {"history": uniform(batch_size, series_length - 1, *image[1:], 3),
          "target": uniform(*image, 3),
          "cloudy": uniform(*image, 3),
          "cloud_mask": (uniform(*image, 1) > 0.5).astype(np.float32),
          "sar": uniform(*image, 1)}


def stats(values: Sequence[float]) -> dict[str, float]:
  """Median, min, max and count of repeated measurements."""
  return {"median": statistics.median(values), "min": min(values), "max": max(values),
          "n": len(values)}


def time_repeats(call: Callable[[], Any], *, warmup: int, repeats: int) -> list[float]:
  """Seconds of each of `repeats` calls of `call` (which must block until done) after `warmup`."""
  for _ in range(warmup):
    call()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return times


def peak_rss_mib() -> float:
  """High-water mark of this process's resident memory (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
  """User + system CPU time of this process, all threads."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def available_memory() -> int:
  """Bytes of memory available to new allocations (MemAvailable of /proc/meminfo)."""
  with open("/proc/meminfo") as f:
    for line in f:
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) * 1024
  raise RuntimeError("MemAvailable missing from /proc/meminfo")


def _rss(pid: int) -> int:
  """Resident bytes of process `pid` (0 once it has gone)."""
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def load_average() -> list[float]:
  """1-, 5- and 15-minute load averages."""
  return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def vector_isa() -> str:
  """Widest x86 vector instruction set of this CPU ("avx512", "avx2", ...), else the machine.

  Both frameworks' CPU kernels depend on it more than on anything else: the same "AMD EPYC"
  model name has been seen with and without AVX-512.
  """
  try:
    with open("/proc/cpuinfo") as f:
      flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
  except OSError:
    flags = []
  for isa, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx")):
    if flag in flags:
      return isa
  return platform.machine() or "unknown"


def machine_name() -> str:
  """Default results name: e.g. `cpu-2c-amd-epyc-avx2` (no GPU is used by this benchmark)."""
  slug = "".join(c if c.isalnum() else "-" for c in cpu_model().lower()).strip("-")
  return "-".join([f"cpu-{cores()}c", *(part for part in slug.split("-") if part), vector_isa()])


def machine_info() -> dict[str, Any]:
  """CPU, memory and Python facts; the frameworks' versions come from their workers."""
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  return {"cpu_model": cpu_model(), "vector_isa": vector_isa(), "cores": cores(),
          "logical_cpus": os.cpu_count(), "memory_gib": round(memory, 1),
          "platform": platform.platform(), "python": platform.python_version()}


def run_job(module: str, spec: Mapping[str, Any], *, env: Mapping[str, str] | None = None
            ) -> dict[str, Any]:
  """Runs `python -m <module>` as a worker on `spec` and returns its JSON result.

  The worker's stderr passes through (progress). A worker whose resident memory exceeds
  MEMORY_FRACTION of the memory available at its start is killed; its last written result is
  returned with "stopped" saying why. Any other failure raises.
  """
  limit = MEMORY_FRACTION * available_memory()
  stopped = None
  with tempfile.TemporaryDirectory(prefix="plfm_bench_") as tmp:
    out = os.path.join(tmp, "result.json")
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--spec", json.dumps(spec), "--out", out],
        cwd=REPO_ROOT, env={**os.environ, **(env or {})})
    while process.poll() is None:
      if _rss(process.pid) > limit:
        process.kill()
        process.wait()
        stopped = (f"killed: resident memory above {limit / 2**30:.1f} GiB "
                   f"({MEMORY_FRACTION:.0%} of the memory available at its start)")
        log(f"{module} {spec.get('stage', spec['job'])}: {stopped}")
        break
      time.sleep(0.2)
    if stopped is None and process.returncode:
      raise subprocess.CalledProcessError(process.returncode, process.args)
    if not os.path.exists(out):
      raise RuntimeError(f"{module} {spec}: {stopped or 'no result written'}")
    with open(out) as f:
      result = json.load(f)
  result["process_seconds"] = time.perf_counter() - start
  if stopped:
    result["stopped"] = stopped
  return result


Job = Callable[[dict[str, Any]], "dict[str, Any] | Iterator[dict[str, Any]]"]


def _write(result: dict[str, Any], path: str) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(result, f)
  os.replace(path + ".tmp", path)


def job_main(jobs: Mapping[str, Job]) -> None:
  """Worker entry point: runs `jobs[spec["job"]](spec)` and writes its result to --out.

  A job returns its result, or yields it growing (each yielded value replaces the last).
  """
  flags.DEFINE_string("spec", None, "JSON job description.", required=True)
  flags.DEFINE_string("out", None, "Where to write the JSON result.", required=True)

  def main(argv: Sequence[str]) -> None:
    del argv
    spec = json.loads(flags.FLAGS.spec)
    result = jobs[spec["job"]](spec)
    for partial in (result if inspect.isgenerator(result) else [result]):
      _write(partial, flags.FLAGS.out)

  cli.run(main)


def log(message: str) -> None:
  """Progress line on stderr (stdout stays free for the table)."""
  print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
