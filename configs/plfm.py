"""PLFM configuration: `--config configs/plfm.py[:variant]`.

Variants:
  paper  (default) the reference: 256 px, reference widths and hyper-parameters, batch 1.
  demo   tiny widths at 64 px on synthetic data; every stage finishes on 2 CPU cores in minutes.
  gpu    paper widths, global batch 64, bfloat16 compute, lax convolutions (one or more GPUs).
  tpu_pod  paper widths, global batch 1024, bfloat16 compute, multi-host data parallelism.
  real_sample  64 px crops, reduced widths, 400 steps per stage: the real sample on 2 CPU cores
         (scripts/real_sample_results.py, docs/results.md).

Every field is documented where it is set. Override any of them on the command line, e.g.
`--config.data.tfds_dir=/data/tfds --config.model.dtype=bfloat16`.
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("paper", "demo", "gpu", "tpu_pod", "real_sample")


def data_config() -> ml_collections.ConfigDict:
  """Where the data comes from and how it is turned into batches."""
  return ml_collections.ConfigDict(dict(
      # TFDS data_dir holding (or receiving) the built `plfm_series` dataset.
      tfds_dir="",
      # Raw dataset root in the authors' layout; `plfm_series` is built from it when not built yet.
      manual_dir="",
      # Size of the stored patches (selects the TFDS builder config `<size>px`).
      stored_size=256,
      # Size of the crops fed to the model (random crops in training, centre crops otherwise).
      image_size=256,
      # Dates per series: T-1 earlier dates feed the temporal branch, the last is the target.
      series_length=4,
      # S2 normalisation: "minmax" (reference: per image to [0, 1]) or "reflectance" (x / 10000).
      s2_normalization="minmax",
      # Random horizontal/vertical flips in training, the same for every date and for S1.
      flips=True,
      # Simulated clouds on the last date (the real patches are cloud-free).
      clouds=ml_collections.ConfigDict(dict(
          # Fraction of the image covered, drawn uniformly from this range per sample.
          coverage=(0.2, 0.6),
          # Share of the cloud cover that is thin (semi-transparent) rather than opaque.
          thin_fraction=0.3,
          # Cast shadows next to the clouds.
          shadows=True,
      )),
      # With neither tfds_dir holding a built dataset nor manual_dir: write a synthetic dataset
      # into the workdir and train on it (the demo's embedded default, no download).
      synthetic=False,
      # Skip series with unreadable or invalid files (reported at the end) instead of stopping.
      skip_invalid=False,
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
      adam_b1=0.9,
      adam_b2=0.999,
      adam_eps=1e-7,
      # beta1 of the generator and discriminator (the authors tried 0.5 and left it out).
      gan_adam_b1=0.9,
      # Weight of the generator's L1 term against its adversarial BCE term.
      l1_weight=80.0,
      # Delta of the temporal branch's Huber loss.
      huber_delta=1.0,
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


def get_config(variant: str = "paper") -> ml_collections.ConfigDict:
  """Returns the configuration of `variant` (one of VARIANTS)."""
  variant = variant or "paper"
  if variant not in VARIANTS:
    raise ValueError(f"unknown config variant {variant!r}; choose one of {', '.join(VARIANTS)}")
  config = ml_collections.ConfigDict()
  config.variant = variant
  # Seed for parameter initialisation, shuffling, augmentation and simulated clouds.
  config.seed = 0
  # Global batch size (split over processes and devices).
  config.batch_size = 1
  config.data = data_config()
  config.model = model_config()
  config.train = train_config()

  if variant == "demo":
    config.batch_size = 4
    config.data.stored_size = 64
    config.data.image_size = 64
    config.data.synthetic = True
    config.model.temporal_features = (16, 8, 8)
    config.model.generator_features = 8
    config.model.discriminator_features = 8
    config.model.head_features = 8
    # A few hundred steps per stage: with the reference's 2e-4 the branches would barely leave
    # their initialisation in that time (the temporal branch needs ~300 steps at 2e-3).
    config.train.learning_rate = 2e-3
    config.train.num_epochs = 5
    config.train.steps_per_epoch = 50
    config.train.patience = 3
    config.train.checkpoint_every_steps = 50
    config.train.log_every_steps = 10
  elif variant in ("gpu", "tpu_pod"):
    config.batch_size = 64 if variant == "gpu" else 1024
    config.model.dtype = "bfloat16"
    config.model.conv_impl = "lax"
    # The reference's learning rate is kept: it has not been tuned for large batches yet.
    config.train.log_every_steps = 20
    config.data.worker_count = 8
  elif variant == "real_sample":
    # Train on zone_9_a of the real sample, evaluate on zone_9_b (scripts/real_sample_results.py):
    # sized to finish on a shared 2-core CPU in under half an hour, far below the paper's widths.
    # Small crops buy steps: the ConvLSTM's BatchNorm averages (momentum 0.99) need a few hundred
    # steps to forget their initial values; after 100 the branch scored 10 dB worse in inference.
    config.batch_size = 4
    config.data.image_size = 64
    config.model.temporal_features = (16, 16, 16)
    config.model.generator_features = 16
    config.model.discriminator_features = 16
    config.model.head_features = 16
    # The reference's 2e-4 would barely move the weights in a few hundred steps.
    config.train.learning_rate = 1e-3
    config.train.num_epochs = 8
    config.train.steps_per_epoch = 50
    config.train.patience = 3
    config.train.checkpoint_every_steps = 50
    config.train.log_every_steps = 10
  return config
