"""The grain input pipeline: batches, augmentation, simulated clouds, shards and iterator state."""

from __future__ import annotations

import hashlib
import itertools

from absl import flags
import numpy as np
import pytest

from configs.plfm import data_config
from plfm_jax.data.normalize import QA60_CLOUD_BITS, s1_db_to_unit
from plfm_jax.data.pipeline import BATCH_KEYS, make_iterator, sample_rng, transform_record
from plfm_jax.data.synthetic import write_synthetic_dataset
from plfm_jax.data.tfds_data import data_source
from plfm_jax.errors import InputError
from tests.test_masks_detect import _far_from
from tfds_builders.plfm_series.build import ensure_built

STORED = 40
CROP = 32
SPLIT_SIZES = {"training": 16, "validation": 4, "test": 4}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  """The data config of a built synthetic dataset: 16 train / 4 validation / 4 test, 40 px."""
  root = tmp_path_factory.mktemp("pipeline")
  raw = write_synthetic_dataset(root / "raw", image_size=STORED, series_per_split=SPLIT_SIZES,
                                patches_per_zone=6)
  ensure_built(root / "tfds", manual_dir=raw)
  cfg = data_config()
  cfg.tfds_dir = str(root / "tfds")
  cfg.crop_size = CROP
  cfg.eval_crop_size = CROP
  return cfg


def _batches(cfg, n: int | None = None, **kwargs) -> list[dict[str, np.ndarray]]:
  """The first `n` batches (all when None) of an iterator over one shard of one process."""
  kwargs.setdefault("shard_index", 0)
  kwargs.setdefault("shard_count", 1)
  return list(itertools.islice(make_iterator(cfg, **kwargs), n))


def _concat(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.concatenate([b[k] for b in batches]) for k in BATCH_KEYS}


def _fingerprints(batches: list[dict[str, np.ndarray]]) -> list[str]:
  """One digest per sample of its target image: which series it is, when not augmented."""
  return [hashlib.sha1(t.tobytes()).hexdigest() for t in _concat(batches)["target"]]


def test_batch_keys_shapes_dtypes_and_ranges(config):
  [batch] = _batches(config, 1, split="train", global_batch_size=4, train=True, seed=0)
  shapes = {"history": (4, 3, CROP, CROP, 3), "history_mask": (4, 3, CROP, CROP, 1),
            "history_input": (4, 3, CROP, CROP, 3), "target": (4, CROP, CROP, 3),
            "cloudy": (4, CROP, CROP, 3), "cloud_mask": (4, CROP, CROP, 1),
            "truth_mask": (4, CROP, CROP, 1), "sar": (4, CROP, CROP, 1), "s2_scale": (4, 4, 2)}
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      k: (s, np.float32) for k, s in shapes.items()}
  for key, value in batch.items():
    if key != "s2_scale":
      assert 0.0 <= value.min() and value.max() <= 1.0, key


@pytest.mark.parametrize("normalization", ["minmax", "reflectance"])
def test_s2_scale_undoes_the_normalisation(config, normalization):
  cfg = config.copy_and_resolve_references()
  cfg.s2_normalization = normalization
  cfg.eval_crop_size = 0  # whole patches
  [batch] = _batches(cfg, 1, split="validation", global_batch_size=2, train=False, seed=0)
  assert batch["target"].shape == (2, STORED, STORED, 3)
  source = data_source(config.tfds_dir, "validation")
  for i in range(2):
    s2 = np.asarray(source[i]["s2"], np.float32)
    dates = np.concatenate([batch["history"][i], batch["target"][i][None]])
    low, span = batch["s2_scale"][i, :, 0], batch["s2_scale"][i, :, 1]
    np.testing.assert_allclose(dates * span[:, None, None, None] + low[:, None, None, None],
                               s2, atol=0.02 * (1 if normalization == "minmax" else 10))
  assert set(np.unique(batch["cloud_mask"])) <= {0.0, 1.0}


def test_cloud_mask_marks_exactly_the_changed_pixels(config):
  [batch] = _batches(config, 1, split="validation", global_batch_size=4, train=False, seed=0)
  mask = batch["cloud_mask"][..., 0] > 0
  np.testing.assert_array_equal(batch["cloud_mask"], batch["truth_mask"])
  changed = np.any(batch["cloudy"] != batch["target"], axis=-1)
  assert not np.any(changed & ~mask)
  # Clouds and shadows change (nearly) every pixel they cover, at the configured coverage.
  assert changed[mask].mean() > 0.95
  low, high = config.clouds.coverage
  assert np.all((mask.mean(axis=(1, 2)) >= low - 0.01) & (mask.mean(axis=(1, 2)) <= high + 0.01))


def _marked_record(stored: int, marker: tuple[int, int]) -> dict[str, np.ndarray]:
  """A record whose dates and S1 are blank but for one bright pixel at the same place."""
  y, x = marker
  s2 = np.full((4, stored, stored, 3), 1000, np.uint16)
  s2[:, y, x] = 9000
  s1 = np.full((4, stored, stored, 1), -20.0, np.float32)
  s1[:, y, x] = 5.0
  return {"s2": s2, "s1": s1, "cm": np.zeros((4, stored, stored), np.uint16),
          "zone": b"zone_1_a", "patch": 3, "months": np.arange(1, 5, dtype=np.int32)}


def test_crops_and_flips_are_the_same_for_every_date_and_for_s1(config):
  cfg = config.copy_and_resolve_references()
  cfg.s2_normalization = "reflectance"
  # The marker lies inside every possible crop, so it always shows where the crop and flips put it.
  record = _marked_record(STORED, (12, 20))
  positions = set()
  for seed in range(24):
    example = transform_record(record, np.random.default_rng(seed), cfg, train=True)
    frames = [*example["history"], example["target"], example["sar"]]
    where = {tuple(np.argwhere(f.max(axis=-1) == f.max())[0]) for f in frames}
    assert len(where) == 1, f"seed {seed}: marker at {where}"
    positions |= where
  # Crops move the marker and both flips occur: many positions, on both sides of the centre.
  ys, xs = np.array(sorted(positions)).T
  assert len(positions) > 10
  assert ys.min() < CROP / 2 <= ys.max() and xs.min() < CROP / 2 <= xs.max()


def test_evaluation_crops_the_centre_without_flips(config):
  cfg = config.copy_and_resolve_references()
  record = _marked_record(STORED, (12, 20))
  offset = (STORED - CROP) // 2
  for seed in range(3):
    example = transform_record(record, np.random.default_rng(seed), cfg, train=False)
    assert example["sar"][12 - offset, 20 - offset, 0] == s1_db_to_unit(np.float32(5.0))
    assert np.argmax(example["target"].max(axis=-1)) == (12 - offset) * CROP + 20 - offset


def test_qa60_clouds_join_the_cloud_mask(config):
  record = _marked_record(STORED, (0, 0))
  cm = record["cm"].copy()
  cm[-1, 10:20, 5:15] = QA60_CLOUD_BITS
  cm[0, 20:30, 20:30] = QA60_CLOUD_BITS  # an earlier date's clouds are not the target's
  simulated, with_qa60 = (
      transform_record({**record, "cm": c}, np.random.default_rng(0), config, train=False)
      for c in (record["cm"], cm))
  offset = (STORED - CROP) // 2
  qa_mask = np.zeros((CROP, CROP, 1), bool)
  qa_mask[10 - offset:20 - offset, 5 - offset:15 - offset] = True
  np.testing.assert_array_equal(with_qa60["cloud_mask"], (simulated["cloud_mask"] > 0) | qa_mask)
  np.testing.assert_array_equal(with_qa60["cloudy"], simulated["cloudy"])


def test_same_seed_same_batches_other_seed_other_batches(config):
  args = dict(split="train", global_batch_size=4, train=True)
  first, again = (_batches(config, 5, seed=7, **args) for _ in range(2))
  other = _batches(config, 5, seed=8, **args)
  for a, b in zip(first, again):
    for key in BATCH_KEYS:
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(first[0]["cloudy"], other[0]["cloudy"])


def test_evaluation_is_the_same_for_any_batch_size_and_sharding(config):
  args = dict(split="validation", train=False, seed=3)
  by_one = _concat(_batches(config, global_batch_size=1, **args))
  by_four = _concat(_batches(config, global_batch_size=4, **args))
  twice = _concat(_batches(config, global_batch_size=4, num_epochs=2, **args))
  halves = [_concat(_batches(config, global_batch_size=2, shard_index=i, shard_count=2, **args))
            for i in range(2)]
  for key in BATCH_KEYS:
    np.testing.assert_array_equal(by_one[key], by_four[key])
    np.testing.assert_array_equal(np.concatenate([by_one[key]] * 2), twice[key])
    # Shards deal the records out round-robin.
    interleaved = np.stack([halves[0][key], halves[1][key]], axis=1).reshape(by_one[key].shape)
    np.testing.assert_array_equal(interleaved, by_one[key])
  # And it is the documented per-sample function of the record.
  source = data_source(config.tfds_dir, "validation")
  record = source[2]
  expected = transform_record(record, sample_rng(3, record), config, train=False)
  for key in BATCH_KEYS:
    np.testing.assert_array_equal(by_one[key][2], expected[key])


def test_training_shards_cover_the_split_without_overlap(config):
  cfg = config.copy_and_resolve_references()
  cfg.crop_size, cfg.flips = STORED, False  # targets then identify their series
  args = dict(split="train", global_batch_size=4, train=True, seed=0, num_epochs=1)
  everything = _fingerprints(_batches(cfg, **args))
  shards = [_fingerprints(_batches(cfg, shard_index=i, shard_count=2, **args)) for i in range(2)]
  assert len(everything) == len(set(everything)) == SPLIT_SIZES["training"]
  assert len(shards[0]) == len(shards[1]) == SPLIT_SIZES["training"] // 2
  assert set(shards[0]).isdisjoint(shards[1])
  assert set(shards[0]) | set(shards[1]) == set(everything)
  # Shuffled, differently in the next epoch, with new clouds.
  two_epochs = _batches(cfg, **{**args, "num_epochs": 2})
  order = _fingerprints(two_epochs)
  ordered = _fingerprints(_batches(cfg, split="train", global_batch_size=4, train=False, seed=0))
  assert everything != ordered and order[:16] == everything
  assert sorted(order[16:]) == sorted(everything) and order[16:] != everything
  cloudy = _concat(two_epochs)["cloudy"]
  epoch_0, epoch_1 = order.index(everything[0]), order.index(everything[0], 16)
  assert not np.array_equal(cloudy[epoch_0], cloudy[epoch_1])


def test_training_drops_the_last_incomplete_batch_and_eval_keeps_it(config):
  train = _batches(config, split="validation", global_batch_size=3, train=True, seed=0,
                   num_epochs=1)
  evaluation = _batches(config, split="validation", global_batch_size=3, train=False, seed=0)
  assert [len(b["target"]) for b in train] == [3]
  assert [len(b["target"]) for b in evaluation] == [3, 1]


def test_iterator_state_resumes_at_the_next_batch(config):
  args = dict(split="train", global_batch_size=4, train=True, seed=1)
  iterator = make_iterator(config, shard_index=0, shard_count=1, **args)
  for _ in range(5):  # past the end of the first epoch
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(2)]
  resumed = make_iterator(config, shard_index=0, shard_count=1, **args)
  resumed.set_state(state)
  for a, b in zip(expected, [next(resumed) for _ in range(2)]):
    for key in BATCH_KEYS:
      np.testing.assert_array_equal(a[key], b[key])


def test_bad_arguments(config):
  with pytest.raises(ValueError, match="multiple of the shard count"):
    make_iterator(config, split="train", global_batch_size=3, train=True, seed=0,
                  shard_index=0, shard_count=2)
  cfg = config.copy_and_resolve_references()
  cfg.crop_size = STORED + 8
  with pytest.raises(InputError, match=f"data.crop_size {STORED + 8} is larger than the "
                     f"dataset's {STORED} px patches"):
    make_iterator(cfg, split="train", global_batch_size=1, train=True, seed=0)



@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_resume(config):
  # grain reads its absl flags to start workers; outside absl.app the caller parses them.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  cfg = config.copy_and_resolve_references()
  cfg.worker_count = 2
  args = dict(split="train", global_batch_size=4, train=True, seed=2, shard_index=0, shard_count=1)
  in_process = _batches(config, 6, **args)
  iterator, resumed = make_iterator(cfg, **args), make_iterator(cfg, **args)
  try:
    for expected in in_process[:5]:
      np.testing.assert_array_equal(next(iterator)["cloudy"], expected["cloudy"])
    resumed.set_state(iterator.get_state())
    np.testing.assert_array_equal(next(resumed)["cloudy"], in_process[5]["cloudy"])
  finally:
    iterator.close()
    resumed.close()


def test_time_reversal_reads_half_the_series_backwards(config):
  cfg = config.copy_and_resolve_references()
  cfg.s2_normalization = "reflectance"
  cfg.time_reversal = True
  cfg.flips = False
  cfg.crop_size = cfg.eval_crop_size = STORED
  source = data_source(config.tfds_dir, "train")
  record = source[0]
  s2 = np.asarray(record["s2"], np.float32) / 10000
  orders = set()
  for seed in range(12):
    example = transform_record(record, np.random.default_rng(seed), cfg, train=True)
    dates = np.concatenate([example["history"], example["target"][None]])
    forward, backward = np.allclose(dates, s2, atol=1e-6), np.allclose(dates, s2[::-1], atol=1e-6)
    assert forward != backward, seed
    orders.add(forward)
    # The SAR image is the restored date's.
    expected_s1 = np.asarray(record["s1"])[-1 if forward else 0]
    np.testing.assert_allclose(example["sar"], s1_db_to_unit(expected_s1), atol=1e-6)
  assert orders == {True, False}
  # Evaluation never reverses.
  example = transform_record(record, np.random.default_rng(0), cfg, train=False)
  np.testing.assert_allclose(example["target"], s2[-1], atol=1e-6)


def _scenario(cfg, scenario: str) -> dict[str, np.ndarray]:
  cfg = cfg.copy_and_resolve_references()
  cfg.s2_normalization = "reflectance"
  cfg.scenario = scenario
  [batch] = _batches(cfg, 1, split="validation", global_batch_size=4, train=False, seed=0)
  return batch


def test_scenarios_share_the_clouds_and_differ_in_what_the_model_is_told(config):
  exact, detected, qa60, clouded = (_scenario(config, s) for s in
                                    ("exact", "detected", "qa60", "history_clouded"))
  for other in (detected, qa60, clouded):
    np.testing.assert_array_equal(other["cloudy"], exact["cloudy"])
    np.testing.assert_array_equal(other["truth_mask"], exact["truth_mask"])
    np.testing.assert_array_equal(other["target"], exact["target"])
  truth = exact["truth_mask"] > 0
  found = detected["cloud_mask"] > 0
  # The detection finds most of what changed and little else; QA60's cores add to it.
  visible = truth & (np.abs(exact["cloudy"] - exact["target"]).max(-1, keepdims=True) > 0.02)
  far = np.stack([_far_from(t[..., 0], 3) for t in truth])[..., None]
  assert found[visible].mean() > 0.8 and found[far].mean() < 0.1
  assert np.all((qa60["cloud_mask"] > 0) >= found) or (qa60["cloud_mask"] > 0).sum() > found.sum()
  # Only history_clouded clouds an earlier date, and only the latest; the model reads it filled.
  np.testing.assert_array_equal(exact["history_input"], exact["history"])
  np.testing.assert_array_equal(clouded["history_input"][:, :2], exact["history_input"][:, :2])
  changed = np.abs(clouded["history_input"][:, 2] - exact["history_input"][:, 2]).max(-1) > 0.02
  assert changed.mean() > 0.1
  flagged = clouded["history_mask"][:, 2, ..., 0] > 0
  assert flagged[changed].mean() > 0.8
  error = lambda history: np.abs(history[:, 2] - exact["history"][:, 2]).max(-1)[changed].mean()
  assert error(clouded["history"]) < 0.2 * error(clouded["history_input"])
