"""Per-component size of the PLFM model.

Usage: `python -m plfm_jax.summary --config configs/plfm.py[:variant]`.

Prints a table (params, batch_stats, total, output shape, forward GFLOPs per sample from XLA's
cost analysis) and, as its last line, JSON {component: params + batch_stats}. Shapes come from
`jax.eval_shape`, so nothing is initialised or run, even for the paper config.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Sequence

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from plfm_jax import workdirs
from plfm_jax.data.layout import SERIES_LENGTH
from plfm_jax.models.plfm import PLFM, count_variables


def summarize(config: Any) -> list[dict[str, Any]]:
  """One row per component: name, params, batch_stats, total, output shape, forward GFLOPs."""
  model = PLFM.from_config(config.model)
  variables = workdirs.variable_shapes(config, model)
  rows = []
  inputs_of = model.component_inputs(image_size=config.data.crop_size,
                                     series_length=SERIES_LENGTH)
  for name, inputs in inputs_of.items():
    module = getattr(model, name)
    apply = jax.jit(functools.partial(module.apply, train=False))
    cost = apply.lower(variables[name], *inputs).cost_analysis() or {}
    rows.append(dict(
        name=name,
        params=count_variables(variables[name]["params"]),
        batch_stats=count_variables(variables[name].get("batch_stats", {})),
        total=count_variables(variables[name]),
        output_shape=tuple(jax.eval_shape(apply, variables[name], *inputs).shape),
        gflops=cost.get("flops", float("nan")) / 1e9,
    ))
  return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """Aligned text table of `summarize` rows."""
  header = ("component", "params", "batch_stats", "total", "output shape", "GFLOPs/sample")
  lines = [(r["name"], f"{r['params']:,}", f"{r['batch_stats']:,}", f"{r['total']:,}",
            str(r["output_shape"]), f"{r['gflops']:.4g}") for r in rows]
  widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
  return "\n".join(
      "  ".join(cell.ljust(w) if i in (0, 4) else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(line, widths)))
      for line in [header, *lines])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = flags.FLAGS.config
  rows = summarize(config)
  print(f"PLFM model, config variant {config.variant!r}, "
        f"{config.data.crop_size} px, forward pass per sample")
  print(format_table(rows))
  print(json.dumps({r["name"]: r["total"] for r in rows}))


if __name__ == "__main__":
  from plfm_jax import cli
  config_flags.DEFINE_config_file("config", "configs/plfm.py", "Config file[:variant].",
                                  lock_config=True)
  cli.run(main)
