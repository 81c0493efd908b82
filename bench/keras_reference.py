"""Keras 3 / TensorFlow re-creation of the reference PLFM (docs/reference_model.md), for timing.

The same layers, initialisers (Keras defaults), losses and optimiser as the authors' Keras code:
- temporal: ConvLSTM2D 128, 64, 32 (3x3, relu, BatchNorm after the first two, the last returns
  its final state) -> Conv2D(3, 3x3, sigmoid); Huber; Adam 2e-4; `model.train_on_batch`.
- GAN: pix2pix U-Net generator (gf=128) and PatchGAN discriminator (df=128), BatchNorm momentum
  0.8, LeakyReLU 0.2, UpSampling2D. One step is what the reference's loop does:
  `generator.predict`, `discriminator.train_on_batch` on the real and then on the fake batch
  (two discriminator updates, BCE) and the combined model's `train_on_batch` (generator update,
  BCE x 1 + L1 x 80, discriminator in inference mode and frozen). Keras 3 would leave a
  discriminator that was frozen for the combined model frozen in its own `train_on_batch` too,
  so every update here is explicit (GradientTape inside a Keras `train_step`): the
  discriminator really learns.
- head: the frozen temporal branch and generator predict (inference mode), the U-Net (gf=32)
  on their 6 channels trains with L1; the same work as the JAX head stage.
All three run through Keras's own `compile` / `train_on_batch` with its default settings (its
`jit_compile="auto"` resolves to no XLA for these models; the result records it).

Run by `bench/run.py` as `python -m bench.keras_reference --spec JSON --out FILE`; job "train".
Never import this module in a process that imports JAX.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # pylint: disable=g-import-not-at-top
from keras import layers  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from bench import measure  # pylint: disable=g-import-not-at-top
from plfm_jax.data.layout import SERIES_LENGTH  # pylint: disable=g-import-not-at-top

LEARNING_RATE = 2e-4
BN_MOMENTUM = 0.8
LEAKY_SLOPE = 0.2
L1_WEIGHT = 80.0
UNET_DEPTH = 5
DISCRIMINATOR_DEPTH = 4


def temporal_branch(features: tuple[int, ...], size: int, dates: int) -> keras.Model:
  """ConvLSTM2D stack -> Conv2D(3, sigmoid): (dates, size, size, 3) -> (size, size, 3)."""
  inputs = keras.Input((dates, size, size, 3))
  x = inputs
  for index, filters in enumerate(features):
    last = index == len(features) - 1
    x = layers.ConvLSTM2D(filters, 3, padding="same", activation="relu",
                          return_sequences=not last)(x)
    if not last:
      x = layers.BatchNormalization()(x)
  outputs = layers.Conv2D(3, 3, padding="same", activation="sigmoid")(x)
  return keras.Model(inputs, outputs, name="temporal")


def unet(features: int, size: int, channels: int, name: str) -> keras.Model:
  """pix2pix U-Net (the SAR generator with gf=128, the fusion head with gf=32), tanh output."""
  inputs = keras.Input((size, size, channels))
  widths = [features * min(2**i, 8) for i in range(UNET_DEPTH)]
  x, skips = inputs, []
  for index, filters in enumerate(widths):
    x = layers.LeakyReLU(LEAKY_SLOPE)(layers.Conv2D(filters, 4, strides=2, padding="same")(x))
    if index:
      x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    skips.append(x)
  for filters, skip in zip(widths[-2::-1], skips[-2::-1]):
    x = layers.Conv2D(filters, 4, padding="same", activation="relu")(layers.UpSampling2D(2)(x))
    x = layers.Concatenate()([layers.BatchNormalization(momentum=BN_MOMENTUM)(x), skip])
  outputs = layers.Conv2D(3, 4, padding="same", activation="tanh")(layers.UpSampling2D(2)(x))
  return keras.Model(inputs, outputs, name=name)


def discriminator(features: int, size: int) -> keras.Model:
  """PatchGAN: concat(image, condition) -> per-patch logits (size / 16, size / 16, 1)."""
  image, condition = keras.Input((size, size, 3)), keras.Input((size, size, 3))
  x = layers.Concatenate()([image, condition])
  for index in range(DISCRIMINATOR_DEPTH):
    x = layers.Conv2D(features * 2**index, 4, strides=2, padding="same")(x)
    x = layers.LeakyReLU(LEAKY_SLOPE)(x)
    if index:
      x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
  outputs = layers.Conv2D(1, 4, padding="same")(x)
  return keras.Model([image, condition], outputs, name="discriminator")


# Components each stage updates; the others it holds only predict.
TRAINED = {"temporal": ("temporal",), "gan": ("generator", "discriminator"), "head": ("head",)}


def _adam() -> keras.optimizers.Optimizer:
  return keras.optimizers.Adam(LEARNING_RATE)


class GANStep(keras.Model):
  """One reference GAN iteration per `train_on_batch((sar, target))`, inputs in [-1, 1]."""

  def __init__(self, generator: keras.Model, critic: keras.Model):
    super().__init__()
    self.generator = generator
    self.critic = critic
    self.bce = keras.losses.BinaryCrossentropy(from_logits=True)
    self.generator_optimizer = _adam()
    self.critic_optimizer = _adam()

  def _critic_update(self, image: tf.Tensor, condition: tf.Tensor, label: float) -> tf.Tensor:
    with tf.GradientTape() as tape:
      logits = self.critic([image, condition], training=True)
      loss = self.bce(tf.fill(tf.shape(logits), label), logits)
    weights = self.critic.trainable_variables
    self.critic_optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
    return loss

  def train_step(self, data: Any) -> dict[str, tf.Tensor]:
    sar, target, _ = keras.utils.unpack_x_y_sample_weight(data)
    fake = self.generator(sar, training=False)
    critic_real = self._critic_update(target, sar, 1.0)
    critic_fake = self._critic_update(fake, sar, 0.0)
    with tf.GradientTape() as tape:
      fake = self.generator(sar, training=True)
      logits = self.critic([fake, sar], training=False)
      loss = (self.bce(tf.ones_like(logits), logits)
              + L1_WEIGHT * tf.reduce_mean(tf.abs(target - fake)))
    weights = self.generator.trainable_variables
    self.generator_optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
    return {"critic_real": critic_real, "critic_fake": critic_fake, "generator": loss}


class HeadStep(keras.Model):
  """Head training on frozen branches per `train_on_batch(((history, sar), target))`.

  `history` and `target` in [0, 1], `sar` in [-1, 1] (3 channels).
  """

  def __init__(self, temporal: keras.Model, generator: keras.Model, head: keras.Model):
    super().__init__()
    self.temporal = temporal
    self.generator = generator
    self.head = head
    self.head_optimizer = _adam()

  def train_step(self, data: Any) -> dict[str, tf.Tensor]:
    (history, sar), target, _ = keras.utils.unpack_x_y_sample_weight(data)
    inputs = tf.concat([2 * self.temporal(history, training=False) - 1,
                        self.generator(sar, training=False)], axis=-1)
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.abs(self.head(inputs, training=True) - (2 * target - 1)))
    weights = self.head.trainable_variables
    self.head_optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
    return {"loss": loss}


def build_stage(stage: str, config: Any) -> tuple[keras.Model, dict[str, keras.Model]]:
  """The compiled model whose `train_on_batch` is one step of `stage`, and the component models
  it holds, by name."""
  size, dates = config.data.crop_size, SERIES_LENGTH - 1
  model_config = config.model
  if stage == "temporal":
    model = temporal_branch(tuple(model_config.temporal_features), size, dates)
    model.compile(optimizer=_adam(), loss=keras.losses.Huber())
    return model, {"temporal": model}
  generator = unet(model_config.generator_features, size, 3, "generator")
  if stage == "gan":
    critic = discriminator(model_config.discriminator_features, size)
    model = GANStep(generator, critic)
    model.generator_optimizer.build(generator.trainable_variables)
    model.critic_optimizer.build(critic.trainable_variables)
    components = {"generator": generator, "discriminator": critic}
  else:
    temporal = temporal_branch(tuple(model_config.temporal_features), size, dates)
    head = unet(model_config.head_features, size, 6, "head")
    model = HeadStep(temporal, generator, head)
    model.head_optimizer.build(head.trainable_variables)
    components = {"temporal": temporal, "generator": generator, "head": head}
  model.compile()
  return model, components


def stage_data(stage: str, batch: dict[str, np.ndarray]) -> tuple[Any, np.ndarray]:
  """(x, y) of `train_on_batch` for `stage` from a `measure.random_batch`."""
  sar = np.repeat(2 * batch["sar"] - 1, 3, axis=-1)
  if stage == "temporal":
    return batch["history"], batch["target"]
  if stage == "gan":
    return sar, 2 * batch["target"] - 1
  return (batch["history"], sar), batch["target"]


def train(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
  """Times one stage's Keras train step for each batch size in spec["batches"].

  Yields the result after each batch size. The first call traces the step and counts as the
  first warm-up call. Also checks that the step changes the first kernel of every component
  the stage trains (`updated`).
  """
  threads = spec["threads"]
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)
  config = measure.bench_config(spec["quick"])
  model, components = build_stage(spec["stage"], config)
  trained = {name: components[name].trainable_variables[0] for name in TRAINED[spec["stage"]]}
  before = {name: keras.ops.convert_to_numpy(kernel) for name, kernel in trained.items()}
  results = []
  result = {"framework": "keras", "stage": spec["stage"],
            "param_counts": {name: m.count_params() for name, m in components.items()},
            "results": results, "jit_compile": bool(model.jit_compile),
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                         "intra_op_threads": threads, "inter_op_threads": threads}}
  for batch_size, repeats in zip(spec["batches"], spec["repeats"]):
    measure.log(f"keras {spec['stage']} batch {batch_size}: tracing and timing")
    x, y = stage_data(spec["stage"], measure.random_batch(
        batch_size, config.data.crop_size, SERIES_LENGTH))
    times = measure.time_repeats(lambda: model.train_on_batch(x, y), warmup=spec["warmup"],
                                 repeats=repeats)
    results.append({"batch": batch_size, "seconds": measure.stats(times),
                    "peak_rss_mib": measure.peak_rss_mib()})
    result["updated"] = {
        name: bool(np.any(keras.ops.convert_to_numpy(kernel) != before[name]))
        for name, kernel in trained.items()}
    yield result


if __name__ == "__main__":
  measure.job_main({"train": train})
