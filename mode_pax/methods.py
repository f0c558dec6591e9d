"""The adaptation methods of the paper, as experiment pieces: one class per method.

A recipe inherits from exactly one of them (`class CodeExpert(methods.MoDE)`); each method says
what it adds to the backbone's LM config, which variables train, and how the backbone's (and the
experts') checkpoints fill the model. Adding a method means adding a class here.
"""

from __future__ import annotations

from typing import Sequence

from mode_pax import experiment
from mode_pax import naming
from mode_pax.layers import lora
from mode_pax.layers import mode


class Pretrain(experiment.LmExperiment):
  """Trains a plain praxis LM from scratch (the backbone); every variable trains."""
  METHOD_NAME = 'Pre-training'
  BACKBONE = None


class FullFinetune(experiment.LmExperiment):
  """Full-parameter fine-tuning: the backbone's checkpoint, every variable trains."""
  METHOD_NAME = 'Full FT'


class Lora(experiment.LmExperiment):
  """LoRA adapters on the frozen backbone (Hu et al. 2021); only lora_a / lora_b train."""
  METHOD_NAME = 'LoRA'
  LORA_RANK = 16
  LORA_ALPHA: float | None = None  # None: alpha = rank (scaling 1)
  LORA_FFN = False  # also adapt the feed-forward layers
  LORA_EMBEDDINGS = False  # also adapt the embedding table

  def adapt_lm(self, lm_tpl):
    return lora.add_lora(lm_tpl, rank=self.LORA_RANK, alpha=self.LORA_ALPHA, attention=True,
                         ffn=self.LORA_FFN, embeddings=self.LORA_EMBEDDINGS)

  def trainable_variables(self) -> Sequence[str]:
    return (lora.LORA_VARIABLES_REGEX,)

  def backbone_load_rules(self):
    return [(r'(params/lm/.*)', '{}')], (lora.LORA_VARIABLES_REGEX,)


class MoDE(experiment.LmExperiment):
  """MoDE blocks (Eq. 1-2): frozen backbone, trainable experts and gates."""
  METHOD_NAME = 'MoDE'
  NUM_DOMAIN_EXPERTS = 1
  EXPERT_LAYERS = 2  # per block: 3 blocks x 2 layers = 6 layers per expert
  FREEZE_EXPERTS = False  # composition with frozen experts: only the gates train
  # None: gates start as the paper leaves them (praxis' random Linear). p in (0, 1): our option,
  # each gate starts at weight p on the backbone for every token (MoDEGate).
  GATE_INITIAL_BACKBONE_WEIGHT: float | None = None

  def adapt_lm(self, lm_tpl):
    mode_lm = mode.to_mode_lm(lm_tpl, num_blocks=self.NUM_BLOCKS,
                              num_domain_experts=self.NUM_DOMAIN_EXPERTS,
                              expert_layers=self.EXPERT_LAYERS)
    mode_lm.stacked_transformer_tpl.gate_tpl.initial_backbone_weight = (
        self.GATE_INITIAL_BACKBONE_WEIGHT)
    return mode_lm

  def trainable_variables(self) -> Sequence[str]:
    return naming.TRAIN_GATES if self.FREEZE_EXPERTS else naming.TRAIN_EXPERTS_AND_GATES

  def backbone_load_rules(self):
    if self.SCAN_LAYERS:  # the backbone run is stored in the same blocks
      return list(naming.BLOCKED_BACKBONE_RULES), ()
    return naming.backbone_from_transformer_lm(self.NUM_LAYERS, self.NUM_BLOCKS), ()

  def expert_load_rules(self, index: int):
    if len(self.EXPERTS) > self.NUM_DOMAIN_EXPERTS:
      raise ValueError(f'{type(self).__name__}: {len(self.EXPERTS)} expert runs for '
                       f'NUM_DOMAIN_EXPERTS={self.NUM_DOMAIN_EXPERTS}.')
    return naming.expert_from_mode_lm(0, index)
