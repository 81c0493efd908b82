"""The training stages, defined once: what each trains, reads frozen, starts from and outputs.

Stages are made of the model's components (`plfm_jax.models.plfm.COMPONENT_OUTPUTS`, which also
says what each outputs). Training (`plfm_jax/train`), the workdir's reading of trained models
(`plfm_jax/workdirs.py`) and the benchmark all take the stages from here; adding a stage is one
entry of STAGES.
"""

from __future__ import annotations

import dataclasses

from plfm_jax.models.plfm import COMPONENT_OUTPUTS, COMPONENTS


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """Which components a stage updates and which earlier stages' results it reads.

  Attributes:
    name: the stage's name (its checkpoints' folder).
    trainable: components it updates.
    frozen: components it reads from earlier stages' best checkpoints, not updated.
    warm_start: components whose starting point is an earlier stage's best checkpoint.
  """
  name: str
  trainable: tuple[str, ...]
  frozen: tuple[str, ...] = ()
  warm_start: tuple[str, ...] = ()

  @property
  def output(self) -> str:
    """The output of `PLFM.forward` its validation loss and sample pictures are of: that of the
    last component it trains, in the order of the forward pass, that has one."""
    return [COMPONENT_OUTPUTS[name] for name in COMPONENTS
            if name in self.trainable and COMPONENT_OUTPUTS[name]][-1]


# Every stage, in the order they run.
STAGES = {
    "temporal": StageSpec("temporal", ("temporal",)),
    "gan": StageSpec("gan", ("generator", "discriminator")),
    "head": StageSpec("head", ("head",), frozen=("temporal", "generator")),
    # Beyond the paper: end-to-end fine-tuning of everything from the stage-wise result.
    "joint": StageSpec("joint", COMPONENTS, warm_start=COMPONENTS),
}

# The stage whose best checkpoint holds each component: the first that trains it.
COMPONENT_STAGE = {component: spec.name for spec in reversed(STAGES.values())
                   for component in spec.trainable if not spec.warm_start}
