"""Input pipeline: `plfm_series` records to model batches, with grain and without TensorFlow.

    records (tfds.data_source) -> [shuffle, repeat] -> per-process shard
      -> transform_record (crop, flips, simulated clouds, the masks of the scenario, the model's
         input by `plfm_jax.data.inputs.model_example`, normalisation) -> batch

Batches are dicts of float32 NumPy arrays as in docs/architecture.md: `history`,
`history_mask`, `history_input`, `target`, `cloudy`, `cloud_mask`, `truth_mask`, `sar`,
`s2_scale`. Every random choice of a sample (crop, flips, clouds) comes from a
generator seeded by the run seed, the epoch and the series identity (zone, patch, months): the same
sample looks the same whatever the batch size, the sharding, the worker count or the record
order, so evaluation gives every method the same clouds (in every pass), and training is
reproducible from a seed.
"""

from __future__ import annotations

import zlib
from typing import Any, Mapping, Sequence

import grain
import jax
import numpy as np

from plfm_jax.data import inputs
from plfm_jax.data.clouds import simulate_clouds
from plfm_jax.data.normalize import (REFLECTANCE_SCALE, qa60_cloud_mask, s1_db_to_unit,
                                     s2_reflectance, s2_scale)
from plfm_jax.data.tfds_data import data_source, patch_size
from plfm_jax.errors import InputError
from plfm_jax.masks.detect import DEFAULT as DEFAULT_DETECTION, DetectionSettings

BATCH_KEYS = ("history", "history_mask", "history_input", "target", "cloudy", "cloud_mask",
              "truth_mask", "sar", "s2_scale")
# What the model is told of the simulated clouds, and what it is given:
#   exact            the exact mask of every pixel the clouds changed (the upper bound)
#   detected         nothing: the tool's own detection (`plfm_jax.masks.detect`)
#   qa60             the opaque cores only, as QA60 flags them, and the tool's detection
#   history_clouded  nothing, and the latest earlier date has clouds of its own
# QA60 flags stored in the dataset join the given masks of every date in all of them.
SCENARIOS = ("exact", "detected", "qa60", "history_clouded")
# Distinguishes the shuffle's seed from the per-sample seeds derived from the same run seed.
_SHUFFLE_STREAM = 1


def sample_rng(seed: int, record: Mapping[str, Any], epoch: int = 0) -> np.random.Generator:
  """The generator of one sample's crop, flips and clouds: from seed, epoch and series identity."""
  zone = record["zone"]
  zone = zone.encode() if isinstance(zone, str) else bytes(zone)
  identity = [zlib.crc32(zone), int(record["patch"]), *np.asarray(record["months"]).tolist()]
  return np.random.default_rng([seed, epoch, *identity])


def transform_record(record: Mapping[str, Any], rng: np.random.Generator,
                     data_config: Mapping[str, Any], *, train: bool,
                     detection: DetectionSettings = DEFAULT_DETECTION) -> dict[str, np.ndarray]:
  """One `plfm_series` record to one example with the BATCH_KEYS (float32, no batch axis).

  Training crops `crop_size` at a random position, flips at random and, with `time_reversal`,
  reads half the series backwards (the earliest date becomes the one to restore, a change of
  season the training data may lack); evaluation crops the centre (`eval_crop_size`) and does
  not flip. The clouds (in reflectance) always come from `rng`; `scenario` decides what the
  model is told of them (SCENARIOS). Every image is then normalised with the (low, span) of its
  stored, cloud-free date (`s2_scale`). Reads `crop_size`, `eval_crop_size`, `s2_normalization`,
  `flips`, `time_reversal`, `clouds` and `scenario` of `data_config` (the `data` section of
  configs/plfm.py). `detection` holds the thresholds of the scenarios that detect.
  """
  s2, s1, cm = (np.asarray(record[k]) for k in ("s2", "s1", "cm"))
  if train and data_config["time_reversal"] and rng.random() < 0.5:
    # The series read backwards: the first date restored from the later ones.
    s2, s1, cm = s2[::-1], s1[::-1], cm[::-1]
  # Only the last date's S1 is used; a leading axis of 1 keeps H, W on axes 1 and 2 of every
  # array, so one crop and one flip serve all of them.
  sar = s1[-1:]
  stored = s2.shape[1]
  size = crop_size(data_config, train=train, patch_size=stored)
  if train:
    top, left = rng.integers(0, stored - size + 1, size=2)
  else:
    top = left = (stored - size) // 2
  window = (slice(None), slice(top, top + size), slice(left, left + size))
  s2, sar, cm = s2[window], sar[window], cm[window]
  if train and data_config["flips"]:
    for axis in (1, 2):
      if rng.random() < 0.5:
        s2, sar, cm = (np.flip(x, axis) for x in (s2, sar, cm))

  # Scaled after cropping: the model sees each image scaled by what it sees, as at inference.
  scale = s2_scale(s2, data_config["s2_normalization"])
  dates = s2_reflectance(s2)
  target = dates[-1]
  clouds = data_config["clouds"]
  simulate = lambda image: simulate_clouds(
      image, rng, coverage=tuple(clouds["coverage"]), thin_fraction=clouds["thin_fraction"],
      haze_margin=clouds["haze_margin"], shadows=clouds["shadows"])
  simulated = simulate(target)
  history = dates[:-1].copy()
  scenario = data_config["scenario"]
  if scenario not in SCENARIOS:
    raise ValueError(f"data.scenario must be one of {SCENARIOS}, got {scenario!r}")
  if scenario == "history_clouded":
    history[-1] = simulate(history[-1]).cloudy
  qa60 = qa60_cloud_mask(cm)
  told = {"exact": simulated.mask, "qa60": simulated.opaque}.get(scenario)
  example = inputs.model_example(
      history, simulated.cloudy, length=len(history), history_masks=qa60[:-1],
      cloud_mask=qa60[-1] if told is None else qa60[-1] | told,
      masking=inputs.EXACT if scenario == "exact" else inputs.Masking(settings=detection))
  return {
      "history": _normalize(example["history"], scale[:-1]),
      "history_mask": example["history_mask"],
      "history_input": _normalize(history, scale[:-1]),
      "target": _normalize(target, scale[-1]),
      "cloudy": _normalize(simulated.cloudy, scale[-1]),
      "cloud_mask": example["cloud_mask"],
      "truth_mask": (simulated.mask | qa60[-1])[..., None].astype(np.float32),
      "sar": s1_db_to_unit(sar[0]),
      "s2_scale": scale,
  }


def _normalize(reflectance: np.ndarray, scale: np.ndarray) -> np.ndarray:
  """Reflectance images (..., H, W, 3) in the model's normalisation, by their (..., 2) (low,
  span) in digital numbers (`s2_scale`), clipped to [0, 1]."""
  low, span = scale[..., 0, None, None, None], scale[..., 1, None, None, None]
  stored = reflectance * np.float32(REFLECTANCE_SCALE)
  return np.clip((stored - low) / span, 0.0, 1.0).astype(np.float32)


def crop_size(data_config: Mapping[str, Any], *, train: bool, patch_size: int) -> int:
  """Side of the crops of patches of `patch_size` pixels: `crop_size` in training, else
  `eval_crop_size` (0: whole patches)."""
  size = data_config["crop_size"] if train else data_config["eval_crop_size"] or patch_size
  if size > patch_size:
    name = "data.crop_size" if train else "data.eval_crop_size"
    raise InputError(data_config["tfds_dir"], f"{name} {size} is larger than the dataset's "
                     f"{patch_size} px patches")
  return size


class _Example:
  """Reads record `key` and transforms it (a class, not a closure: worker processes pickle it)."""

  def __init__(self, source: Sequence[Mapping[str, Any]], data_config: Mapping[str, Any], *,
               train: bool, seed: int):
    self._source = source
    self._data_config = data_config
    self._train = train
    self._seed = seed

  def __call__(self, key_epoch: tuple[int, int]) -> dict[str, np.ndarray]:
    key, epoch = key_epoch
    record = self._source[key]
    # Training varies a sample's augmentation and clouds per epoch; evaluation repeats them.
    rng = sample_rng(self._seed, record, epoch if self._train else 0)
    return transform_record(record, rng, self._data_config, train=self._train)


def _record_keys(num_records: int, *, train: bool, seed: int, num_epochs: int | None,
                 shard_index: int, shard_count: int) -> grain.MapDataset:
  """(record key, epoch) pairs of this shard, in reading order.

  Training shuffles every epoch with the same permutation on every process and deals the
  global order out round-robin, so the shards of an epoch are disjoint and change per epoch;
  the order is cut to a multiple of shard_count so that every process gets as many batches.
  Evaluation reads in record order once per epoch and keeps every record.
  """
  keys = grain.MapDataset.range(num_records)
  if train:
    shuffle_seed = int(np.random.SeedSequence([seed, _SHUFFLE_STREAM]).generate_state(1)[0])
    keys = keys.shuffle(seed=shuffle_seed)
  if num_epochs is None and not train:
    num_epochs = 1
  keys = keys.repeat(num_epochs)
  keys = keys.map_with_index(lambda position, key: (key, position // num_records))
  if train and num_epochs is not None:
    keys = keys[:len(keys) // shard_count * shard_count]
  return keys[shard_index::shard_count]


def make_iterator(data_config: Mapping[str, Any], *, split: str, global_batch_size: int,
                  train: bool, seed: int, num_epochs: int | None = None,
                  shard_index: int | None = None, shard_count: int | None = None
                  ) -> grain.DatasetIterator:
  """An iterator of this process's batches of `split`, with `get_state()` / `set_state()`.

  Args:
    data_config: the `data` section of configs/plfm.py; the dataset must be built already
      (`tfds_builders.plfm_series.build.ensure_built`).
    split: TFDS split, e.g. "train", "validation" or "train[:90%]".
    global_batch_size: batch size over all processes; each gets global_batch_size // shard_count.
    train: shuffle, random crops, flips and drop the last incomplete batch; otherwise read in
      order with centre crops and keep every sample.
    seed: non-negative seed of the shuffle, augmentation and clouds.
    num_epochs: passes over the split; None repeats forever in training and reads once otherwise.
    shard_index, shard_count: this process's shard; default jax.process_index() and
      jax.process_count(). Training gives every shard as many batches; evaluation shards may
      differ by one sample, and so by one (incomplete) batch.

  With `data_config["worker_count"]` > 0, grain reads its absl flags when it starts the
  workers: programs that do not run under `absl.app` parse them first
  (`absl.flags.FLAGS.mark_as_parsed()` keeps the defaults).
  """
  if seed < 0:
    raise ValueError(f"seed must be non-negative, got {seed}")
  if shard_index is None:
    shard_index = jax.process_index()
  if shard_count is None:
    shard_count = jax.process_count()
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, shard_count={shard_count})")
  if global_batch_size < 1 or global_batch_size % shard_count:
    raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of the "
                     f"shard count {shard_count}")
  source = data_source(data_config["tfds_dir"], split)
  crop_size(data_config, train=train, patch_size=patch_size(data_config["tfds_dir"]))
  keys = _record_keys(len(source), train=train, seed=seed, num_epochs=num_epochs,
                      shard_index=shard_index, shard_count=shard_count)
  examples = keys.map(_Example(source, data_config, train=train, seed=seed))
  read_options = grain.ReadOptions(num_threads=data_config["read_threads"],
                                   prefetch_buffer_size=data_config["prefetch_buffer_size"])
  examples = examples.to_iter_dataset(read_options)
  if data_config["worker_count"] > 0:
    # Workers take samples round-robin and batching follows, so batches are the same for any
    # worker count (batching inside the workers would group each worker's samples instead).
    examples = examples.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=data_config["worker_count"]))
  batches = examples.batch(global_batch_size // shard_count, drop_remainder=train)
  return iter(batches)

