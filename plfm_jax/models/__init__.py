"""Flax linen modules of PLFM: temporal ConvLSTM branch, SAR pix2pix U-Net + PatchGAN, fusion head.

`plfm_jax.modeling` builds them from the config and wires them together.
"""

from plfm_jax.models.convlstm import ConvLSTM2D, TemporalBranch
from plfm_jax.models.discriminator import PatchDiscriminator
from plfm_jax.models.unet import UNet

__all__ = ["ConvLSTM2D", "PatchDiscriminator", "TemporalBranch", "UNet"]
