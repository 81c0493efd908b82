"""The PLFM components built from the config, and the pure functions that wire them together.

Value ranges (docs/architecture.md): batches and every output of `predict` are in [0, 1]; the
SAR generator and the fusion head work in [-1, 1] (tanh) as in the reference, and the temporal
branch outputs [0, 1] (sigmoid). The conversions happen here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from plfm_jax.models import PatchDiscriminator, TemporalBranch, UNet
from plfm_jax.models.conv import resolve_conv_impl

HEAD_INPUTS = ("branches", "branches+cloudy")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class PLFMModels:
  """The four module instances; hashable, so it can be a static argument of `jax.jit`."""
  temporal: TemporalBranch
  generator: UNet
  discriminator: PatchDiscriminator
  head: UNet


def build_models(model_config: ml_collections.ConfigDict) -> PLFMModels:
  """Builds the modules from the `model` section of configs/plfm.py.

  `conv_impl` "auto" is resolved here for the default backend; `dtype` is the compute dtype,
  parameters are always float32.
  """
  if model_config.dtype not in _DTYPES:
    raise ValueError(f"model dtype must be one of {tuple(_DTYPES)}, got {model_config.dtype!r}")
  common = dict(impl=resolve_conv_impl(model_config.conv_impl),
                dtype=_DTYPES[model_config.dtype], param_dtype=jnp.float32)
  return PLFMModels(
      temporal=TemporalBranch(features=tuple(model_config.temporal_features),
                              time_loop=model_config.time_loop, **common),
      generator=UNet(features=model_config.generator_features, **common),
      discriminator=PatchDiscriminator(features=model_config.discriminator_features, **common),
      head=UNet(features=model_config.head_features, **common),
  )


def _check_head_inputs(head_inputs: str) -> None:
  if head_inputs not in HEAD_INPUTS:
    raise ValueError(f"head_inputs must be one of {HEAD_INPUTS}, got {head_inputs!r}")


def head_channels(head_inputs: str) -> int:
  """Input channels of the fusion head for a `head_inputs` setting (see `head_input`)."""
  _check_head_inputs(head_inputs)
  return 6 if head_inputs == "branches" else 10


@functools.partial(jax.jit, static_argnums=0)
def _jit_init(module: nn.Module, rng: jax.Array, *inputs: jax.Array) -> dict:
  return dict(module.init(rng, *inputs, train=False))


def init_module(module: nn.Module, rng: jax.Array, *inputs: jax.Array) -> dict:
  """Jitted `module.init(rng, *inputs, train=False)`: {"params", "batch_stats"} of a component.

  The default ("partitionable") threefry makes XLA:CPU compile every draw of a 4-D kernel for
  about a second, ten times the classic one, which adds up to minutes for PLFM's convolutions.
  """
  with jax.threefry_partitionable(False):
    return _jit_init(module, rng, *inputs)


def init_variables(models: PLFMModels, rng: jax.Array, *, image_size: int, series_length: int,
                   head_inputs: str = "branches") -> dict[str, dict]:
  """Initial {"params", "batch_stats"} of every component, keyed by component name.

  `series_length` counts the target date too: the temporal branch sees series_length - 1 dates.
  Wrap in `jax.eval_shape` to get shapes without computing anything.
  """
  image = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  history = jnp.zeros((1, series_length - 1, image_size, image_size, 3), jnp.float32)
  head_in = jnp.zeros((1, image_size, image_size, head_channels(head_inputs)), jnp.float32)
  keys = jax.random.split(rng, 4)
  inits = {
      "temporal": (models.temporal, (history,)),
      "generator": (models.generator, (image,)),
      "discriminator": (models.discriminator, (image, image)),
      "head": (models.head, (head_in,)),
  }
  return {name: init_module(module, key, *inputs)
          for key, (name, (module, inputs)) in zip(keys, inits.items())}


def to_signed(x: jax.Array) -> jax.Array:
  """[0, 1] -> [-1, 1]."""
  return 2 * x - 1


def to_unit(x: jax.Array) -> jax.Array:
  """[-1, 1] -> [0, 1]."""
  return (x + 1) / 2


def sar_generator_input(sar: jax.Array) -> jax.Array:
  """VV (B, H, W, 1) in [0, 1] -> the generator's input: VV in [-1, 1] replicated to 3 channels."""
  return jnp.broadcast_to(to_signed(sar), (*sar.shape[:-1], 3))


def head_input(temporal: jax.Array, sar_fake: jax.Array, cloudy: jax.Array | None = None,
               cloud_mask: jax.Array | None = None, *, head_inputs: str = "branches") -> jax.Array:
  """The fusion head's input, channels-last.

  Unlike the reference, the head sees the full temporal output image (not one row broadcast
  over the image) and all three channels of the SAR generator output.

  Args:
    temporal: temporal branch output (B, H, W, 3) in [0, 1].
    sar_fake: SAR generator output (B, H, W, 3) in [-1, 1].
    cloudy: the cloudy target date (B, H, W, 3) in [0, 1]; needed for "branches+cloudy".
    cloud_mask: (B, H, W, 1) in {0, 1}; needed for "branches+cloudy".
    head_inputs: "branches" -> temporal ++ SAR, 6 channels in [-1, 1]; "branches+cloudy" ->
      also the cloudy image in [-1, 1] and the cloud mask as is, 10 channels.
  """
  _check_head_inputs(head_inputs)
  parts = [to_signed(temporal), sar_fake]
  if head_inputs == "branches+cloudy":
    if cloudy is None or cloud_mask is None:
      raise ValueError('head_inputs "branches+cloudy" needs cloudy and cloud_mask')
    parts += [to_signed(cloudy), cloud_mask]
  return jnp.concatenate(parts, axis=-1)


def composite(prediction: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array) -> jax.Array:
  """The prediction under clouds (mask > 0.5), the cloudy input's own pixels elsewhere, exactly."""
  return jnp.where(cloud_mask > 0.5, prediction, cloudy.astype(prediction.dtype))


def predict(models: PLFMModels, variables: Mapping[str, Any], batch: Mapping[str, jax.Array], *,
            head_inputs: str = "branches") -> dict[str, jax.Array]:
  """Inference with BatchNorm running averages; pure, so `jax.jit` it with `models` static.

  Args:
    models: from `build_models`.
    variables: from `init_variables` or training.
    batch: "history" (B, T-1, H, W, 3), "cloudy" (B, H, W, 3), "cloud_mask" (B, H, W, 1) and
      "sar" (B, H, W, 1), as produced by the input pipeline.
    head_inputs: as in `head_input`; must match the head's variables.

  Returns:
    float32 (B, H, W, 3) images in [0, 1]: "temporal" (temporal branch), "sar" (SAR generator),
    "fused" (fusion head) and "composite" (fused under clouds, the cloudy input elsewhere).
  """
  temporal = models.temporal.apply(variables["temporal"], batch["history"], train=False)
  sar_fake = models.generator.apply(variables["generator"], sar_generator_input(batch["sar"]),
                                    train=False)
  fused = models.head.apply(
      variables["head"],
      head_input(temporal, sar_fake, batch["cloudy"], batch["cloud_mask"],
                 head_inputs=head_inputs),
      train=False)
  fused = to_unit(fused).astype(jnp.float32)
  return {
      "temporal": temporal.astype(jnp.float32),
      "sar": to_unit(sar_fake).astype(jnp.float32),
      "fused": fused,
      "composite": composite(fused, batch["cloudy"], batch["cloud_mask"]),
  }


def count_variables(variables: Any) -> int:
  """Number of scalars in a variables tree (params + batch_stats); works on shapes too."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables))
