"""The paper's procedure as scale-free recipes; `params.py` and `small.py` register them at paper
scale (`mode.X`) and at CPU scale (`mode.small.X`), together with the studies' variants
(`experiments/studies.py`).

A recipe is one method (`mode_pax.methods`) with its data and upstream runs. It names upstream
stages by class name (`BACKBONE = 'Backbone'`), resolved in the module that registers it, so
`mode.small.CodeExpert` starts from `mode.small.Backbone`'s run.
"""

from __future__ import annotations

import sys

from mode import studies
from mode_pax import experiment
from mode_pax import methods
from mode_pax import registry
from mode_pax.data import tasks

CODE, MATH, MATH_CODE, ENGLISH_PRETRAIN = (
    tasks.CODE, tasks.MATH, tasks.MATH_CODE, tasks.ENGLISH_PRETRAIN)


class Recipe(experiment.LmExperiment):
  """Resolves upstream stage names in the module that registered the concrete experiment."""
  BACKBONE = 'Backbone'
  EXPERTS = ()
  PAPER_PARAMS_B = None  # Table 1's parameter column (billions) for this row, if it is one

  def resolve_stage(self, stage):
    if isinstance(stage, str):
      return getattr(sys.modules[type(self).__module__], stage)
    return stage


class Backbone(Recipe, methods.Pretrain):
  """Pre-trains the backbone LM on English (at paper scale: the config of the existing PLM)."""
  LABEL = 'Backbone (no adaptation)'
  BACKBONE = None
  TRAIN_DATA = ENGLISH_PRETRAIN


class CodeExpert(Recipe, methods.MoDE):
  """Stage 1: one expert trained on Code; backbone frozen, expert and gates train."""
  NUM_DOMAIN_EXPERTS = 1
  TRAIN_DATA = CODE


class MathExpert(CodeExpert):
  """Stage 1: one expert trained on Math."""
  TRAIN_DATA = MATH


class ComposeMathCode(Recipe, methods.MoDE):
  """Stages 2-3: the Math and Code experts composed and fine-tuned with the gates on Math+Code."""
  LABEL = 'MoDE 2x Experts'
  PAPER_PARAMS_B = 2.376
  NUM_DOMAIN_EXPERTS = 2
  EXPERTS = ('MathExpert', 'CodeExpert')
  TRAIN_DATA = MATH_CODE


class FrozenExpertsMathCode(ComposeMathCode):
  """Table 1 'MoDE 2x Frozen Experts': only the gates train."""
  LABEL = 'MoDE 2x Frozen Experts'
  FREEZE_EXPERTS = True


class Uninitialized1xMathCode(ComposeMathCode):
  """Table 1 'MoDE 1x Uninitialized Expert': a new expert trained on Math+Code."""
  LABEL = 'MoDE 1x Uninitialized Expert'
  PAPER_PARAMS_B = 1.979
  NUM_DOMAIN_EXPERTS = 1
  EXPERTS = ()


class Uninitialized2xMathCode(ComposeMathCode):
  """Table 1 'MoDE 2x Uninitialized Experts'."""
  LABEL = 'MoDE 2x Uninitialized Experts'
  EXPERTS = ()


class CodeExpertGateInit(CodeExpert):
  """CodeExpert whose gates start at weight p on the backbone (our option; the paper does not
  say how gates start; each scale sets p as chosen on the validation splits, study gate_init)."""
  GATE_INITIAL_BACKBONE_WEIGHT = 0.9


class MathExpertGateInit(CodeExpertGateInit):
  """MathExpert whose gates start at the backbone (see CodeExpertGateInit)."""
  TRAIN_DATA = MATH


class ComposeMathCodeGateInit(ComposeMathCode):
  """MoDE 2x Experts from the gate-initialised experts; the composition's gates start from the
  experts' trained single-domain gates (GATES_FROM_EXPERTS; chosen over zero weights at p on the
  backbone on the validation splits, study compose_gates)."""
  LABEL = 'MoDE 2x Experts, gates start at the backbone'
  PAPER_PARAMS_B = None  # our row, not the paper's
  GATE_INITIAL_BACKBONE_WEIGHT = 0.9
  GATES_FROM_EXPERTS = True
  EXPERTS = ('MathExpertGateInit', 'CodeExpertGateInit')


class LoraMathCode(Recipe, methods.Lora):
  """LoRA baseline on Math+Code: the paper's best configuration (rank 16, attention only)."""
  LABEL = 'LoRA'
  PAPER_PARAMS_B = 1.585
  LORA_RANK = 16
  TRAIN_DATA = MATH_CODE


class FullFinetuneMathCode(Recipe, methods.FullFinetune):
  """Full-parameter fine-tuning baseline on Math+Code."""
  LABEL = 'Full-parameter Fine-tuning'
  PAPER_PARAMS_B = 1.583
  TRAIN_DATA = MATH_CODE


class LoraCode(Recipe, methods.Lora):
  """LoRA on Code (Table 2, Figure 3)."""
  LORA_RANK = 16
  TRAIN_DATA = CODE


# Table 1's rows in the paper's order (the backbone too, as the reference without adaptation),
# and the comparisons printed under it: MoDE 2x Experts against each baseline.
# Our gate-initialised MoDE 2x row follows the paper's rows.
TABLE1 = (Backbone, FullFinetuneMathCode, LoraMathCode, Uninitialized1xMathCode,
          Uninitialized2xMathCode, FrozenExpertsMathCode, ComposeMathCode,
          ComposeMathCodeGateInit)
# (MoDE rows, baselines): each MoDE row is compared with each baseline.
TABLE1_COMPARISONS = ((ComposeMathCode, ComposeMathCodeGateInit),
                      (FullFinetuneMathCode, LoraMathCode))
PROCEDURE = TABLE1 + (CodeExpert, MathExpert, CodeExpertGateInit, MathExpertGateInit, LoraCode)


# The decisive rows of Table 1, trained again with other seeds (run-to-run variation).
SEEDED = (ComposeMathCode, ComposeMathCodeGateInit, FullFinetuneMathCode, LoraMathCode)


def seed_name(recipe_name: str, seed: int) -> str:
  """The registered name of a recipe's run with SEED = seed (seed 0: the recipe itself)."""
  return recipe_name if seed == 0 else f'{recipe_name}Seed{seed}'


def register_all(scale: type, module_name: str, sweeps: studies.Sweeps | None,
                 stage_overrides=None, seeds: tuple[int, ...] = ()) -> dict[str, type]:
  """Registers every recipe and study variant at one scale; returns name -> class.

  scale: class attributes of the scale (backbone size, batch, steps, mesh), first in the MRO.
  sweeps: the studies' settings at this scale; None registers the recipes only.
  stage_overrides: recipe name -> class attributes that differ at this scale for that recipe
    (and the study variants built on it).
    seeds: SEED values (besides 0, the recipe itself) of the SEEDED recipes' extra runs.
  """
  stage_overrides = stage_overrides or {}
  classes = {}

  def _define(name, bases, attrs, doc):
    classes[name] = type(name, bases, dict(attrs, __module__=module_name, __qualname__=name,
                                           __doc__=doc))

  for recipe in PROCEDURE:
    _define(recipe.__name__, (scale, recipe), stage_overrides.get(recipe.__name__, {}),
            recipe.__doc__)
  # With scanned layers the Backbone run is stored in its blocks: variants in other blocks start
  # from a relayout of it (studies.with_backbone_relayouts).
  backbone = classes['Backbone']
  backbone_blocks = backbone.NUM_BLOCKS if backbone.SCAN_LAYERS else None
  variants = studies.all_variants(sweeps, backbone_blocks) if sweeps is not None else {}
  for name, (recipe_name, overrides) in variants.items():
    base = classes[recipe_name]
    overrides = dict(overrides)
    doc = overrides.pop('__doc__', None) or (
        f'{base.__doc__.splitlines()[0]} Study variant: {overrides}.')
    _define(name, (base,), overrides, doc)
  for recipe in SEEDED:
    for seed in seeds:
      _define(seed_name(recipe.__name__, seed), (classes[recipe.__name__],), dict(SEED=seed),
              f'{recipe.__doc__.splitlines()[0]} Seed {seed}.')
  return registry.register(list(classes.values()))
