"""Pure train and evaluation steps of the PLFM stages.

A stage trains some components and uses others frozen (inference mode), all through the same
`PLFM.forward`. State of a stage: {"step", "variables": {component: {"params", "batch_stats"}},
"opt_state": {component: optax state}} for its trainable components; `frozen` holds the
variables of the components it only reads. Every function here is pure and jit-able.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from plfm_jax.models.plfm import PLFM
from plfm_jax.stages import StageSpec
from plfm_jax.train import losses

Variables = dict[str, Any]
Batch = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Hyper:
  """Loss settings of the stages (`train` section of configs/plfm.py)."""
  huber_delta: float = 1.0
  l1_weight: float = 80.0
  cloud_loss_weight: float = 1.0

  @classmethod
  def from_config(cls, train_config) -> Hyper:
    return cls(huber_delta=train_config.huber_delta, l1_weight=train_config.l1_weight,
               cloud_loss_weight=train_config.cloud_loss_weight)


def learning_rate(train_config, total_steps: int) -> optax.ScalarOrSchedule:
  """The stage's learning rate: constant (reference) or, with `train.warmup_steps` > 0, a linear
  warm-up from 0 followed by a cosine decay to 0 at `total_steps`."""
  if train_config.warmup_steps <= 0:
    return train_config.learning_rate
  return optax.warmup_cosine_decay_schedule(
      0.0, train_config.learning_rate, train_config.warmup_steps,
      max(total_steps, train_config.warmup_steps + 1))


def make_optimizers(train_config, spec: StageSpec,
                    total_steps: int = 1) -> dict[str, optax.GradientTransformation]:
  """Adam per trainable component (Keras defaults: eps 1e-7); the GAN pair may use its own beta1.

  `total_steps` (the stage's length) shapes the learning-rate schedule only, not the state.
  """
  def adam(b1: float) -> optax.GradientTransformation:
    return optax.adam(learning_rate(train_config, total_steps), b1=b1, b2=train_config.adam_b2,
                      eps=train_config.adam_eps)
  return {name: adam(train_config.gan_adam_b1 if name in ("generator", "discriminator")
                     else train_config.adam_b1)
          for name in spec.trainable}


def init_state(variables: Variables, spec: StageSpec,
               optimizers: Mapping[str, optax.GradientTransformation]) -> dict[str, Any]:
  trainable = {name: variables[name] for name in spec.trainable}
  return {"step": jnp.zeros((), jnp.int32),
          "variables": trainable,
          "opt_state": {name: optimizers[name].init(v["params"]) for name, v in trainable.items()}}


def _discriminator_update(model: PLFM, variables: Variables, fake: jax.Array, batch: Batch,
                          optimizer, opt_state) -> tuple[Variables, Any, jax.Array]:
  """One discriminator step on a real and a fake batch, each in training mode as in Keras."""
  def loss_fn(params):
    v = {**variables, "params": params}
    real_logits, v = model.discriminate(v, batch["target"], batch["sar"], train=True)
    fake_logits, v = model.discriminate(v, fake, batch["sar"], train=True)
    loss = 0.5 * (losses.bce_with_logits(real_logits, 1.0)
                  + losses.bce_with_logits(fake_logits, 0.0))
    return loss, v

  (loss, new_vars), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
  updates, opt_state = optimizer.update(grads, opt_state, variables["params"])
  new_vars = {**new_vars, "params": optax.apply_updates(variables["params"], updates)}
  return new_vars, opt_state, loss


def _generator_side_loss(params: Mapping[str, Any], variables: Variables, batch: Batch, *,
                         model: PLFM, hyper: Hyper) -> tuple[jax.Array, tuple[dict, Variables]]:
  """Summed loss of the trained non-discriminator components, and their new BatchNorm stats."""
  v = {name: ({**value, "params": params[name]} if name in params else value)
       for name, value in variables.items()}
  out, v = model.forward(v, batch, train=frozenset(params))
  target = batch["target"]
  weights = losses.pixel_weights(batch["cloud_mask"], hyper.cloud_loss_weight)
  metrics = {}
  if "temporal" in params:
    metrics["temporal_huber"] = losses.huber(out["temporal"], target, hyper.huber_delta, weights)
  # The reference's L1 terms are on [-1, 1] images: twice the L1 on [0, 1].
  if "generator" in params:
    # The discriminator judges in inference mode here, as Keras's frozen D in the combined model.
    logits, _ = model.discriminate(v["discriminator"], out["sar_branch"], batch["sar"])
    metrics["generator_adversarial"] = losses.bce_with_logits(logits, 1.0)
    metrics["generator_l1"] = 2 * losses.l1(out["sar_branch"], target)
  if "head" in params:
    metrics["head_l1"] = 2 * losses.l1(out["fused"], target, weights)
  loss_weights = {"generator_l1": hyper.l1_weight}
  total = sum(loss_weights.get(name, 1.0) * value for name, value in metrics.items())
  metrics["loss"] = total
  return total, (metrics, {name: v[name] for name in params})


def train_step(state: dict[str, Any], frozen: Variables, batch: Batch, *,
               model: PLFM, spec: StageSpec, hyper: Hyper,
               optimizers: Mapping[str, optax.GradientTransformation]) -> tuple[dict, dict]:
  """One optimisation step of stage `spec`: (state, frozen, batch) -> (new state, metrics)."""
  variables = dict(state["variables"])
  opt_state = dict(state["opt_state"])
  metrics = {}
  if "discriminator" in spec.trainable:
    # The generator's prediction in inference mode, as `generator.predict` in the reference.
    fake, _ = model.sar_branch(variables["generator"], batch["sar"])
    variables["discriminator"], opt_state["discriminator"], metrics["discriminator_bce"] = (
        _discriminator_update(model, variables["discriminator"], fake, batch,
                              optimizers["discriminator"], opt_state["discriminator"]))

  params = {n: variables[n]["params"] for n in spec.trainable if n != "discriminator"}
  grads, (side_metrics, new_vars) = jax.grad(
      lambda p: _generator_side_loss(p, {**frozen, **variables}, batch, model=model,
                                     hyper=hyper), has_aux=True)(params)
  for name, p in params.items():
    updates, opt_state[name] = optimizers[name].update(grads[name], opt_state[name], p)
    variables[name] = {**new_vars[name], "params": optax.apply_updates(p, updates)}
  metrics.update(side_metrics)
  return {"step": state["step"] + 1, "variables": variables, "opt_state": opt_state}, metrics


def stage_prediction(variables: Variables, batch: Batch, *, model: PLFM,
                     spec: StageSpec) -> jax.Array:
  """The image a stage produces, in [0, 1] (inference mode): temporal, SAR or fused output."""
  out, _ = model.forward(variables, batch)
  return out[spec.output]


def validation_losses(variables: Variables, batch: Batch, *, model: PLFM, spec: StageSpec,
                      hyper: Hyper) -> dict[str, jax.Array]:
  """Per-sample (B,) validation losses of the stage's output on [0, 1] images.

  `loss` is what early stopping watches: the stage's training loss on its own output (Huber
  for the temporal stage, else L1), with the same cloud weighting, without the adversarial term.
  """
  prediction = stage_prediction(variables, batch, model=model, spec=spec)
  target = batch["target"]
  weights = (None if spec.name == "gan" else
             losses.pixel_weights(batch["cloud_mask"], hyper.cloud_loss_weight))

  def per_sample(loss_fn: Callable) -> jax.Array:
    if weights is None:
      return jax.vmap(loss_fn)(prediction, target)
    return jax.vmap(loss_fn)(prediction, target, weights)

  l1 = per_sample(losses.l1)
  if spec.name != "temporal":
    return {"loss": l1, "l1": l1}
  huber = per_sample(lambda p, t, w=None: losses.huber(p, t, hyper.huber_delta, w))
  return {"loss": huber, "l1": l1}


def jit_steps(model: PLFM, spec: StageSpec, hyper: Hyper, optimizers,
              replicated, batch_sharding) -> tuple[Callable, Callable]:
  """The stage's train and validation steps compiled over the mesh (state replicated, batch split)."""
  train = jax.jit(
      lambda state, frozen, batch: train_step(state, frozen, batch, model=model, spec=spec,
                                              hyper=hyper, optimizers=optimizers),
      out_shardings=(replicated, replicated), donate_argnums=(0,))
  validate = jax.jit(
      lambda variables, batch: validation_losses(variables, batch, model=model, spec=spec,
                                                 hyper=hyper),
      out_shardings=batch_sharding)
  return train, validate
