"""PLFM configuration: `--config configs/plfm.py[:variant[,variant...]]`.

A variant is a named set of overrides of the base config (the paper's reference); several,
separated by commas, apply in order, e.g. `configs/plfm.py:plus,small`.

  paper  (default, no overrides) the reference: 256 px, reference widths, losses,
         normalisation and hyper-parameters, batch 1.
  plus   beyond the paper: reflectance normalisation, a temporal branch that corrects a gap-filling
         prior fitted to the cloudy date's clear pixels, a head that sees the cloudy date and
         corrects the temporal output, GroupNorm, losses weighted towards the clouds
         (docs/results.md has the ablation of each switch).
  small  sized for 2 CPU cores: 64 px crops, widths 16, a few hundred steps per stage at a higher
         learning rate (the real sample: scripts/real_sample_results.py, docs/results.md).
  demo   `small,plus` with tiny widths on 64 px synthetic data written into the workdir; every
         stage finishes on 2 CPU cores in a minute or two.
  gpu    global batch 64, bfloat16 compute, lax convolutions (one or more GPUs).
  tpu_pod  global batch 1024, bfloat16 compute, multi-host data parallelism.

Every field is documented where it is set. Override any of them on the command line, e.g.
`--config.data.tfds_dir=/data/tfds --config.model.dtype=bfloat16`.
"""

from __future__ import annotations

from typing import Callable

import ml_collections


def data_config() -> ml_collections.ConfigDict:
  """Where the data comes from and how it is turned into batches."""
  return ml_collections.ConfigDict(dict(
      # TFDS data_dir holding (or receiving) the built `plfm_series` dataset.
      tfds_dir="",
      # Raw dataset root in the authors' layout; `plfm_series` is built from it when not built yet.
      manual_dir="",
      # Size of the random crops training feeds the model.
      crop_size=256,
      # Size of the centre crops validation and evaluation read; 0 = whole stored patches.
      eval_crop_size=0,
      # S2 normalisation: "minmax" (reference: per image to [0, 1]) or "reflectance" (x / 10000).
      s2_normalization="minmax",
      # Random horizontal/vertical flips in training, the same for every date and for S1.
      flips=True,
      # Train on half the series read backwards (the first date restored from the later ones):
      # trends of the other direction, as in another season.
      time_reversal=False,
      # Simulated clouds on the last date (the real patches are cloud-free).
      clouds=ml_collections.ConfigDict(dict(
          # Fraction of the image covered, drawn uniformly from this range per sample.
          coverage=(0.2, 0.6),
          # Share of the cloud cover that is thin (semi-transparent) rather than opaque.
          thin_fraction=0.3,
          # Width of the haze that fades out around every cloud, in units of the cloud field
          # (plfm_jax/data/clouds.py): its outer part changes the ground by less than a
          # detector can see. 0: clouds end where their mask does.
          haze_margin=0.1,
          # Cast shadows next to the clouds.
          shadows=True,
      )),
      # What the model is told of the simulated clouds (plfm_jax/data/pipeline.py SCENARIOS):
      # "exact" (their exact mask), "detected" (nothing: the tool's own detection), "qa60" (the
      # opaque cores, and detection) or "history_clouded" (nothing, and the latest earlier date
      # clouded too). Training and validation use it; evaluate.py scores every scenario it is
      # given (--scenarios).
      scenario="exact",
      # With neither tfds_dir holding a built dataset nor manual_dir: write a synthetic dataset
      # into the workdir and train on it (the demo's embedded default, no download).
      synthetic=False,
      # Patch size of that synthetic dataset (a built dataset's comes from its files).
      synthetic_size=256,
      # grain worker processes (0 = in the main process).
      worker_count=0,
      # Threads reading and transforming samples in each process (NumPy releases the GIL in the
      # heavy parts); 0 reads in the calling thread.
      read_threads=2,
      # Samples read ahead per process. A 256 px sample is ~4 MiB after the transform, so keep
      # this small: memory grows with it (and with worker_count).
      prefetch_buffer_size=16,
  ))


def model_config() -> ml_collections.ConfigDict:
  """Widths and numerics of the three PLFM components."""
  return ml_collections.ConfigDict(dict(
      # ConvLSTM filters of the temporal branch, one entry per layer.
      temporal_features=(128, 64, 32),
      # Base width (gf) of the SAR pix2pix U-Net generator (5 down blocks of gf * 1, 2, 4, 8, 8).
      generator_features=128,
      # Base width (df) of the PatchGAN discriminator.
      discriminator_features=128,
      # Base width of the fusion head U-Net.
      head_features=32,
      # Head inputs: "branches" (reference: temporal ++ SAR outputs) or "branches+cloudy" (also
      # the cloudy target image and its cloud mask).
      head_inputs="branches",
      # The temporal branch's prior: "none" (reference: the branch outputs the image itself) or a
      # gap-filling method it corrects (plfm_jax/models/gapfill.py: "persistence",
      # "temporal_mean", "temporal_median", "matched_persistence", "matched_mean",
      # "matched_regression", "matched_multiscale"); its last layer starts at zero, so before
      # training it is the prior.
      temporal_prior="none",
      # Feed the temporal branch the earlier dates matched band by band (gain and offset) to the
      # cloudy date's clear pixels, instead of as they are.
      match_history=False,
      # Fit the prior and the matching robustly (iteratively reweighted least squares, Huber then
      # Tukey: pixels of cloud, haze or shadow that no mask caught get no weight) instead of by
      # least squares.
      robust_prior=False,
      # What the head outputs: "image" (reference: the fused image), "residual" (a correction
      # added to the temporal branch's image) or "affine" (per pixel and band, a gain of the
      # cloudy image against the temporal one, a contrast gain and an offset; see
      # plfm_jax/models/plfm.py). Residual and affine heads equal the temporal image before
      # training.
      head_output="image",
      # In inference, scale the temporal branch's correction per image and band by the weight in
      # [0, 1] that fits it best to the cloudy date's clear pixels (needs a temporal_prior).
      calibrate_temporal=False,
      # The fused image keeps the cloudy date's clear pixels (as the composite does): the head
      # restores only the cloud-covered ones, and only they count in its loss.
      keep_clear_pixels=False,
      # The networks see optical images standardised per sample and band by the mean and
      # standard deviation of the earlier dates, and output corrections in those units, instead
      # of images in [-1, 1] (reference).
      standardize=False,
      # Normalisation layers: "batch" (reference: BatchNorm, running averages at inference) or
      # "group" (GroupNorm: per-sample statistics, no running averages).
      norm="batch",
      # Convolution implementation: "auto" (Winograd / im2col matmuls on CPU, lax.conv on
      # accelerators), "lax" or "matmul" (plfm_jax/models/conv.py).
      conv_impl="auto",
      # Time loop of the ConvLSTM: "unroll" (fast for short series, XLA:CPU) or "scan".
      time_loop="unroll",
      # Compute dtype ("float32" or "bfloat16"); parameters always stay float32.
      dtype="float32",
  ))


def train_config() -> ml_collections.ConfigDict:
  """Stages, optimisation, early stopping, checkpoints and logs."""
  return ml_collections.ConfigDict(dict(
      # Stages in order. Paper: temporal (Huber), gan (BCE + l1_weight * L1), head (L1 on frozen
      # branches). Add "joint" to fine-tune everything end to end afterwards. A stage run alone
      # reads the earlier stages' best checkpoints from the workdir.
      stages=("temporal", "gan", "head"),
      # Upper bound on epochs per stage; early stopping usually ends a stage sooner.
      num_epochs=100,
      # Steps per epoch; -1 = one pass over the training split.
      steps_per_epoch=-1,
      # Stop a stage after this many epochs without a better validation loss (reference: 10).
      patience=10,
      # Adam (Keras defaults, learning rate 2e-4 as the reference).
      learning_rate=2e-4,
      # Steps of a linear learning-rate warm-up from 0, followed by a cosine decay to 0 at the
      # stage's last step; 0 = a constant learning rate (reference).
      warmup_steps=0,
      adam_b1=0.9,
      adam_b2=0.999,
      adam_eps=1e-7,
      # beta1 of the generator and discriminator (the authors tried 0.5 and left it out).
      gan_adam_b1=0.9,
      # Weight of the generator's L1 term against its adversarial BCE term.
      l1_weight=80.0,
      # Delta of the temporal branch's Huber loss.
      huber_delta=1.0,
      # Weight of a cloud-covered pixel relative to a clear one in the temporal branch's and the
      # head's losses (1: every pixel alike, the reference).
      cloud_loss_weight=1.0,
      # Validation batches per epoch; -1 = the whole validation split.
      validation_steps=-1,
      # Also save a resumable checkpoint every this many steps (and always at each epoch's end).
      checkpoint_every_steps=1000,
      # Resumable checkpoints kept per stage (the best one is kept besides).
      keep_checkpoints=3,
      # Scalars to TensorBoard every this many steps.
      log_every_steps=50,
      # Devices to train on; -1 = all devices of all processes.
      num_devices=-1,
  ))


def plus(config: ml_collections.ConfigDict) -> None:
  """Beyond the paper: the settings that won on validation data (docs/results.md)."""
  config.data.s2_normalization = "reflectance"
  config.model.temporal_prior = "matched_multiscale"
  config.model.match_history = True
  config.model.robust_prior = True
  config.model.head_inputs = "branches+cloudy"
  config.model.head_output = "affine"
  config.model.calibrate_temporal = True
  config.model.keep_clear_pixels = True
  config.data.time_reversal = True
  config.model.standardize = True
  config.model.norm = "group"
  config.train.cloud_loss_weight = 4.0
  # Residual outputs start at zero: a short warm-up keeps Adam's first, full-size steps from
  # throwing them far off, and the corrections they learn are small.
  config.train.learning_rate = 3e-4
  config.train.warmup_steps = 100


def small(config: ml_collections.ConfigDict) -> None:
  """Sized for 2 CPU cores: the real sample in minutes, far below the paper's widths."""
  config.batch_size = 4
  # Small crops buy steps; validation and evaluation still read whole patches.
  config.data.crop_size = 64
  config.model.temporal_features = (16, 16, 16)
  config.model.generator_features = 16
  config.model.discriminator_features = 16
  config.model.head_features = 16
  # The reference's 2e-4 would barely move the weights in a few hundred steps.
  config.train.learning_rate = 1e-3
  config.train.num_epochs = 8
  config.train.steps_per_epoch = 50
  # Every epoch runs: with 3 validation series, a few epochs without a better loss are noise,
  # and a residual head needs most of its steps. The best epoch's checkpoint is kept.
  config.train.patience = 8
  config.train.checkpoint_every_steps = 50
  config.train.log_every_steps = 10


def demo(config: ml_collections.ConfigDict) -> None:
  """`small,plus` at tiny widths on embedded synthetic data: every stage in a minute or two."""
  small(config)
  plus(config)
  config.data.synthetic_size = 64
  config.data.synthetic = True
  config.model.temporal_features = (16, 8, 8)
  config.model.generator_features = 8
  config.model.discriminator_features = 8
  config.model.head_features = 8
  config.train.num_epochs = 5
  config.train.patience = 3


def gpu(config: ml_collections.ConfigDict) -> None:
  """One or more GPUs: a larger batch in bfloat16 on lax convolutions."""
  config.batch_size = 64
  config.model.dtype = "bfloat16"
  config.model.conv_impl = "lax"
  # The reference's learning rate is kept: it has not been tuned for large batches yet.
  config.train.log_every_steps = 20
  config.data.worker_count = 8


def tpu_pod(config: ml_collections.ConfigDict) -> None:
  """A TPU pod slice: a global batch of 1024 in bfloat16 over all hosts."""
  gpu(config)
  config.batch_size = 1024


VARIANTS: dict[str, Callable[[ml_collections.ConfigDict], None]] = {
    "paper": lambda config: None,
    "plus": plus,
    "small": small,
    "demo": demo,
    "gpu": gpu,
    "tpu_pod": tpu_pod,
}


def get_config(variant: str = "paper") -> ml_collections.ConfigDict:
  """The configuration of `variant`: names of VARIANTS separated by commas, applied in order."""
  names = [name.strip() for name in (variant or "paper").split(",")]
  unknown = [name for name in names if name not in VARIANTS]
  if unknown:
    raise ValueError(f"unknown config variant {unknown[0]!r}; choose from "
                     f"{', '.join(VARIANTS)} (several separated by commas)")
  config = ml_collections.ConfigDict()
  # The variant names this config was built from, as given.
  config.variant = ",".join(names)
  # Seed for parameter initialisation, shuffling, augmentation and simulated clouds.
  config.seed = 0
  # Global batch size (split over processes and devices).
  config.batch_size = 1
  config.data = data_config()
  config.model = model_config()
  config.train = train_config()
  for name in names:
    VARIANTS[name](config)
  return config
