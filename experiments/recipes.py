"""The paper's procedure and studies as scale-free recipes; `params.py` and `small.py` register
them at paper scale (`mode.X`) and at CPU scale (`mode.small.X`).

A recipe names its upstream stages by class name (`BACKBONE = 'Backbone'`), resolved in the
module that registers it, so `mode.small.CodeExpert` starts from `mode.small.Backbone`'s run.
"""

from __future__ import annotations

import sys

from paxml import experiment_registry

from mode_pax import experiment
from mode_pax.data import tasks

CODE, MATH, MATH_CODE, ENGLISH_PRETRAIN = (
    tasks.CODE, tasks.MATH, tasks.MATH_CODE, tasks.ENGLISH_PRETRAIN)


class Recipe(experiment.LmExperiment):
  """Resolves upstream stage names in the module that registered the concrete experiment."""
  BACKBONE = 'Backbone'
  EXPERTS = ()

  def resolve_stage(self, stage):
    if isinstance(stage, str):
      return getattr(sys.modules[type(self).__module__], stage)
    return stage


class Backbone(Recipe):
  """Pre-trains the backbone LM on English (at paper scale: the config of the existing PLM)."""
  METHOD = experiment.PRETRAIN
  BACKBONE = None
  TRAIN_DATA = ENGLISH_PRETRAIN


class CodeExpert(Recipe):
  """Stage 1: one expert trained on Code; backbone frozen, expert and gates train."""
  METHOD = experiment.MODE
  NUM_DOMAIN_EXPERTS = 1
  TRAIN_DATA = CODE


class MathExpert(CodeExpert):
  """Stage 1: one expert trained on Math."""
  TRAIN_DATA = MATH


class ComposeMathCode(Recipe):
  """Stages 2-3: the Math and Code experts composed and fine-tuned with the gates on Math+Code."""
  METHOD = experiment.MODE
  NUM_DOMAIN_EXPERTS = 2
  EXPERTS = ('MathExpert', 'CodeExpert')
  TRAIN_DATA = MATH_CODE


class FrozenExpertsMathCode(ComposeMathCode):
  """Table 1 'MoDE 2x Frozen Experts': only the gates train."""
  FREEZE_EXPERTS = True


class Uninitialized1xMathCode(ComposeMathCode):
  """Table 1 'MoDE 1x Uninitialized Expert': a new expert trained on Math+Code."""
  NUM_DOMAIN_EXPERTS = 1
  EXPERTS = ()


class Uninitialized2xMathCode(ComposeMathCode):
  """Table 1 'MoDE 2x Uninitialized Experts'."""
  EXPERTS = ()


class LoraMathCode(Recipe):
  """LoRA baseline on Math+Code: the paper's best configuration (rank 16, attention only)."""
  METHOD = experiment.LORA
  LORA_RANK = 16
  TRAIN_DATA = MATH_CODE


class FullFinetuneMathCode(Recipe):
  """Full-parameter fine-tuning baseline on Math+Code."""
  METHOD = experiment.FULL
  TRAIN_DATA = MATH_CODE


class LoraCode(Recipe):
  """LoRA on Code (Table 2, Figure 3)."""
  METHOD = experiment.LORA
  LORA_RANK = 16
  TRAIN_DATA = CODE


TABLE1 = (FullFinetuneMathCode, LoraMathCode, Uninitialized1xMathCode, Uninitialized2xMathCode,
          FrozenExpertsMathCode, ComposeMathCode)
PROCEDURE = (Backbone, CodeExpert, MathExpert) + TABLE1 + (LoraCode,)


def study_variants(lora_ranks, code_sizes, mixture_sizes, expert_layer_counts):
  """Name -> (recipe, overrides) for Tables 2-3 and Figures 3 and 5."""
  variants = {}
  # Table 2 and Figure 3 (left, LoRA): rank sweep, attention only; FFN / embedding options.
  for rank in lora_ranks:
    variants[f'LoraCodeRank{rank}'] = (LoraCode, dict(LORA_RANK=rank))
  for suffix, ffn, emb in (('Ffn', True, False), ('Emb', False, True), ('FfnEmb', True, True)):
    variants[f'LoraCodeRank16{suffix}'] = (LoraCode, dict(LORA_FFN=ffn, LORA_EMBEDDINGS=emb))
  # Table 3: blocks x expert layers per block, one uninitialised expert on Code.
  for blocks in (2, 3, 6):
    for layers in (1, 2):
      variants[f'CodeExpertB{blocks}L{layers}'] = (
          CodeExpert, dict(NUM_BLOCKS=blocks, EXPERT_LAYERS=layers))
  # Figure 3 (left, MoDE): expert layers per block at 3 blocks.
  for layers in expert_layer_counts:
    variants.setdefault(f'CodeExpertB3L{layers}', (
        CodeExpert, dict(NUM_BLOCKS=3, EXPERT_LAYERS=layers)))
  # Figure 3 (right): training examples, same number of steps.
  for n in code_sizes:
    variants[f'CodeExpertN{n}'] = (CodeExpert, dict(TRAIN_DATA=f'{CODE}_n{n}'))
    variants[f'LoraCodeN{n}'] = (LoraCode, dict(TRAIN_DATA=f'{CODE}_n{n}'))
  # Figure 5: Math+Code mixture examples for each method.
  for n in mixture_sizes:
    for recipe in (ComposeMathCode, FrozenExpertsMathCode, Uninitialized2xMathCode,
                   LoraMathCode, FullFinetuneMathCode):
      variants[f'{recipe.__name__}N{n}'] = (recipe, dict(TRAIN_DATA=f'{MATH_CODE}_n{n}'))
  return variants


def register_all(scale: type, module_name: str, *, lora_ranks, code_sizes, mixture_sizes,
                 expert_layer_counts, stage_overrides=None) -> dict[str, type]:
  """Registers every recipe and study variant at one scale; returns name -> class.

  stage_overrides: recipe name -> class attributes that differ at this scale for that recipe
  (and the study variants built on it).
  """
  stage_overrides = stage_overrides or {}
  registered = {}

  def _register(name, bases, attrs, doc):
    cls = type(name, bases, dict(attrs, __module__=module_name, __qualname__=name, __doc__=doc))
    registered[name] = experiment_registry.register(cls)

  for recipe in PROCEDURE:
    _register(recipe.__name__, (scale, recipe), stage_overrides.get(recipe.__name__, {}),
              recipe.__doc__)
  for name, (recipe, overrides) in study_variants(
      lora_ranks, code_sizes, mixture_sizes, expert_layer_counts).items():
    base = registered[recipe.__name__]
    _register(name, (base,), overrides, f'{recipe.__doc__} Study variant: {overrides}.')
  return registered
