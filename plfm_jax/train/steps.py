"""Pure train and evaluation steps of the PLFM stages.

A stage trains some components and uses others frozen (inference mode), all from the same
`PLFMModels`. State of a stage: {"step", "variables": {component: {"params", "batch_stats"}},
"opt_state": {component: optax state}} for its trainable components; `frozen` holds the
variables of the components it only reads. Every function here is pure and jit-able.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from plfm_jax import modeling
from plfm_jax.train import losses

Variables = dict[str, Any]
Batch = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """Which components a stage updates and which earlier stages' results it reads."""
  name: str
  trainable: tuple[str, ...]
  frozen: tuple[str, ...] = ()
  # Components whose starting point is the best checkpoint of an earlier stage.
  warm_start: tuple[str, ...] = ()


STAGES = {
    "temporal": StageSpec("temporal", ("temporal",)),
    "gan": StageSpec("gan", ("generator", "discriminator")),
    "head": StageSpec("head", ("head",), frozen=("temporal", "generator")),
    # Beyond the paper: end-to-end fine-tuning of everything from the stage-wise result.
    "joint": StageSpec("joint", ("temporal", "generator", "discriminator", "head"),
                       warm_start=("temporal", "generator", "discriminator", "head")),
}

# The stage whose best checkpoint holds each component.
COMPONENT_STAGE = {"temporal": "temporal", "generator": "gan", "discriminator": "gan",
                   "head": "head"}


@dataclasses.dataclass(frozen=True)
class Hyper:
  """Loss weights of the stages (REFERENCE.md section 1)."""
  huber_delta: float = 1.0
  l1_weight: float = 80.0
  head_inputs: str = "branches"


def make_optimizers(train_config, spec: StageSpec) -> dict[str, optax.GradientTransformation]:
  """Adam per trainable component (Keras defaults: eps 1e-7); the GAN pair may use its own beta1."""
  def adam(b1: float) -> optax.GradientTransformation:
    return optax.adam(train_config.learning_rate, b1=b1, b2=train_config.adam_b2,
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


def _run(models: modeling.PLFMModels, name: str, variables: Variables, *args,
         train: bool) -> tuple[jax.Array, Variables]:
  """Applies one component; in training mode also returns its updated BatchNorm statistics."""
  module = getattr(models, name)
  if not train:
    return module.apply(variables, *args, train=False), variables
  out, updates = module.apply(variables, *args, train=True, mutable=["batch_stats"])
  return out, {**variables, **updates}


def _forward(models: modeling.PLFMModels, variables: Variables, batch: Batch, *,
             train: frozenset[str], hyper: Hyper) -> tuple[dict[str, jax.Array], Variables]:
  """Runs the temporal branch, generator and head, whichever `variables` holds.

  Components in `train` run in training mode (batch statistics, updated running averages); the
  others in inference mode. Outputs: "temporal" in [0, 1], "sar" and "fused" in [-1, 1].
  """
  v = dict(variables)
  out = {}
  if "temporal" in v:
    out["temporal"], v["temporal"] = _run(models, "temporal", v["temporal"], batch["history"],
                                          train="temporal" in train)
  if "generator" in v:
    out["sar_in"] = modeling.sar_generator_input(batch["sar"])
    out["sar"], v["generator"] = _run(models, "generator", v["generator"], out["sar_in"],
                                      train="generator" in train)
  if "head" in v:
    inputs = modeling.head_input(out["temporal"], out["sar"], batch["cloudy"],
                                 batch["cloud_mask"], head_inputs=hyper.head_inputs)
    out["fused"], v["head"] = _run(models, "head", v["head"], inputs, train="head" in train)
  return out, v


def _discriminator_update(models, variables: Variables, fake: jax.Array, batch: Batch,
                          optimizer, opt_state) -> tuple[Variables, Any, jax.Array]:
  """One discriminator step on a real and a fake batch, each in training mode as in Keras."""
  condition = modeling.sar_generator_input(batch["sar"])
  real = modeling.to_signed(batch["target"])

  def loss_fn(params):
    v = {**variables, "params": params}
    real_logits, v = _run(models, "discriminator", v, real, condition, train=True)
    fake_logits, v = _run(models, "discriminator", v, fake, condition, train=True)
    loss = 0.5 * (losses.bce_with_logits(real_logits, 1.0)
                  + losses.bce_with_logits(fake_logits, 0.0))
    return loss, v

  (loss, new_vars), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
  updates, opt_state = optimizer.update(grads, opt_state, variables["params"])
  new_vars = {**new_vars, "params": optax.apply_updates(variables["params"], updates)}
  return new_vars, opt_state, loss


def _generator_side_loss(params: Mapping[str, Any], variables: Variables, batch: Batch, *,
                         models: modeling.PLFMModels,
                         hyper: Hyper) -> tuple[jax.Array, tuple[dict, Variables]]:
  """Summed loss of the trained non-discriminator components, and their new BatchNorm stats."""
  v = {name: ({**value, "params": params[name]} if name in params else value)
       for name, value in variables.items()}
  out, v = _forward(models, v, batch, train=frozenset(params), hyper=hyper)
  target = batch["target"]
  metrics = {}
  if "temporal" in params:
    metrics["temporal_huber"] = losses.huber(out["temporal"], target, hyper.huber_delta)
  if "generator" in params:
    # The discriminator judges in inference mode here, as Keras's frozen D in the combined model.
    logits, _ = _run(models, "discriminator", v["discriminator"], out["sar"], out["sar_in"],
                     train=False)
    metrics["generator_adversarial"] = losses.bce_with_logits(logits, 1.0)
    metrics["generator_l1"] = losses.l1(out["sar"], modeling.to_signed(target))
  if "head" in params:
    metrics["head_l1"] = losses.l1(out["fused"], modeling.to_signed(target))
  weights = {"generator_l1": hyper.l1_weight}
  total = sum(weights.get(name, 1.0) * value for name, value in metrics.items())
  metrics["loss"] = total
  return total, (metrics, {name: v[name] for name in params})


def train_step(state: dict[str, Any], frozen: Variables, batch: Batch, *,
               models: modeling.PLFMModels, spec: StageSpec, hyper: Hyper,
               optimizers: Mapping[str, optax.GradientTransformation]) -> tuple[dict, dict]:
  """One optimisation step of stage `spec`: (state, frozen, batch) -> (new state, metrics)."""
  variables = dict(state["variables"])
  opt_state = dict(state["opt_state"])
  metrics = {}
  if "discriminator" in spec.trainable:
    # The generator's prediction in inference mode, as `generator.predict` in the reference.
    fake, _ = _run(models, "generator", variables["generator"],
                   modeling.sar_generator_input(batch["sar"]), train=False)
    variables["discriminator"], opt_state["discriminator"], metrics["discriminator_bce"] = (
        _discriminator_update(models, variables["discriminator"], fake, batch,
                              optimizers["discriminator"], opt_state["discriminator"]))

  params = {n: variables[n]["params"] for n in spec.trainable if n != "discriminator"}
  grads, (side_metrics, new_vars) = jax.grad(
      lambda p: _generator_side_loss(p, {**frozen, **variables}, batch, models=models,
                                     hyper=hyper), has_aux=True)(params)
  for name, p in params.items():
    updates, opt_state[name] = optimizers[name].update(grads[name], opt_state[name], p)
    variables[name] = {**new_vars[name], "params": optax.apply_updates(p, updates)}
  metrics.update(side_metrics)
  return {"step": state["step"] + 1, "variables": variables, "opt_state": opt_state}, metrics


def stage_prediction(variables: Variables, batch: Batch, *, models: modeling.PLFMModels,
                     spec: StageSpec, hyper: Hyper) -> jax.Array:
  """The image a stage produces, in [0, 1] (inference mode): temporal, SAR or fused output."""
  out, _ = _forward(models, variables, batch, train=frozenset(), hyper=hyper)
  if spec.name == "temporal":
    return out["temporal"]
  if spec.name == "gan":
    return modeling.to_unit(out["sar"])
  return modeling.to_unit(out["fused"])


def validation_losses(variables: Variables, batch: Batch, *, models: modeling.PLFMModels,
                      spec: StageSpec, hyper: Hyper) -> dict[str, jax.Array]:
  """Per-sample (B,) validation losses of the stage's output on [0, 1] images.

  `loss` is what early stopping watches: the Huber loss for the temporal stage, else the L1.
  """
  prediction = stage_prediction(variables, batch, models=models, spec=spec, hyper=hyper)
  error = prediction - batch["target"]
  axes = tuple(range(1, error.ndim))
  l1 = jnp.mean(jnp.abs(error), axis=axes)
  if spec.name != "temporal":
    return {"loss": l1, "l1": l1}
  huber = jnp.mean(optax.losses.huber_loss(prediction, batch["target"], delta=hyper.huber_delta),
                   axis=axes)
  return {"loss": huber, "l1": l1}


def jit_steps(models: modeling.PLFMModels, spec: StageSpec, hyper: Hyper, optimizers,
              replicated, batch_sharding) -> tuple[Callable, Callable]:
  """The stage's train and validation steps compiled over the mesh (state replicated, batch split)."""
  train = jax.jit(
      lambda state, frozen, batch: train_step(state, frozen, batch, models=models, spec=spec,
                                              hyper=hyper, optimizers=optimizers),
      out_shardings=(replicated, replicated), donate_argnums=(0,))
  validate = jax.jit(
      lambda variables, batch: validation_losses(variables, batch, models=models, spec=spec,
                                                 hyper=hyper),
      out_shardings=batch_sharding)
  return train, validate
