"""JAX worker of the benchmark: matmul peak, the project's train steps, and inference.

Nothing here re-implements the model: train steps are `plfm_jax.train.steps.jit_steps` on a
one-device mesh, exactly as `plfm_jax.train.trainer` builds them; inference is
`PLFM.predict` jitted as `plfm_jax.inference.scene.load_tile_model` does.

Run by `bench/run.py` as `python -m bench.jax_steps --spec JSON --out FILE` (see
`bench.measure.job_main`); jobs: "peak", "train", "inference".
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from bench import measure
from plfm_jax import runtime
from plfm_jax.inference import tiling
from plfm_jax.data.layout import SERIES_LENGTH
from plfm_jax.models.plfm import PLFM, count_variables
from plfm_jax import sharding
from plfm_jax import stages
from plfm_jax.train import steps

# Side of a Sentinel-2 granule (100 km at 10 m).
GRANULE_PIXELS = 10980


def executed_flops(compiled: jax.stages.Compiled) -> float | None:
  """FLOPs a compiled program executes, per XLA's cost analysis; None where it holds a loop.

  The cost analysis counts a loop body once: where the Winograd convs run a large batch in
  sequential chunks, it would report a fraction of the real count.
  """
  if " while(" in compiled.as_text():
    return None
  return float(compiled.cost_analysis()["flops"])


def versions() -> dict[str, str]:
  import flax
  import jaxlib
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
          "backend": jax.default_backend(), "devices": str(jax.devices())}


def matmul_peak(spec: dict[str, Any]) -> dict[str, Any]:
  """GFLOP/s of an n x n dense matmul in spec["dtype"]; the peak is the best repeat."""
  n = spec["n"]
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.standard_normal((n, n)), spec["dtype"]) for _ in range(2))
  dot = jax.jit(jnp.dot)
  times = measure.time_repeats(lambda: dot(a, b).block_until_ready(), warmup=2,
                               repeats=spec["repeats"])
  gflops = [2 * n**3 / t / 1e9 for t in times]
  return {"n": n, "gflops": measure.stats(gflops), "peak_gflops": max(gflops),
          "versions": versions()}


def _stage_setup(config: Any, stage: str, batch_size: int, model: PLFM,
                 variables: Any, *, abstract: bool = False) -> tuple[Any, ...]:
  """(jitted train step, state, frozen, batch) of `stage` as the trainer builds them, one device.

  abstract: `variables` are shapes (`jax.eval_shape`) and so are the returned arrays.
  """
  spec = stages.STAGES[stage]
  mesh = sharding.make_mesh(jax.devices()[:1])
  optimizers = steps.make_optimizers(config.train, spec)
  hyper = steps.Hyper.from_config(config.train)
  train_step, _ = steps.jit_steps(model, spec, hyper, optimizers, sharding.replicated(mesh),
                                  sharding.batch_sharded(mesh))
  init_state = lambda v: steps.init_state(v, spec, optimizers)
  frozen = {name: variables[name] for name in spec.frozen}
  batch = measure.random_batch(batch_size, config.data.crop_size, SERIES_LENGTH)
  if abstract:
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    return train_step, jax.eval_shape(init_state, variables), frozen, batch
  state = init_state(variables)
  state = sharding.replicate(state, mesh)
  return (train_step, state, sharding.replicate(frozen, mesh),
          sharding.global_batch(batch, mesh))


def _init_kwargs(config: Any) -> dict[str, Any]:
  return dict(image_size=config.data.crop_size, series_length=SERIES_LENGTH)


def model_flops(quick: bool, stage: str, batch_size: int, dtype: str) -> float:
  """FLOPs of one train step of the model itself, from XLA's cost analysis of the "lax" path.

  The "lax" path computes every convolution directly (upsampling included), as the Keras
  reference does; the "matmul" path skips work (Winograd, fused upsampling), so its own count
  (`executed_flops`) is lower than what the model needs. Lowered, not compiled: the count does
  not need the minutes a paper-size compile takes.
  """
  config = measure.bench_config(quick, "lax", dtype)
  model = PLFM.from_config(config.model)
  variables = jax.eval_shape(lambda key: model.init(key, **_init_kwargs(config)),
                             jax.random.key(0))
  train_step, state, frozen, batch = _stage_setup(config, stage, batch_size, model, variables,
                                                  abstract=True)
  return float(train_step.lower(state, frozen, batch).cost_analysis()["flops"])


def train(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
  """Times `steps.train_step` of one stage for each batch size in spec["batches"].

  Yields the result after each batch size. A batch size whose compiled step needs more than
  `measure.MEMORY_FRACTION` of the available memory (XLA's memory analysis) is skipped with the
  reason, instead of thrashing a shared machine.

  Per batch size: compile time (near zero when the persistent XLA cache that
  `plfm_jax.runtime.configure` sets up already holds the program), executed FLOPs of the
  compiled step (None where it holds a loop, see below), model FLOPs (lax path), step times
  after `warmup` steps, and the process's peak RSS so far (batches run in increasing order, so
  the last one's figure is that batch's peak).
  """
  config = measure.bench_config(spec["quick"], spec["conv_impl"], spec["dtype"])
  model = PLFM.from_config(config.model)
  variables = model.init(jax.random.key(0), **_init_kwargs(config))
  counts = {name: count_variables(v) for name, v in variables.items()}
  results = []
  result = {"framework": "jax", "stage": spec["stage"], "conv_impl": model.temporal.impl,
            "default_path": spec["conv_impl"] == "auto", "param_counts": counts,
            "results": results, "versions": versions()}
  for batch_size, repeats in zip(spec["batches"], spec["repeats"]):
    measure.log(f"jax {spec['stage']} ({spec['conv_impl']}) batch {batch_size}: compiling")
    train_step, state, frozen, batch = _stage_setup(config, spec["stage"], batch_size, model,
                                                    variables)
    start = time.perf_counter()
    compiled = train_step.lower(state, frozen, batch).compile()
    compile_seconds = time.perf_counter() - start
    executed = executed_flops(compiled)
    memory = compiled.memory_analysis()
    needed = (memory.temp_size_in_bytes + memory.argument_size_in_bytes
              + memory.output_size_in_bytes)
    available = measure.available_memory()
    flops = model_flops(spec["quick"], spec["stage"], batch_size, spec["dtype"])
    if needed > measure.MEMORY_FRACTION * available:
      results.append({"batch": batch_size, "model_flops": flops, "skipped": (
          f"the compiled step needs {needed / 2**30:.1f} GiB (XLA memory analysis), more than "
          f"{measure.MEMORY_FRACTION:.0%} of the {available / 2**30:.1f} GiB available")})
      measure.log(f"jax {spec['stage']} batch {batch_size}: {results[-1]['skipped']}")
      yield result
      continue
    holder = {"state": state}

    def step() -> None:
      holder["state"], metrics = compiled(holder["state"], frozen, batch)
      jax.block_until_ready((holder["state"], metrics))

    measure.log(f"jax {spec['stage']} ({spec['conv_impl']}) batch {batch_size}: timing")
    times = measure.time_repeats(step, warmup=spec["warmup"], repeats=repeats)
    results.append({"batch": batch_size, "seconds": measure.stats(times),
                    "compile_seconds": compile_seconds, "executed_flops": executed,
                    "model_flops": flops, "step_memory_gib": needed / 2**30,
                    "peak_rss_mib": measure.peak_rss_mib()})
    yield result


def inference(spec: dict[str, Any]) -> dict[str, Any]:
  """Tiles per second of the full PLFM forward (`PLFM.predict`) on batches of tiles.

  Also the seconds a 10980 x 10980 granule implies: its number of windows with
  `predict_scene`'s default overlap (a quarter of the tile) over the tile rate.
  """
  config = measure.bench_config(spec["quick"], dtype=spec["dtype"])
  model = PLFM.from_config(config.model)
  variables = model.init(jax.random.key(0), **_init_kwargs(config))

  @jax.jit
  def fused(variables: dict, batch: dict) -> jax.Array:
    return model.predict(variables, batch)["fused"]

  batch_size, tile = spec["batch"], config.data.crop_size
  batch = {k: jnp.asarray(v) for k, v in measure.random_batch(
      batch_size, tile, SERIES_LENGTH).items() if k != "target"}
  measure.log(f"jax inference batch {batch_size}: compiling and timing")
  times = measure.time_repeats(lambda: fused(variables, batch).block_until_ready(),
                               warmup=spec["warmup"], repeats=spec["repeats"])
  rates = [batch_size / t for t in times]
  overlap = tile // 4
  windows = len(tiling.TileGrid(GRANULE_PIXELS, GRANULE_PIXELS, tile, overlap))
  return {"tile": tile, "batch": batch_size, "conv_impl": model.temporal.impl,
          "seconds_per_batch": measure.stats(times), "tiles_per_second": measure.stats(rates),
          "granule": {"pixels": GRANULE_PIXELS, "overlap": overlap, "windows": windows,
                      "seconds": windows / measure.stats(rates)["median"]},
          "peak_rss_mib": measure.peak_rss_mib()}


if __name__ == "__main__":
  runtime.configure()
  measure.job_main({"peak": matmul_peak, "train": train, "inference": inference})
