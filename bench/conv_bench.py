"""Times lax vs matmul convolutions (forward + backward) on PLFM's shapes; prints JSON.

Usage: .venv/bin/python -m bench.conv_bench [--reps=5] [--only=SUBSTRING] [--dtype=float32]

Both implementations and a reference dense matmul run interleaved in one process and medians
are reported, so that load from other processes hits all alike; `vs_matmul` is each time's
GFLOP/s over the reference matmul's GFLOP/s measured in the same rounds. GFLOP/s count direct
convolution FLOPs (2 * Ho * Wo * k * k * Cin * Cout per pass, 3 passes for forward + backward),
so Winograd, which does fewer, can exceed the matmul peak.
"""

import json
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from plfm_jax import cli

from plfm_jax.models import conv as conv_lib
from plfm_jax.models.conv import conv2d, matmul_route, upsample_conv2d

# (name, input H = W, Cin, Cout, kernel, stride, upsample), batch 1. With upsample, lax runs
# nearest 2x upsampling then the conv (as a plain port does), matmul the fused
# `upsample_conv2d`; both count the FLOPs of the direct conv on the upsampled image.
CASES = [
    ("convlstm1 3x3 (3+128)->512 @256", 256, 131, 512, 3, 1, False),
    ("convlstm2 3x3 (128+64)->256 @256", 256, 192, 256, 3, 1, False),
    ("convlstm3 3x3 (64+32)->128 @256", 256, 96, 128, 3, 1, False),
    ("convlstm1 t=0 3x3 3->512 @256", 256, 3, 512, 3, 1, False),
    ("temporal out 3x3 32->3 @256", 256, 32, 3, 3, 1, False),
    ("unet down1 4x4/2 3->128 @256", 256, 3, 128, 4, 2, False),
    ("unet down2 4x4/2 128->256 @128", 128, 128, 256, 4, 2, False),
    ("unet down3 4x4/2 256->512 @64", 64, 256, 512, 4, 2, False),
    ("unet down5 4x4/2 1024->1024 @16", 16, 1024, 1024, 4, 2, False),
    ("unet up 4x4 2048->512 @32", 32, 2048, 512, 4, 1, False),
    ("unet up 4x4 512->128 @128", 128, 512, 128, 4, 1, False),
    ("unet out 4x4 256->3 @256", 256, 256, 3, 4, 1, False),
    ("unet up2x+4x4 2048->512 16->32", 16, 2048, 512, 4, 1, True),
    ("unet up2x+4x4 512->128 64->128", 64, 512, 128, 4, 1, True),
    ("unet up2x+4x4 256->3 128->256", 128, 256, 3, 4, 1, True),
]
# Reference dense matmul, the im2col shape of a ConvLSTM gate conv over a 64 x 64 image.
PEAK_SHAPE = (64 * 64, 9 * 131, 512)


def _median_times(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
  for fn in fns.values():
    jax.block_until_ready(fn())  # compile and warm up
  times = {name: [] for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t0)
  return {name: statistics.median(ts) for name, ts in times.items()}


def _peak_fn(dtype) -> Callable[[], jax.Array]:
  m, k, n = PEAK_SHAPE
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(m, k)), dtype)
  b = jnp.asarray(rng.normal(size=(k, n)), dtype)
  f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
  return lambda: f(a, b)


def _upsampled_conv(x: jax.Array, kernel: jax.Array, impl: str) -> jax.Array:
  if impl == "matmul":
    return upsample_conv2d(x, kernel, impl=impl)
  return conv2d(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2), kernel, impl=impl)


def bench_case(hw: int, cin: int, cout: int, k: int, s: int, upsample: bool, dtype,
               reps: int) -> dict:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(1, hw, hw, cin)), dtype)
  kernel = jnp.asarray(rng.normal(size=(k, k, cin, cout)) * 0.05, dtype)
  ho = 2 * hw if upsample else -(-hw // s)
  ct = jnp.asarray(rng.normal(size=(1, ho, ho, cout)), dtype)
  fns = {"peak_matmul": _peak_fn(dtype)}
  for impl in ("lax", "matmul"):
    if upsample:
      conv = lambda x, w, impl=impl: _upsampled_conv(x, w, impl)
    else:
      conv = lambda x, w, impl=impl: conv2d(x, w, strides=s, impl=impl)
    fwd = jax.jit(conv)
    fwd_bwd = jax.jit(lambda x, w, ct, conv=conv: jax.vjp(conv, x, w)[1](ct))
    fns[f"{impl}_fwd"] = lambda fwd=fwd: fwd(x, kernel)
    fns[f"{impl}_fwd_bwd"] = lambda fwd_bwd=fwd_bwd: fwd_bwd(x, kernel, ct)
  times = _median_times(fns, reps)
  peak = 2 * np.prod(PEAK_SHAPE) / times.pop("peak_matmul") / 1e9
  flops = 2 * ho * ho * k * k * cin * cout
  if upsample and hw * hw >= conv_lib._FUSED_UPSAMPLE_MIN_PIXELS:
    route = "fused upsample+" + matmul_route(x.shape, (3, 3, cin, 4 * cout), s, dtype)
  elif upsample:
    route = "upsample, " + matmul_route((1, ho, ho, cin), kernel.shape, s, dtype)
  else:
    route = matmul_route(x.shape, kernel.shape, s, dtype)
  out = {"matmul_route": route,
         "peak_matmul_gflops": round(peak, 1)}
  for name, t in times.items():
    gflops = flops * (3 if name.endswith("fwd_bwd") else 1) / t / 1e9
    out[name] = {"seconds": round(t, 4), "gflops": round(gflops, 1),
                 "vs_matmul": round(gflops / peak, 2)}
  out["speedup_fwd_bwd"] = round(times["lax_fwd_bwd"] / times["matmul_fwd_bwd"], 2)
  return out


FLAGS = flags.FLAGS
flags.DEFINE_integer("reps", 5, "Timed rounds per case.", lower_bound=1)
flags.DEFINE_string("only", "", "Run only the cases whose name contains this.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")


def main(argv) -> None:
  del argv
  dtype = jnp.dtype(FLAGS.dtype)
  report = {"backend": jax.default_backend(), "dtype": FLAGS.dtype, "reps": FLAGS.reps,
            "peak_matmul_shape": PEAK_SHAPE, "cases": {}}
  for name, *case in CASES:
    if FLAGS.only in name:
      report["cases"][name] = bench_case(*case, dtype, FLAGS.reps)
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  cli.run(main)
