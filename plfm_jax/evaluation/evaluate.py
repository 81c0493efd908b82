"""Scores a trained workdir's PLFM and the baselines on one split: `evaluate(config, workdir)`.

Every method is scored on the same batches, so on the same samples and the same clouds: the input
pipeline's evaluation mode draws each sample's clouds from the run seed and the series identity
(never from the batch size, sharding or order). The clouds are scored in scenarios
(`pipeline.SCENARIOS`), every method of a scenario given the same mask: the tool's own
detection ("detected", the masks users have), the exact mask (the upper bound), QA60-like opaque
cores with the detection, and the latest earlier date clouded too. In every scenario the
cloud-area metrics cover the exact footprint of the clouds, their haze and shadows (and the QA60
flags of the target date), so a mask that misses haze costs what the haze costs.

Samples are identified by `index`, their position in the TFDS split (the order evaluation reads
them in), and `sample`, `<zone>/patch_<p>/<first month>-<last month>` read from the record.

Outputs, in `<workdir>/eval/<split>/` (written by process 0; never half written: the folder is
assembled under a temporary name and renamed):
  per_sample.csv   one row per (scenario, sample, method) with every metric
  summary.json     NaN-aware means per scenario, method and metric, masks, clouds, timing, FID
  summary.md       the tables a person reads, one per scenario
  panels/<scenario>/*.png  cloudy | mask | earlier dates | SAR | each branch | fused |
                   composite | truth, for the first samples
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shutil
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from plfm_jax import run_setup
from plfm_jax import sharding
from plfm_jax import visualize
from plfm_jax import weight_files
from plfm_jax import workdirs
from plfm_jax.data import pipeline
from plfm_jax.data import tfds_data
from plfm_jax.data.layout import MONTHS
from plfm_jax.data.normalize import REFLECTANCE_SCALE
from plfm_jax.errors import InputError
from plfm_jax.evaluation import baselines
from plfm_jax.evaluation import fid
from plfm_jax.evaluation import inception
from plfm_jax.evaluation import metrics
from plfm_jax.evaluation import report
from plfm_jax.evaluation.shifted import shifted_metrics
from plfm_jax.models.plfm import INFERENCE_COMPONENTS, PLFM
from plfm_jax.prepare import prepare_dataset

# The reference's shifted protocol (docs/reference_model.md).
SHIFTED_PROTOCOL = {"border": 5, "max_shift": 3}
# Prefix of the metrics computed in the model's own normalisation where it is not reflectance.
NORMALIZED_PREFIX = "normalized_"
# Samples per panel image.
PANEL_ROWS = 4


def output_dir(workdir: str | pathlib.Path, split: str) -> pathlib.Path:
  """`<workdir>/eval/<split>`, a TFDS slice spelled as a folder name: test[:50%] -> test_-50pct."""
  name = split.translate(str.maketrans({"[": "_", "]": "", ":": "-", "%": "pct"}))
  return pathlib.Path(workdir) / "eval" / re.sub(r"[^\w.+-]", "_", name)


def _sample_name(record: Mapping[str, Any]) -> str:
  zone = record["zone"]
  zone = zone.decode() if isinstance(zone, bytes) else str(zone)
  months = [MONTHS[int(m) - 1] for m in np.asarray(record["months"])]
  return f"{zone}/patch_{int(record['patch'])}/{months[0]}-{months[-1]}"


def _to_host(tree: Any) -> Any:
  """Global arrays (sharded over devices and processes) as NumPy arrays on every process."""
  return multihost_utils.process_allgather(tree, tiled=True)


def _to_reflectance(image: jax.Array, scale: jax.Array) -> jax.Array:
  """Normalised (B, H, W, C) images back to reflectance in [0, 1] with their (B, 2) (low, span)."""
  low, span = scale[:, None, None, None, 0], scale[:, None, None, None, 1]
  return jnp.clip((image * span + low) / REFLECTANCE_SCALE, 0.0, 1.0)


def _reflectance_batch(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """The batch's images in reflectance, each date unscaled with its own `s2_scale`."""
  scale = batch["s2_scale"]
  dates = jax.vmap(_to_reflectance, in_axes=(1, 1), out_axes=1)
  return {**batch, "history": dates(batch["history"], scale[:, :-1]),
          "history_input": dates(batch["history_input"], scale[:, :-1]),
          "cloudy": _to_reflectance(batch["cloudy"], scale[:, -1]),
          "target": _to_reflectance(batch["target"], scale[:, -1])}


def _scores(images: Mapping[str, jax.Array], target: jax.Array,
            truth_mask: jax.Array) -> dict[str, jax.Array]:
  """{metric: (B, M)} of the M methods' images against the target."""
  # All methods in one (B * M) batch, sample-major so that the batch sharding carries over:
  # the metrics are compiled once instead of once per method.
  stacked = jnp.stack(list(images.values()), axis=1)
  b, m = stacked.shape[:2]
  flat = stacked.reshape(b * m, *stacked.shape[2:])
  target = jnp.repeat(target, m, axis=0)
  scores = metrics.standard_metrics(flat, target, jnp.repeat(truth_mask, m, axis=0))
  shifted = shifted_metrics(flat, target, **SHIFTED_PROTOCOL)
  scores.update({f"shifted_{k}": v for k, v in shifted.items()})
  return {k: v.reshape(b, m) for k, v in scores.items()}


def _make_step(model: PLFM, normalization: str):
  """The jitted evaluation of one global batch: (method images, (B, M) scores, per-sample facts).

  The facts, (B,) each: "cloud_coverage" (of the exact mask), "mask_coverage" (of the mask the
  methods were given), "mask_recall" (the share of the exact mask it holds), "mask_false_alarm"
  (the share of the rest it holds) and, for a calibrated model, "temporal_calibration", the mean
  weight the temporal correction was given (`PLFM.calibration`).

  Scores are in reflectance (clip(x / 10000, 0, 1)), the scale every variant shares; for a
  model trained in another normalisation also in that one, under NORMALIZED_PREFIX. There the
  baselines are computed from the reflectance of each date, and the model's outputs, which are
  in the cloudy date's normalisation, are unscaled with that date's (low, span).
  """

  @jax.jit
  def step(variables, batch):
    predictions = model.predict(variables, batch)
    images = baselines.method_images(batch, predictions)
    facts = _mask_facts(batch["cloud_mask"], batch["truth_mask"])
    if "calibration" in predictions:
      facts["temporal_calibration"] = predictions["calibration"].mean(axis=(1, 2, 3))
    if normalization == "reflectance":
      return images, _scores(images, batch["target"], batch["truth_mask"]), facts
    reflectance = _reflectance_batch(batch)
    scale = batch["s2_scale"][:, -1]
    reflectance_images = baselines.method_images(reflectance, {
        key: _to_reflectance(predictions[key], scale) for key in baselines.MODEL_OUTPUTS.values()})
    scores = _scores(reflectance_images, reflectance["target"], batch["truth_mask"])
    normalized = _scores(images, batch["target"], batch["truth_mask"])
    scores.update({NORMALIZED_PREFIX + k: v for k, v in normalized.items()})
    return images, scores, facts

  return step


def _mask_facts(mask: jax.Array, truth: jax.Array) -> dict[str, jax.Array]:
  """How the (B, H, W, 1) mask the methods were given compares with the exact one."""
  mask, truth = mask > 0.5, truth > 0.5
  area = lambda x: jnp.sum(x, axis=(1, 2, 3)).astype(jnp.float32)
  return {"cloud_coverage": jnp.mean(truth, axis=(1, 2, 3)),
          "mask_coverage": jnp.mean(mask, axis=(1, 2, 3)),
          "mask_recall": area(mask & truth) / jnp.maximum(area(truth), 1.0),
          "mask_false_alarm": area(mask & ~truth) / jnp.maximum(area(~truth), 1.0)}


def _column_order(metric_names) -> list[str]:
  """Reflectance before the model's own normalisation; in each, all-pixel metrics, then
  cloud-area, clear-area and shifted-protocol ones."""
  def key(name: str) -> tuple[bool, ...]:
    normalized = name.startswith(NORMALIZED_PREFIX)
    name = name.removeprefix(NORMALIZED_PREFIX)
    return normalized, name.startswith("shifted_"), name.endswith("_clear"), name.endswith("_cloud")
  return sorted(metric_names, key=key)


def _panel_columns(batch: Mapping[str, np.ndarray],
                   images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The panels' columns, with names short enough for 64 px tiles; optical images share each
  sample's contrast stretch (that of its ground truth), so that dark reflectance is visible and
  the columns compare."""
  history = batch["history_input"]
  stretch = visualize.stretch_like(batch["target"])
  dates = {f"t-{history.shape[1] - i}": stretch(history[:, i]) for i in range(history.shape[1])}
  return {"cloudy": stretch(batch["cloudy"]), "mask": batch["cloud_mask"], **dates,
          "SAR VV": batch["sar"], "temporal": stretch(images["temporal_branch"]),
          "SAR branch": stretch(images["sar_branch"]), "fused": stretch(images["plfm_fused"]),
          "composite": stretch(images["plfm_composite"]), "truth": stretch(batch["target"])}


# Scenarios `evaluate` scores by default, the one that leads the report first: the masks users
# have (the tool's own detection) before the upper bound of an exact mask.
DEFAULT_SCENARIOS = ("detected", "exact", "qa60", "history_clouded")


def run_evaluation(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                   split: str = "test", scenarios: tuple[str, ...] = DEFAULT_SCENARIOS,
                   fid_weights: str | pathlib.Path | None = None, num_panels: int = 8,
                   overwrite: bool = False,
                   weights: weight_files.Weights | None = None) -> dict[str, Any]:
  """Evaluates the workdir's best PLFM (or `weights`) and the baselines on `split`; writes
  `output_dir`.

  Args:
    config: the config the workdir was trained with (configs/plfm.py and the same overrides);
      `batch_size`, `data.crop_size`, `data.eval_crop_size` and `data.scenario` may differ (the
      batch size changes no score). Samples are centre crops of `data.eval_crop_size` (0: whole
      patches). With `weights`, only its data settings count: the model is the weights'.
    workdir: a train.py workdir, or with `weights` any folder (results and a synthetic dataset
      go there).
    split: TFDS split or slice, e.g. "test", "validation", "test[:100]".
    scenarios: what the methods are told of the clouds (`pipeline.SCENARIOS`), in report order.
    fid_weights: Inception-v3 weights file for FID (of the first scenario); None skips FID.
    num_panels: samples drawn in the PNG panels (the first ones of the split).
    overwrite: replace an existing output folder instead of refusing.
    weights: a loaded weights file to evaluate instead of the workdir's checkpoints.

  Returns:
    The summary, as written to summary.json (before its non-finite numbers are spelled out).

  Raises:
    InputError: the output exists (without `overwrite`), FID cannot be computed with
      `fid_weights`, no trained model, a config that does not fit it, an unknown scenario, or an
      unusable split.
  """
  started = time.perf_counter()
  sharding.maybe_initialize_distributed()
  workdir = pathlib.Path(workdir)
  out = output_dir(workdir, split)
  if out.exists() and not overwrite:
    raise InputError(out, "exists already; pass --overwrite to replace it")
  unknown = [s for s in scenarios if s not in pipeline.SCENARIOS]
  if unknown or not scenarios:
    raise InputError(",".join(scenarios) or "--scenarios",
                     f"scenarios must be some of {', '.join(pipeline.SCENARIOS)}")
  # Loaded first: unusable weights are refused before the evaluation rather than after it.
  inception_params = None if fid_weights is None else fid.load_fid_weights(fid_weights)
  run = _prepare(config, workdir, split, weights)
  per_scenario = {}
  for scenario in scenarios:
    per_scenario[scenario] = _evaluate_scenario(
        run, scenario, num_panels, keep_images=fid_weights is not None and not per_scenario)
  summary = _summary(run, per_scenario, fid_weights, inception_params, started)
  if jax.process_index() == 0:
    names = [_sample_name(run.source[i]) for i in range(run.num_samples)]
    _write_outputs(out, summary,
                   [row for scenario, results in per_scenario.items()
                    for row in results.rows(names, scenario)],
                   {scenario: results.panels() for scenario, results in per_scenario.items()})
  return summary


@dataclasses.dataclass(frozen=True)
class _Run:
  """What every scenario of an evaluation shares."""
  config: ml_collections.ConfigDict
  config_notes: list[str]
  workdir: pathlib.Path
  weights: weight_files.Weights | None
  split: str
  data_config: ml_collections.ConfigDict
  source: Any
  num_samples: int
  mesh: Any
  model: PLFM
  variables: Any
  step: Any


def _prepare(config: ml_collections.ConfigDict, workdir: pathlib.Path, split: str,
             weights: weight_files.Weights | None) -> _Run:
  """The config reconciled with the trained model, the data, the mesh and the variables."""
  if weights is None:
    config_notes = workdirs.check_model_config(config, workdir)
  else:
    config, config_notes = workdirs.with_trained_model(config, weights.config), []
  for note in config_notes if jax.process_index() == 0 else ():
    print(f"note: evaluating with a model setting that differs from training: {note}")
  setup = run_setup.setup_run(config, workdir)
  mesh, data_config = setup.mesh, setup.data_config
  source = tfds_data.data_source(data_config.tfds_dir, split)
  if len(source) < jax.process_count():
    raise InputError(split, f"has {len(source)} samples, fewer than the "
                     f"{jax.process_count()} processes")
  model = PLFM.from_config(config.model, training=False)
  if weights is None:
    variables = workdirs.best_variables(config, workdir, INFERENCE_COMPONENTS, model=model,
                                        sharding=sharding.replicated(mesh))
  else:
    variables = sharding.replicate(weights.variables, mesh)
  return _Run(config=config, config_notes=config_notes, workdir=workdir, weights=weights,
              split=split, data_config=data_config, source=source, num_samples=len(source),
              mesh=mesh, model=model, variables=variables,
              step=_make_step(model, config.data.s2_normalization))


def _evaluate_scenario(run: _Run, scenario: str, num_panels: int, *,
                       keep_images: bool) -> _Results:
  """Every batch of the split under `scenario`, scored."""
  data_config = run.data_config.copy_and_resolve_references()
  data_config.scenario = scenario
  results = _Results(run.num_samples, num_panels, keep_images=keep_images)
  started = time.perf_counter()
  local_batches = pipeline.make_iterator(data_config, split=run.split,
                                         global_batch_size=run.config.batch_size, train=False,
                                         seed=run.config.seed, num_epochs=1)
  for batch, indices in sharding.lockstep_batches(local_batches, num_samples=run.num_samples,
                                                  global_batch_size=run.config.batch_size,
                                                  mesh=run.mesh):
    results.add(indices, batch, *run.step(run.variables, batch))
  results.seconds = time.perf_counter() - started
  return results


def _fid(results: _Results, fid_weights: str | pathlib.Path | None,
         inception_params: inception.Params | None, scenario: str) -> dict:
  if fid_weights is None:
    return {"computed": False, "reason": "no --fid_weights given"}
  # The ground truth's features once, not once per method: the network is the costly part.
  truth = fid.fid_features(results.all_images("ground_truth"), inception_params)
  return {"computed": True, "inception_weights": str(fid_weights), "scenario": scenario,
          "values": {m: fid.fid_from_features(
              fid.fid_features(results.all_images(m), inception_params), truth)
                     for m in baselines.METHODS}}


def _summary(run: _Run, per_scenario: Mapping[str, _Results],
             fid_weights: str | pathlib.Path | None, inception_params: inception.Params | None,
             started: float) -> dict[str, Any]:
  config = run.config
  clouds = config.data.clouds
  loop_seconds = sum(r.seconds for r in per_scenario.values())
  facts = lambda name: {scenario: (float(np.nanmean(r.facts[name])) if name in r.facts
                                   else None) for scenario, r in per_scenario.items()}
  return {
      "split": run.split,
      "workdir": str(run.workdir.absolute()),
      "weights": None if run.weights is None else str(run.weights.path),
      "config_variant": config.get("variant", ""),
      "num_samples": run.num_samples,
      "image_size": pipeline.crop_size(run.data_config, train=False,
                                       patch_size=tfds_data.patch_size(run.data_config.tfds_dir)),
      "s2_normalization": config.data.s2_normalization,
      "metric_space": ("reflectance, clip(x / 10000, 0, 1); metrics prefixed "
                       f"{NORMALIZED_PREFIX!r} in the model's {config.data.s2_normalization} "
                       "normalisation" if config.data.s2_normalization != "reflectance" else
                       "reflectance, clip(x / 10000, 0, 1)"),
      "scenarios": list(per_scenario),
      "methods": list(baselines.METHODS),
      "metrics": {scenario: {method: metrics.average({k: v[:, i] for k, v in r.scores.items()})
                             for i, method in enumerate(baselines.METHODS)}
                  for scenario, r in per_scenario.items()},
      "masks": {name: facts(name) for name in ("mask_coverage", "mask_recall",
                                               "mask_false_alarm")},
      "clouds": {"seed": config.seed, "coverage_range": list(clouds.coverage),
                 "thin_fraction": clouds.thin_fraction, "haze_margin": clouds.haze_margin,
                 "shadows": clouds.shadows, "qa60_flags_added": True,
                 "mean_coverage": float(np.nanmean(
                     next(iter(per_scenario.values())).facts["cloud_coverage"]))},
      "shifted_protocol": SHIFTED_PROTOCOL,
      # Mean weight the calibrated temporal correction got (1: applied whole, 0: turned off).
      "temporal_calibration": facts("temporal_calibration"),
      "fid": _fid(next(iter(per_scenario.values())), fid_weights, inception_params,
                  next(iter(per_scenario))),
      "timing": {"total_seconds": time.perf_counter() - started,
                 "evaluation_loop_seconds": loop_seconds,
                 "samples_per_second": (run.num_samples * len(per_scenario)
                                        / max(loop_seconds, 1e-9)),
                 "batch_size": config.batch_size,
                 "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}"},
      "config_notes": run.config_notes,
  }


class _Results:
  """Scores, per-sample facts (cloud coverage, ...) and the images kept for panels (and FID), by
  split index."""

  def __init__(self, num_samples: int, num_panels: int, *, keep_images: bool):
    self.num_samples = num_samples
    self.num_panels = num_panels
    self.keep_images = keep_images
    self.scores: dict[str, np.ndarray] = {}
    self.facts: dict[str, np.ndarray] = {}
    self._panel_parts: list[dict[str, np.ndarray]] = []
    self._images: dict[str, list[np.ndarray]] = {}
    self.seconds = 0.0

  def add(self, indices: np.ndarray, batch: Mapping[str, jax.Array],
          images: Mapping[str, jax.Array], scores: Mapping[str, jax.Array],
          facts: Mapping[str, jax.Array]) -> None:
    """Takes one global batch's step outputs; rows with index -1 (padding) are dropped."""
    keep = indices >= 0
    scores, facts = _to_host((scores, facts))
    for name, values in scores.items():
      self.scores.setdefault(name, np.full((self.num_samples, len(baselines.METHODS)), np.nan))
      self.scores[name][indices[keep]] = values[keep]
    for name, values in facts.items():
      self.facts.setdefault(name, np.full((self.num_samples,), np.nan))[indices[keep]] = (
          values[keep])
    drawn = keep & (indices < self.num_panels)
    if not drawn.any() and not self.keep_images:
      return
    batch, images = _to_host((batch, images))
    if drawn.any():
      self._panel_parts.append({"index": indices[drawn], **{
          k: v[drawn] for k, v in _panel_columns(batch, images).items()}})
    if self.keep_images:
      # uint8, as FID's feature extractors see images, at a quarter of float32's memory.
      for name, image in {**images, "ground_truth": batch["target"]}.items():
        self._images.setdefault(name, []).append(visualize.to_uint8_rgb(image[keep]))

  def all_images(self, name: str) -> np.ndarray:
    """(N, H, W, 3) float32 images of a method (or "ground_truth") kept for FID."""
    return np.concatenate(self._images[name]).astype(np.float32) / 255

  def rows(self, names: list[str], scenario: str) -> list[dict[str, Any]]:
    """per_sample.csv: a row per (sample, method), metrics in `_column_order`."""
    columns = _column_order(self.scores)
    return [{"scenario": scenario, "index": i, "sample": names[i],
             **{k: f"{v[i]:.4f}" for k, v in self.facts.items()}, "method": method,
             **{k: format(float(self.scores[k][i, m]), ".7g") for k in columns}}
            for i in range(self.num_samples) for m, method in enumerate(baselines.METHODS)]

  def panels(self) -> dict[str, np.ndarray]:
    """{column: images} of the drawn samples in split order (batches hold them by process)."""
    if not self._panel_parts:
      return {}
    panels = {k: np.concatenate([p[k] for p in self._panel_parts]) for k in self._panel_parts[0]}
    order = np.argsort(panels.pop("index"))
    return {k: v[order] for k, v in panels.items()}


def _write_outputs(out: pathlib.Path, summary: Mapping[str, Any], rows: list[dict[str, Any]],
                   panels: Mapping[str, Mapping[str, np.ndarray]]) -> None:
  """Writes everything into a fresh folder next to `out`, then swaps it in."""
  partial = out.with_name(f".{out.name}.partial")
  shutil.rmtree(partial, ignore_errors=True)
  # Scenarios without a calibrated model have fewer fact columns: the union, in first-seen order.
  columns = list(dict.fromkeys(k for row in rows for k in row))
  report.write_csv(partial / "per_sample.csv", rows, columns)
  report.write_json(partial / "summary.json", summary)
  report.write_text(partial / "summary.md", report.summary_markdown(summary, baselines.LABELS))
  for scenario, columns_of in panels.items():
    count = len(next(iter(columns_of.values()))) if columns_of else 0
    for first in range(0, count, PANEL_ROWS):
      last = min(first + PANEL_ROWS, count) - 1
      image = visualize.panel({k: v[first:last + 1] for k, v in columns_of.items()},
                              max_rows=PANEL_ROWS)
      visualize.save_png(partial / "panels" / scenario / f"samples_{first:04d}-{last:04d}.png",
                         image)
  if out.exists():
    previous = out.with_name(f".{out.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    out.rename(previous)
    partial.rename(out)
    shutil.rmtree(previous)
  else:
    partial.rename(out)
