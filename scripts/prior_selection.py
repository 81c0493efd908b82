"""How the scales of the multi-scale prior were chosen: candidate splits on validation patches.

    .venv/bin/python scripts/prior_selection.py --workdirs=RUN,RUN [--out=FILE.json]

Each RUN is a `scripts/real_sample_results.py` workdir (its saved config and its built dataset).
On that run's `validation` split only (the held-out patches of its training zones, with the
evaluation's simulated clouds, haze and shadows), every candidate of CANDIDATES fills what the
tool's own detection finds (SCENARIO: the masks users have, not the exact one) and is scored by
cloud-area PSNR and SSIM in reflectance over everything the clouds changed. The choice: the
candidate with the highest PSNR averaged over the runs. Beside them, not chosen from,
GUARD_ABLATION: the prior with each of its guards (`gapfill.GUARDS`) left out in turn. Prints
Markdown tables and the choice; `--out` also keeps the numbers as JSON, {run folder name:
{candidate: {"psnr_cloud": .., "ssim_cloud": ..}}}. The test split is never read.
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Iterable

import jax
import numpy as np
from absl import flags

from plfm_jax import runtime
from plfm_jax import workdirs
from plfm_jax.data import pipeline
from plfm_jax.errors import InputError
from plfm_jax.evaluation import metrics
from plfm_jax.evaluation import report
from plfm_jax.models import gapfill

FLAGS = flags.FLAGS
SPLIT = "validation"
# What the methods are told of the clouds (pipeline.SCENARIOS): nothing, as most users' masks
# tell them; the tool's detection finds them.
SCENARIO = "detected"
# Candidate splits of the earlier dates into frequency bands: box-filter radii in pixels, finest
# first. None is the matched regression (no split).
CANDIDATES = {
    "matched regression (no split)": None,
    **{f"radius {r}": (r,) for r in (2, 4, 8, 16)},
    **{f"radii {', '.join(map(str, radii))}": radii
       for radii in ((1, 4), (2, 8), (1, 4, 16), (1, 2, 4, 8, 16), (1, 4, 16, 64))},
}

# The prior (MULTISCALE_RADII) with every guard, with each left out in turn, and with none.
GUARD_ABLATION = {
    "all guards": gapfill.GUARDS,
    **{f"without {left_out}": tuple(g for g in gapfill.GUARDS if g != left_out)
       for left_out in gapfill.GUARDS},
    "no guards": (),
}


def _method(radii: tuple[int, ...] | None,
            guards: tuple[str, ...] = gapfill.GUARDS) -> gapfill.GapFill:
  if radii is None:
    return gapfill.matched_regression
  return functools.partial(gapfill.matched_multiscale, radii=radii, guards=guards)


METHODS = {**{name: _method(radii) for name, radii in CANDIDATES.items()},
           **{name: _method(gapfill.MULTISCALE_RADII, guards)
              for name, guards in GUARD_ABLATION.items()}}


def scores(workdir: pathlib.Path) -> dict[str, dict[str, float]]:
  """{candidate: mean cloud-area psnr and ssim} on the run's validation split."""
  config = workdirs.saved_config(workdir)
  if config.data.s2_normalization != "reflectance":
    raise InputError(workdir, "was trained in another normalisation than reflectance")
  data_config = config.data.copy_and_resolve_references()
  data_config.tfds_dir = str(workdir / "tfds")
  data_config.scenario = SCENARIO

  @jax.jit
  def batch_scores(batch):
    out = {}
    for name, method in METHODS.items():
      image = method(batch["history"], batch["cloudy"], batch["cloud_mask"])
      found = metrics.standard_metrics(image, batch["target"], batch["truth_mask"])
      out[name] = {k: found[k] for k in ("psnr_cloud", "ssim_cloud")}
    return out

  per_sample: dict[str, dict[str, list[np.ndarray]]] = {}
  for batch in pipeline.make_iterator(data_config, split=SPLIT, global_batch_size=1,
                                      train=False, seed=config.seed, num_epochs=1):
    found = batch_scores({k: batch[k] for k in ("history", "cloudy", "cloud_mask", "target",
                                                "truth_mask")})
    for name, values in found.items():
      for metric, value in values.items():
        per_sample.setdefault(name, {}).setdefault(metric, []).append(np.asarray(value))
  return {name: metrics.average({k: np.concatenate(v) for k, v in values.items()})
          for name, values in per_sample.items()}


def choice(results: dict[str, dict[str, dict[str, float]]]) -> str:
  """The candidate with the highest cloud-area PSNR averaged over the runs."""
  return max(CANDIDATES, key=lambda name: np.mean([run[name]["psnr_cloud"]
                                                    for run in results.values()]))


def markdown(results: dict[str, dict[str, dict[str, float]]],
             names: Iterable[str] = tuple(CANDIDATES)) -> str:
  """The candidates `names` as rows, each run's validation PSNR / SSIM as columns; the best in
  bold."""
  columns = [(f"{metric} {run}", f"{run}: {name}", digits) for run in results
             for metric, name, digits in (("psnr_cloud", "PSNR cloud", 2),
                                          ("ssim_cloud", "SSIM cloud", 4))]
  means = {name: {f"{metric} {run}": found[name][metric] for run, found in results.items()
                  for metric in ("psnr_cloud", "ssim_cloud")} for name in names}
  return report.markdown_table(means, {}, columns)


def main(argv: list[str]) -> None:
  del argv
  runtime.configure(FLAGS.debug)
  results = {pathlib.Path(w).name: scores(pathlib.Path(w)) for w in FLAGS.workdirs}
  if FLAGS.out:
    pathlib.Path(FLAGS.out).write_text(json.dumps(results, indent=1) + "\n")
  print(markdown(results))
  print(f"\n{markdown(results, GUARD_ABLATION)}")
  print(f"\nchosen (highest mean validation PSNR): {choice(results)}")


if __name__ == "__main__":
  from plfm_jax import cli
  flags.DEFINE_list("workdirs", None, "real_sample_results.py workdirs.", required=True)
  flags.DEFINE_string("out", None, "JSON file for the numbers.")
  cli.run(main)
