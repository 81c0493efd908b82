"""The PLFM model: its four components, its options, and the one forward pass that wires them.

Training steps, evaluation, scene inference, the summary and the benchmark all go through
`PLFM.forward` (or `PLFM.predict`, the same pass in inference mode), so the wiring exists once.

Value ranges: every image going in (the batch) or coming out is in [0, 1]. Inside, the SAR
generator, its discriminator and the fusion head work in [-1, 1] (tanh) as in the reference, and
the temporal branch outputs [0, 1] (sigmoid), or a correction to a prior in residual mode. The
conversions happen in this module and nowhere else.

Batches are dicts of channels-last float arrays: "history" (B, T, H, W, 3) the earlier dates,
oldest first (their clouds filled, `plfm_jax.data.inputs`); "cloudy" (B, H, W, 3) the date to
restore; "cloud_mask" (B, H, W, 1), 1 where it is covered; "sar" (B, H, W, 1) Sentinel-1 VV of
the cloudy date scaled to [0, 1], optional: without it the SAR branch and the head do not run and
the fused image is the temporal branch's (other keys are ignored).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from plfm_jax.models import gapfill
from plfm_jax.models.conv import resolve_conv_impl
from plfm_jax.models.convlstm import TemporalBranch
from plfm_jax.models.discriminator import PatchDiscriminator
from plfm_jax.models.norm import NORMS
from plfm_jax.models.unet import UNet

# The components, defined once: in the order `init` draws their keys (that of the forward pass),
# each with the output of `forward` it produces (the discriminator only serves training). The
# stages (plfm_jax/stages.py) are made of them.
COMPONENT_OUTPUTS = {"temporal": "temporal", "generator": "sar_branch", "discriminator": None,
                     "head": "fused"}
COMPONENTS = tuple(COMPONENT_OUTPUTS)
# The components `predict` needs: those with an output.
INFERENCE_COMPONENTS = tuple(name for name, output in COMPONENT_OUTPUTS.items() if output)
HEAD_INPUTS = ("branches", "branches+cloudy")
HEAD_OUTPUTS = ("image", "residual", "affine")
# Output channels of the head per head_output: an image, a correction, or per band the gains of
# the cloudy image and of the temporal output and an offset.
_HEAD_OUT_FEATURES = {"image": 3, "residual": 3, "affine": 9}
TEMPORAL_PRIORS = ("none", *gapfill.METHODS)
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Standardised inputs are clipped to this many standard deviations: clouds, far brighter than
# the ground, carry no detail beyond it.
STANDARD_CLIP = 10.0
# Floor of a band's standard deviation, as a fraction of the [0, 1] range (water, snow).
MIN_STD = 0.01
# The affine head's difference (cloudy - temporal) is clipped to this many standard deviations:
# beyond, a pixel is cloud and carries nothing of the ground, and unclipped its large values
# would drown the gradient of the pixels that do.
DIFF_CLIP = 4.0

Variables = dict[str, Any]
Batch = Mapping[str, jax.Array]


def to_signed(x: jax.Array) -> jax.Array:
  """[0, 1] -> [-1, 1]."""
  return 2 * x - 1


def to_unit(x: jax.Array) -> jax.Array:
  """[-1, 1] -> [0, 1]."""
  return (x + 1) / 2


def composite(prediction: jax.Array, cloudy: jax.Array, cloud_mask: jax.Array) -> jax.Array:
  """The prediction under clouds (mask > 0.5), the cloudy input's own pixels elsewhere, exactly."""
  return jnp.where(cloud_mask > 0.5, prediction, cloudy.astype(prediction.dtype))


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


def count_variables(variables: Any) -> int:
  """Number of scalars in a variables tree (params + batch_stats); works on shapes too."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables))


class OpticalScale(NamedTuple):
  """How the networks see optical images: z = (x - mean) / std, clipped to +-STANDARD_CLIP.

  Corrections the networks output are in units of `std` too. Without standardisation mean and
  std are 0.5 (z = 2x - 1: the reference's [-1, 1]); with it, (B, 1, 1, C) statistics of each
  sample's earlier dates.
  """
  mean: jax.Array | float
  std: jax.Array | float

  def encode(self, image: jax.Array) -> jax.Array:
    """z of (B, H, W, C) images, or of (B, T, H, W, C) series."""
    mean, std = self.mean, self.std
    if jnp.ndim(image) == 5 and jnp.ndim(mean) == 4:
      mean, std = mean[:, None], std[:, None]
    return jnp.clip((image - mean) / std, -STANDARD_CLIP, STANDARD_CLIP)


@dataclasses.dataclass(frozen=True)
class PLFM:
  """The PLFM components and the options of how they are wired; build it with `from_config`.

  Hashable, so it can be a static argument of `jax.jit`. Variables are plain data,
  {component: {"params", "batch_stats"}}, from `init` or training.

  Attributes:
    temporal: ConvLSTM branch over the earlier dates.
    generator: pix2pix U-Net translating SAR to an optical image (the SAR branch).
    discriminator: PatchGAN judging the generator's images (training only).
    head: fusion U-Net.
    head_inputs: "branches" (reference: temporal ++ SAR branch outputs) or "branches+cloudy"
      (also the cloudy image and its cloud mask).
    temporal_prior: "none" (reference: the branch outputs the image) or a `gapfill` method: the
      branch adds a correction to that method's image, and equals it before training.
    match_history: the temporal branch reads the earlier dates matched band by band to the clear
      pixels of the cloudy date (`gapfill.match_history`) instead of as they are.
    robust_prior: the prior and the matching are fitted robustly (`gapfill.robust_linear_fit`:
      cloud, haze and shadow pixels that no mask caught get no weight) instead of by least
      squares.
    head_output: what the head produces. "image" (reference): the fused image itself (tanh).
      "residual": a correction added to the temporal output. "affine": per pixel and band two
      gains and an offset, fused = temporal + g_c d + g_t (temporal - mean) + std * offset,
      d = cloudy - temporal clipped to DIFF_CLIP standard deviations (`fuse`). Haze and shadows act on the ground's light as smooth gains and
      offsets, so the full-resolution detail of both images passes through, which the U-Net's
      half-resolution last layer cannot draw itself. Residual and affine heads start at zero:
      before training, fused = temporal.
    calibrate_temporal: in inference, the temporal branch's correction is scaled per image and
      band by the weight in [0, 1] that fits it best to the cloudy date's clear pixels
      (`calibration`): a correction that does not hold on this date's clear pixels (one learnt
      in another season, say) is turned down instead of applied under the clouds. Training
      applies the correction whole.
    keep_clear_pixels: the fused image is the cloudy date where it is clear (as the composite):
      the head restores the masked pixels only, and its loss and validation see only them.
    standardize: the networks see optical images standardised per sample and band with the
      mean and standard deviation of the earlier dates (`OpticalScale`), and corrections are
      in those units: reflectance is dark and its changes small, so in [-1, 1] (the reference)
      the inputs barely vary and one optimiser step moves an output by far more than the
      corrections it has to learn.
  """
  temporal: TemporalBranch
  generator: UNet
  discriminator: PatchDiscriminator
  head: UNet
  head_inputs: str = "branches"
  temporal_prior: str = "none"
  match_history: bool = False
  robust_prior: bool = False
  head_output: str = "image"
  calibrate_temporal: bool = False
  keep_clear_pixels: bool = False
  standardize: bool = False

  def __post_init__(self):
    if self.head_inputs not in HEAD_INPUTS:
      raise ValueError(f"head_inputs must be one of {HEAD_INPUTS}, got {self.head_inputs!r}")
    if self.temporal_prior not in TEMPORAL_PRIORS:
      raise ValueError(f"temporal_prior must be one of {TEMPORAL_PRIORS}, "
                       f"got {self.temporal_prior!r}")
    if self.temporal.residual != (self.temporal_prior != "none"):
      raise ValueError("the temporal branch is residual exactly when there is a temporal_prior")
    if self.calibrate_temporal and self.temporal_prior == "none":
      raise ValueError("calibrate_temporal needs a temporal_prior: it scales a correction")
    if self.temporal.norm not in NORMS:
      raise ValueError(f"norm must be one of {NORMS}, got {self.temporal.norm!r}")
    if self.head_output not in HEAD_OUTPUTS:
      raise ValueError(f"head_output must be one of {HEAD_OUTPUTS}, got {self.head_output!r}")
    if (self.head.residual != (self.head_output != "image")
        or self.head.out_features != _HEAD_OUT_FEATURES[self.head_output]):
      raise ValueError(f"the head module does not fit head_output {self.head_output!r}")

  @classmethod
  def from_config(cls, model_config: ml_collections.ConfigDict, *,
                  training: bool = True) -> PLFM:
    """Builds the model from the `model` section of configs/plfm.py.

    `conv_impl` "auto" is resolved here for the default backend and for training or for
    inference only (`resolve_conv_impl`; the two give the same numbers up to float32 rounding);
    `dtype` is the compute dtype, parameters are always float32.
    """
    if model_config.dtype not in _DTYPES:
      raise ValueError(f"model dtype must be one of {tuple(_DTYPES)}, got {model_config.dtype!r}")
    common = dict(impl=resolve_conv_impl(model_config.conv_impl, training=training), norm=model_config.norm,
                  dtype=_DTYPES[model_config.dtype], param_dtype=jnp.float32)
    return cls(
        temporal=TemporalBranch(features=tuple(model_config.temporal_features),
                                residual=model_config.temporal_prior != "none",
                                time_loop=model_config.time_loop, **common),
        generator=UNet(features=model_config.generator_features, **common),
        discriminator=PatchDiscriminator(features=model_config.discriminator_features,
                                         **common),
        head=UNet(features=model_config.head_features,
                  residual=model_config.head_output != "image",
                  out_features=_HEAD_OUT_FEATURES.get(model_config.head_output, 3), **common),
        head_inputs=model_config.head_inputs,
        temporal_prior=model_config.temporal_prior,
        match_history=model_config.match_history,
        # Models saved before the switch existed were fitted by least squares.
        robust_prior=model_config.get("robust_prior", False),
        head_output=model_config.head_output,
        calibrate_temporal=model_config.calibrate_temporal,
        keep_clear_pixels=model_config.keep_clear_pixels,
        standardize=model_config.standardize,
    )

  @property
  def head_channels(self) -> int:
    """Input channels of the fusion head (see `head_input`)."""
    return 6 if self.head_inputs == "branches" else 10

  # ---- variables ---------------------------------------------------------------------------

  def component_inputs(self, *, image_size: int,
                       series_length: int) -> dict[str, tuple[jax.ShapeDtypeStruct, ...]]:
    """{component: the shapes of its batch-1 inputs}: what `init` builds each component with.

    `series_length` counts the cloudy date too: the temporal branch sees series_length - 1
    dates.
    """
    shape = lambda *dims: jax.ShapeDtypeStruct((1, *dims), jnp.float32)
    image = shape(image_size, image_size, 3)
    return {"temporal": (shape(series_length - 1, image_size, image_size, 3),),
            "generator": (image,), "discriminator": (image, image),
            "head": (shape(image_size, image_size, self.head_channels),)}

  def init(self, rng: jax.Array, *, image_size: int, series_length: int) -> Variables:
    """Initial {"params", "batch_stats"} of every component, keyed by component name.

    Inputs as `component_inputs`. Wrap in `jax.eval_shape` to get shapes without computing
    anything.
    """
    inputs = self.component_inputs(image_size=image_size, series_length=series_length)
    keys = jax.random.split(rng, len(COMPONENTS))
    return {name: init_module(getattr(self, name), key,
                              *(jnp.zeros(x.shape, x.dtype) for x in inputs[name]))
            for key, name in zip(keys, COMPONENTS)}

  def apply_component(self, name: str, variables: Variables, *inputs: jax.Array,
                      train: bool) -> tuple[jax.Array, Variables]:
    """Applies component `name`; in training mode (batch statistics) also returns its updated
    BatchNorm averages, else `variables` as they are."""
    module = getattr(self, name)
    if not train:
      return module.apply(variables, *inputs, train=False), variables
    out, updates = module.apply(variables, *inputs, train=True, mutable=["batch_stats"])
    return out, {**variables, **updates}

  # ---- the pieces of the forward pass ------------------------------------------------------

  def optical_scale(self, batch: Batch) -> OpticalScale:
    """The scale of the networks' optical inputs and corrections for `batch` (`standardize`)."""
    if not self.standardize:
      return OpticalScale(0.5, 0.5)
    history = jnp.asarray(batch["history"], jnp.float32)
    mean = jnp.mean(history, axis=(1, 2, 3))[:, None, None]
    std = jnp.maximum(jnp.std(history, axis=(1, 2, 3)), MIN_STD)[:, None, None]
    return OpticalScale(mean, std)

  def temporal_input(self, batch: Batch, scale: OpticalScale) -> jax.Array:
    """The earlier dates as the temporal branch reads them (the reference: as they are)."""
    history = batch["history"]
    if self.match_history:
      history = gapfill.match_history(history, batch["cloudy"], batch["cloud_mask"],
                                      robust=self.robust_prior)
    return scale.encode(history) if self.standardize else history

  def prior(self, batch: Batch) -> jax.Array | None:
    """The image the residual temporal branch corrects, in [0, 1]; None without a prior."""
    if self.temporal_prior == "none":
      return None
    return gapfill.METHODS[self.temporal_prior](batch["history"], batch["cloudy"],
                                                batch["cloud_mask"], robust=self.robust_prior)

  @staticmethod
  def calibration(correction: jax.Array, prior: jax.Array, batch: Batch) -> jax.Array:
    """(B, 1, 1, C) weights in [0, 1]: per image and band, the least-squares weight w of
    prior + w * correction against the cloudy date on its clear pixels (0 for no correction)."""
    clear = 1.0 - batch["cloud_mask"]
    residual = batch["cloudy"] - prior
    agreement = jnp.sum(clear * correction * residual, axis=(1, 2), keepdims=True)
    size = jnp.sum(clear * correction * correction, axis=(1, 2), keepdims=True)
    return jnp.clip(agreement / jnp.maximum(size, 1e-12), 0.0, 1.0)

  @staticmethod
  def sar_generator_input(sar: jax.Array) -> jax.Array:
    """VV (B, H, W, 1) in [0, 1] -> the generator's input: [-1, 1], replicated to 3 channels."""
    return jnp.broadcast_to(to_signed(sar), (*sar.shape[:-1], 3))

  def sar_branch(self, variables: Variables, sar: jax.Array, *,
                 train: bool = False) -> tuple[jax.Array, Variables]:
    """The generator's optical image of the SAR input, in [0, 1], and its variables."""
    out, variables = self.apply_component("generator", variables, self.sar_generator_input(sar),
                                          train=train)
    return to_unit(out), variables

  def discriminate(self, variables: Variables, image: jax.Array, sar: jax.Array, *,
                   train: bool = False) -> tuple[jax.Array, Variables]:
    """PatchGAN logits of an optical `image` in [0, 1] conditioned on the VV image `sar`."""
    return self.apply_component("discriminator", variables, to_signed(image),
                                self.sar_generator_input(sar), train=train)

  def head_input(self, temporal: jax.Array, sar_branch: jax.Array, batch: Batch,
                 scale: OpticalScale) -> jax.Array:
    """The fusion head's input, channels-last: images encoded by `scale` (the reference: in
    [-1, 1]), the cloud mask as is, in {0, 1}.

    Unlike the reference, the head sees the full temporal output image (not one row broadcast
    over the image) and all three channels of the SAR branch's output. "branches": temporal ++
    SAR branch, 6 channels; "branches+cloudy": also the cloudy image and its mask, 10 channels.
    """
    parts = [scale.encode(temporal), scale.encode(sar_branch)]
    if self.head_inputs == "branches+cloudy":
      parts += [scale.encode(batch["cloudy"]), batch["cloud_mask"]]
    return jnp.concatenate(parts, axis=-1).astype(jnp.float32)

  def fuse(self, head_out: jax.Array, temporal: jax.Array, cloudy: jax.Array,
           scale: OpticalScale) -> jax.Array:
    """The fused image in [0, 1] from the head's output (see `head_output`)."""
    if self.head_output == "image":
      return to_unit(head_out)
    if self.head_output == "residual":
      return jnp.clip(temporal + scale.std * head_out, 0.0, 1.0)
    # The first gain weighs the cloudy date against the temporal image (1 copies the cloudy
    # date, as on clear pixels; its gradient follows the temporal image's own error), the
    # second rescales the temporal image's contrast, the offset is in units of `scale.std`.
    gain_cloudy, gain_temporal, offset = jnp.split(head_out, 3, axis=-1)
    difference = jnp.clip(cloudy - temporal, -DIFF_CLIP * scale.std, DIFF_CLIP * scale.std)
    correction = (gain_cloudy * difference + gain_temporal * (temporal - scale.mean)
                  + scale.std * offset)
    return jnp.clip(temporal + correction, 0.0, 1.0)

  # ---- the forward pass --------------------------------------------------------------------

  def forward(self, variables: Variables, batch: Batch, *,
              train: frozenset[str] = frozenset()) -> tuple[dict[str, jax.Array], Variables]:
    """Runs the temporal branch, the SAR branch and the head, as far as `variables` hold them.

    Args:
      variables: {component: variables}; components missing here are skipped (the head needs
        both branches), and so are the SAR branch and the head for a batch without "sar": the
        fused image is then the temporal branch's (kept to the clear pixels with
        `keep_clear_pixels`).
      batch: as in the module docstring.
      train: components run in training mode (batch statistics, updated BatchNorm averages);
        the others run in inference mode.

    Returns:
      (outputs, variables with the updated BatchNorm averages). Outputs, all (B, H, W, 3) in
      [0, 1]: "prior" (with a temporal_prior), "temporal", "sar_branch" and "fused"; and, where
      the temporal correction was calibrated, its (B, 1, 1, 3) weights "calibration".
    """
    v = dict(variables)
    out = {}
    scale = self.optical_scale(batch)
    if "temporal" in v:
      image, v["temporal"] = self.apply_component(
          "temporal", v["temporal"], self.temporal_input(batch, scale), train="temporal" in train)
      prior = self.prior(batch)
      if prior is not None:
        out["prior"] = prior
        correction = scale.std * image
        if self.calibrate_temporal and "temporal" not in train:
          out["calibration"] = self.calibration(correction, prior, batch)
          correction = out["calibration"] * correction
        image = jnp.clip(prior + correction, 0.0, 1.0)
      out["temporal"] = image
    if "sar" not in batch:
      if "temporal" in v and "head" in v:
        out["fused"] = out["temporal"]
        if self.keep_clear_pixels:
          out["fused"] = composite(out["fused"], batch["cloudy"], batch["cloud_mask"])
      return out, v
    if "generator" in v:
      out["sar_branch"], v["generator"] = self.sar_branch(v["generator"], batch["sar"],
                                                          train="generator" in train)
    if "head" in v:
      head_in = self.head_input(out["temporal"], out["sar_branch"], batch, scale)
      head_out, v["head"] = self.apply_component("head", v["head"], head_in, train="head" in train)
      out["fused"] = self.fuse(head_out, out["temporal"], batch["cloudy"], scale)
      if self.keep_clear_pixels:
        out["fused"] = composite(out["fused"], batch["cloudy"], batch["cloud_mask"])
    return out, v

  def predict(self, variables: Variables, batch: Batch) -> dict[str, jax.Array]:
    """Inference (BatchNorm running averages); pure, so `jax.jit` it with the model static.

    Returns:
      float32 outputs of `forward` (images in [0, 1], calibration weights) and "composite"
      (the fused image under clouds, the cloudy input elsewhere).
    """
    out, _ = self.forward(variables, batch)
    out = {k: v.astype(jnp.float32) for k, v in out.items()}
    out["composite"] = composite(out["fused"], batch["cloudy"], batch["cloud_mask"])
    return out
