"""The adaptation methods of the paper, as experiment pieces: one class per method.

A recipe inherits from exactly one of them (`class CodeExpert(methods.MoDE)`); each method says
what it adds to the backbone's LM config, which variables train, and how the backbone's (and the
experts') checkpoints fill the model. Adding a method means adding a class here.
"""

from __future__ import annotations

import copy
import os
from typing import Sequence

from mode_pax import experiment
from mode_pax import naming
from mode_pax import paths
from mode_pax import registry
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
  # False: a composition's gates start as above. True, our option for compositions: each expert's
  # gate logit relative to the backbone's starts where its single-domain run's gate ended
  # (`mode_pax.convert --expert_gates` composes them into `expert_gates_dir()`; the pipeline does
  # it before training).
  GATES_FROM_EXPERTS = False
  # How a block's experts compute, not what (MoDEBlock.vectorize_experts): as one expert under
  # jax.vmap over their variables, so XLA compiles each block's experts once.
  VECTORIZE_EXPERTS = False

  def adapt_lm(self, lm_tpl):
    mode_lm = mode.to_mode_lm(lm_tpl, num_blocks=self.NUM_BLOCKS,
                              num_domain_experts=self.NUM_DOMAIN_EXPERTS,
                              expert_layers=self.EXPERT_LAYERS)
    mode_lm.stacked_transformer_tpl.gate_tpl.initial_backbone_weight = (
        self.GATE_INITIAL_BACKBONE_WEIGHT)
    mode_lm.stacked_transformer_tpl.block_tpl.vectorize_experts = self.VECTORIZE_EXPERTS
    return mode_lm

  def trainable_variables(self) -> Sequence[str]:
    return naming.TRAIN_GATES if self.FREEZE_EXPERTS else naming.TRAIN_EXPERTS_AND_GATES

  def backbone_load_rules(self):
    if self.SCAN_LAYERS:  # the backbone run is stored in the same blocks
      return list(naming.BLOCKED_BACKBONE_RULES), ()
    return naming.backbone_from_transformer_lm(self.NUM_LAYERS, self.NUM_BLOCKS), ()

  def expert_gates_dir(self) -> str:
    """Folder of the checkpoint with the gates composed from the EXPERTS' runs (in the run's
    folder, beside Pax's own checkpoints)."""
    return os.path.join(paths.run_dir(registry.experiment_name(type(self))), 'expert_gates')

  def warm_start_rules(self):
    rules = super().warm_start_rules()
    if self.GATES_FROM_EXPERTS:
      self._check_gates_from_experts()
      same_model = copy.copy(self)
      same_model.GATES_FROM_EXPERTS = False  # its task is this one's, without this rule
      # The checkpoint holds the gates only: Pax restores just the variables a rule matches.
      rules[self.expert_gates_dir()] = self.loading_rules(
          same_model, [(r'(params/lm/transformer/blocks_\d+/gate/.*)', '{}')])
    return rules

  def check_upstream_runs(self) -> None:
    super().check_upstream_runs()
    if self.GATES_FROM_EXPERTS and paths.latest_checkpoint_step(self.expert_gates_dir()) is None:
      name = registry.experiment_name(type(self))
      raise FileNotFoundError(
          f'{type(self).__name__} starts its gates from its experts\' gates '
          f'(GATES_FROM_EXPERTS), composed into {self.expert_gates_dir()}, which has no '
          f'checkpoint: python -m mode_pax.convert --expert_gates --exp={name} '
          f'--out={self.expert_gates_dir()} (or the pipeline, which does it).')

  def _check_gates_from_experts(self) -> None:
    if len(self.EXPERTS) != self.NUM_DOMAIN_EXPERTS or self.NUM_DOMAIN_EXPERTS < 2:
      raise ValueError(
          f'{type(self).__name__}: GATES_FROM_EXPERTS composes the gates of one expert run per '
          f'expert, but it has {len(self.EXPERTS)} EXPERTS for NUM_DOMAIN_EXPERTS='
          f'{self.NUM_DOMAIN_EXPERTS}; give a composition (NUM_DOMAIN_EXPERTS >= 2, one EXPERTS '
          'run each) or set GATES_FROM_EXPERTS = False.')

  def expert_load_rules(self, index: int):
    if len(self.EXPERTS) > self.NUM_DOMAIN_EXPERTS:
      raise ValueError(f'{type(self).__name__}: {len(self.EXPERTS)} expert runs for '
                       f'NUM_DOMAIN_EXPERTS={self.NUM_DOMAIN_EXPERTS}.')
    return naming.expert_from_mode_lm(0, index)
