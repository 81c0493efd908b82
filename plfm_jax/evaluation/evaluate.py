"""Scores a trained workdir's PLFM and the baselines on one split: `evaluate(config, workdir)`.

Every method is scored on the same batches, so on the same samples and the same clouds: the input
pipeline's evaluation mode draws each sample's clouds from the run seed and the series identity
(never from the batch size, sharding or order), and the cloud mask is the union of those
simulated clouds and the QA60 cloud flags of the target date (the real patches rarely have any).

Samples are identified by `index`, their position in the TFDS split (the order evaluation reads
them in), and `sample`, `<zone>/patch_<p>/<first month>-<last month>` read from the record.

Outputs, in `<workdir>/eval/<split>/` (written by process 0; never half written: the folder is
assembled under a temporary name and renamed):
  per_sample.csv   one row per (sample, method) with every metric
  summary.json     NaN-aware means per method and metric, clouds, timing, FID
  summary.md       the table a person reads
  panels/*.png     cloudy input | cloud mask | earlier dates | SAR | each branch | fused |
                   composite | ground truth, for the first samples
"""

from __future__ import annotations

import math
import pathlib
import re
import shutil
import time
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from plfm_jax import metrics
from plfm_jax import modeling
from plfm_jax import visualize
from plfm_jax.data import pipeline
from plfm_jax.data import tfds_data
from plfm_jax.data.layout import MONTHS
from plfm_jax.errors import InputError
from plfm_jax.evaluation import baselines
from plfm_jax.evaluation import report
from plfm_jax.train import parallel
from plfm_jax.train import restore
from plfm_jax.train import trainer

# The components predict() needs, each from the best checkpoint of the stage training it.
COMPONENTS = ("temporal", "generator", "head")
# The reference's shifted protocol (REFERENCE.md section 4).
SHIFTED_PROTOCOL = {"border": 5, "max_shift": 3}
# Config fields that must equal the checkpoint's: they fix the variables' shapes or what the
# model was trained to see. Other model fields (dtype, conv_impl, time_loop) only change numerics.
MUST_MATCH = ("model.temporal_features", "model.generator_features",
              "model.discriminator_features", "model.head_features", "model.head_inputs",
              "data.series_length", "data.s2_normalization")
# Samples per panel image.
PANEL_ROWS = 4


def output_dir(workdir: str | pathlib.Path, split: str) -> pathlib.Path:
  """`<workdir>/eval/<split>`, a TFDS slice spelled as a folder name: test[:50%] -> test_-50pct."""
  name = split.translate(str.maketrans({"[": "_", "]": "", ":": "-", "%": "pct"}))
  return pathlib.Path(workdir) / "eval" / re.sub(r"[^\w.+-]", "_", name)


def check_config(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> list[str]:
  """Compares `config` with the one the workdir was trained with.

  Returns:
    Notes on model fields that differ harmlessly (numerics only).

  Raises:
    InputError: no trained model in `workdir`, or a field of MUST_MATCH differs.
  """
  saved = trainer.config_dict(restore.saved_config(workdir))
  changes = trainer.config_changes(saved, trainer.config_dict(config))
  field = lambda change: change.split(":", 1)[0]
  fatal = [c for c in changes if field(c) in MUST_MATCH]
  if fatal:
    raise InputError(workdir, "the config differs from the one the model was trained with ("
                     + "; ".join(fatal) + "); pass the training run's --config and overrides")
  return [c for c in changes if field(c).startswith("model.")]


def _sample_name(record: Mapping[str, Any]) -> str:
  zone = record["zone"]
  zone = zone.decode() if isinstance(zone, bytes) else str(zone)
  months = [MONTHS[int(m) - 1] for m in np.asarray(record["months"])]
  return f"{zone}/patch_{int(record['patch'])}/{months[0]}-{months[-1]}"


def _to_host(tree: Any) -> Any:
  """Global arrays (sharded over devices and processes) as NumPy arrays on every process."""
  return multihost_utils.process_allgather(tree, tiled=True)


def _make_step(models: modeling.PLFMModels, head_inputs: str):
  """The jitted evaluation of one global batch: (method images, (B, M) scores, (B,) coverage)."""

  @jax.jit
  def step(variables, batch):
    predictions = modeling.predict(models, variables, batch, head_inputs=head_inputs)
    images = baselines.method_images(batch, predictions)
    # All methods in one (B * M) batch, sample-major so that the batch sharding carries over:
    # the metrics are compiled once instead of once per method.
    stacked = jnp.stack(list(images.values()), axis=1)
    b, m = stacked.shape[:2]
    flat = stacked.reshape(b * m, *stacked.shape[2:])
    target = jnp.repeat(batch["target"], m, axis=0)
    scores = metrics.standard_metrics(flat, target, jnp.repeat(batch["cloud_mask"], m, axis=0))
    shifted = metrics.shifted_metrics(flat, target, **SHIFTED_PROTOCOL)
    scores.update({f"shifted_{k}": v for k, v in shifted.items()})
    scores = {k: v.reshape(b, m) for k, v in scores.items()}
    return images, scores, batch["cloud_mask"].mean(axis=(1, 2, 3))

  return step


def _global_batches(data_config: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                    split: str, num_samples: int, mesh: jax.sharding.Mesh
                    ) -> Iterator[tuple[dict[str, jax.Array], np.ndarray]]:
  """(global batch, (B,) split index of each row, -1 for padding), over the split once.

  Process p reads samples p, p + P, p + 2P, ... (`pipeline.make_iterator`'s evaluation shards);
  its rows of a global batch follow the rows of processes 0..p-1. Every process runs as many
  batches as the longest shard needs, padding short and missing batches, so that the jitted
  step runs in lockstep on every host.
  """
  processes = jax.process_count()
  local_size = config.batch_size // processes
  if num_samples < processes:
    raise InputError(split, f"has {num_samples} samples, fewer than the {processes} processes")
  iterator = pipeline.make_iterator(data_config, split=split, global_batch_size=config.batch_size,
                                    train=False, seed=config.seed, num_epochs=1)
  num_batches = math.ceil(math.ceil(num_samples / processes) / local_size)
  first = None
  for j in range(num_batches):
    local = next(iterator, None)
    # A shard shorter than the longest repeats its first batch; those rows are padding.
    local = first if local is None else trainer.pad_batch(local, local_size)[0]
    first = local if first is None else first
    positions = j * local_size + np.arange(local_size)
    indices = (np.arange(processes)[:, None] + processes * positions[None, :]).ravel()
    indices[indices >= num_samples] = -1
    yield parallel.global_batch(local, mesh), indices


def _column_order(metric_names) -> list[str]:
  """All-pixel metrics, then cloud-area, clear-area and shifted-protocol ones."""
  return sorted(metric_names, key=lambda n: (n.startswith("shifted_"), n.endswith("_clear"),
                                             n.endswith("_cloud")))


def _panel_columns(batch: Mapping[str, np.ndarray],
                   images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  history = batch["history"]
  dates = {f"date t-{history.shape[1] - i}": history[:, i] for i in range(history.shape[1])}
  return {"cloudy input": batch["cloudy"], "cloud mask": batch["cloud_mask"], **dates,
          "SAR VV": batch["sar"], "temporal branch": images["temporal_branch"],
          "SAR branch": images["sar_branch"], "PLFM fused": images["plfm_fused"],
          "PLFM composite": images["plfm_composite"], "ground truth": batch["target"]}


def evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
             split: str = "test", fid_weights: str | pathlib.Path | None = None,
             num_panels: int = 8, overwrite: bool = False) -> dict[str, Any]:
  """Evaluates the workdir's best PLFM and the baselines on `split`; writes `output_dir`.

  Args:
    config: the config the workdir was trained with (configs/plfm.py and the same overrides);
      `batch_size` and `data.image_size` may differ (the batch size changes no score).
    workdir: a train.py workdir.
    split: TFDS split or slice, e.g. "test", "validation", "test[:100]".
    fid_weights: Inception-v3 weights file for FID; None skips FID (summary.json says so).
    num_panels: samples drawn in the PNG panels (the first ones of the split).
    overwrite: replace an existing output folder instead of refusing.

  Returns:
    The summary, as written to summary.json (before its non-finite numbers are spelled out).

  Raises:
    InputError: the output exists (without `overwrite`), FID cannot be computed with
      `fid_weights`, no trained model, a config that does not fit it, or an unusable split.
  """
  started = time.perf_counter()
  parallel.maybe_initialize_distributed()
  workdir = pathlib.Path(workdir)
  out = output_dir(workdir, split)
  if out.exists() and not overwrite:
    raise InputError(out, "exists already; pass --overwrite to replace it")
  if fid_weights is not None:
    # Refuses unusable weights before the evaluation rather than after it; the FID below then
    # takes them from metrics' cache.
    metrics.load_fid_weights(fid_weights)
  config_notes = check_config(config, workdir)
  for note in config_notes:
    print(f"note: evaluating with a model setting that differs from training: {note}")

  tfds_dir, _ = trainer.prepare_dataset(config, workdir)
  data_config = config.data.copy_and_resolve_references()
  data_config.tfds_dir = tfds_dir
  source = tfds_data.data_source(tfds_dir, split, image_size=config.data.stored_size)
  num_samples = len(source)
  devices = jax.devices()[:config.train.num_devices] if config.train.num_devices > 0 else None
  mesh = parallel.make_mesh(devices)
  parallel.check_batch_size(config.batch_size, mesh)
  models = modeling.build_models(config.model)
  variables = restore.best_variables(config, workdir, COMPONENTS, models=models,
                                     sharding=parallel.replicated(mesh))

  step = _make_step(models, config.model.head_inputs)
  results = _Results(num_samples, num_panels, keep_images=fid_weights is not None)
  loop_started = time.perf_counter()
  for batch, indices in _global_batches(data_config, config, split, num_samples, mesh):
    results.add(indices, batch, *step(variables, batch))
  loop_seconds = time.perf_counter() - loop_started

  fid = {"computed": False, "reason": "no --fid_weights given"}
  if fid_weights is not None:
    # The ground truth's features once, not once per method: the network is the costly part.
    truth = metrics.fid_features(results.all_images("ground_truth"), fid_weights)
    fid = {"computed": True, "inception_weights": str(fid_weights),
           "values": {m: metrics.fid_from_features(
               metrics.fid_features(results.all_images(m), fid_weights), truth)
                      for m in baselines.METHODS}}

  clouds = config.data.clouds
  summary = {
      "split": split,
      "workdir": str(workdir.absolute()),
      "config_variant": config.get("variant", ""),
      "num_samples": num_samples,
      "image_size": config.data.image_size,
      "methods": list(baselines.METHODS),
      "metrics": {method: metrics.average({k: v[:, i] for k, v in results.scores.items()})
                  for i, method in enumerate(baselines.METHODS)},
      "clouds": {"seed": config.seed, "coverage_range": list(clouds.coverage),
                 "thin_fraction": clouds.thin_fraction, "shadows": clouds.shadows,
                 "qa60_flags_added": True, "mean_coverage": float(results.coverage.mean())},
      "shifted_protocol": SHIFTED_PROTOCOL,
      "fid": fid,
      "timing": {"total_seconds": time.perf_counter() - started,
                 "evaluation_loop_seconds": loop_seconds,
                 "samples_per_second": num_samples / max(loop_seconds, 1e-9),
                 "batch_size": config.batch_size,
                 "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}"},
      "config_notes": config_notes,
  }
  if jax.process_index() == 0:
    names = [_sample_name(source[i]) for i in range(num_samples)]
    _write_outputs(out, summary, results.rows(names), results.panels())
  return summary


class _Results:
  """Scores, cloud coverage and the images kept for panels (and FID), by split index."""

  def __init__(self, num_samples: int, num_panels: int, *, keep_images: bool):
    self.num_samples = num_samples
    self.num_panels = num_panels
    self.keep_images = keep_images
    self.scores: dict[str, np.ndarray] = {}
    self.coverage = np.zeros((num_samples,), np.float64)
    self._panel_parts: list[dict[str, np.ndarray]] = []
    self._images: dict[str, list[np.ndarray]] = {}

  def add(self, indices: np.ndarray, batch: Mapping[str, jax.Array],
          images: Mapping[str, jax.Array], scores: Mapping[str, jax.Array],
          coverage: jax.Array) -> None:
    """Takes one global batch's step outputs; rows with index -1 (padding) are dropped."""
    keep = indices >= 0
    scores, coverage = _to_host((scores, coverage))
    for name, values in scores.items():
      self.scores.setdefault(name, np.full((self.num_samples, len(baselines.METHODS)), np.nan))
      self.scores[name][indices[keep]] = values[keep]
    self.coverage[indices[keep]] = coverage[keep]
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

  def rows(self, names: list[str]) -> list[dict[str, Any]]:
    """per_sample.csv: a row per (sample, method), metrics in `_column_order`."""
    columns = _column_order(self.scores)
    return [{"index": i, "sample": names[i], "cloud_coverage": f"{self.coverage[i]:.4f}",
             "method": method,
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
                   panels: Mapping[str, np.ndarray]) -> None:
  """Writes everything into a fresh folder next to `out`, then swaps it in."""
  partial = out.with_name(f".{out.name}.partial")
  shutil.rmtree(partial, ignore_errors=True)
  report.write_csv(partial / "per_sample.csv", rows, list(rows[0]))
  report.write_json(partial / "summary.json", summary)
  report.write_text(partial / "summary.md", report.summary_markdown(summary, baselines.LABELS))
  count = len(next(iter(panels.values()))) if panels else 0
  for first in range(0, count, PANEL_ROWS):
    last = min(first + PANEL_ROWS, count) - 1
    image = visualize.panel({k: v[first:last + 1] for k, v in panels.items()},
                            max_rows=PANEL_ROWS)
    visualize.save_png(partial / "panels" / f"samples_{first:04d}-{last:04d}.png", image)
  if out.exists():
    previous = out.with_name(f".{out.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    out.rename(previous)
    partial.rename(out)
    shutil.rmtree(previous)
  else:
    partial.rename(out)
