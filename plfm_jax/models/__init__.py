"""Flax linen modules of PLFM and the model that wires them (`plfm_jax.models.plfm.PLFM`).

Temporal ConvLSTM branch, SAR pix2pix U-Net + PatchGAN, fusion head; gap-filling methods used as
priors and baselines (`gapfill`).
"""

from plfm_jax.models.convlstm import ConvLSTM2D, TemporalBranch
from plfm_jax.models.discriminator import PatchDiscriminator
from plfm_jax.models.unet import UNet

__all__ = ["ConvLSTM2D", "PatchDiscriminator", "TemporalBranch", "UNet"]
