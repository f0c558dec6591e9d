"""The paper's studies (Tables 2-3, Figures 3 and 5), each declared once: its runs, its table
columns and its figure. `recipes.register_all` registers the runs at each scale;
`python -m mode_pax.studies --study=NAME` trains, evaluates and writes the table and figure.

A study's runs are variants of the recipes (a new registered name: recipe + class attributes)
plus recipes that are points of the study as they are (e.g. the all-examples point of Figure 3).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from mode_pax.data import tasks


@dataclasses.dataclass(frozen=True)
class Sweeps:
  """The studies' settings at one scale."""
  lora_ranks: tuple[int, ...]
  code_sizes: tuple[int, ...]  # Code training examples (Figure 3, right)
  mixture_sizes: tuple[int, ...]  # Math+Code training examples (Figure 5)
  expert_layer_counts: tuple[int, ...]  # expert layers per block at 3 blocks (Figure 3, left)
  # Initial gate weights on the backbone tried for MoDE's experts (our option, not the paper's:
  # MoDEGate.initial_backbone_weight), compared on the validation splits (study 'gate_init').
  gate_init_weights: tuple[float, ...] = ()
  # The backbone's settings, chosen in turn on the validation splits: its learning rate (study
  # backbone_lr), then its pre-training data (backbone_data, at the chosen rate), each compared
  # at backbone_study_steps steps on the English+SOTU mixture unless varied; then its steps
  # (backbone_steps: more steps of the Backbone as registered).
  backbone_learning_rates: tuple[float, ...] = ()
  backbone_study_steps: int = 500
  backbone_pretrain_data: tuple[str, ...] = ()
  backbone_steps: tuple[int, ...] = ()


Variants = dict[str, tuple[str, dict[str, Any]]]  # name -> (recipe name, class attributes)


@dataclasses.dataclass(frozen=True)
class Study:
  """One study of the paper.

  Attributes:
    name: --study=NAME; results go to results/<name>_<scale>.{md,csv,png}.
    variants: sweeps -> the runs this study adds.
    includes: recipes that are runs of the study as registered.
    columns: the table's setting columns: (header, experiment -> value).
    group: experiment -> the figure's curve.
    x: (experiment, parameter count) -> the figure's x value.
    xlabel: the figure's x-axis label.
    logx: log-scale x axis.
    panels: the figure's panels: (label, metric key) each.
    sort: experiment -> sort key of the table's rows (default: group, then x).
    split: the split its runs are evaluated on: 'test' for the paper's studies, 'validation'
      for choosing our own settings (never chosen on test).
  """
  name: str
  variants: Callable[[Sweeps], Variants]
  columns: tuple[tuple[str, Callable[[type], Any]], ...]
  group: Callable[[type], str]
  x: Callable[[type, Any], float]
  xlabel: str
  logx: bool
  panels: tuple[tuple[str, str], ...]
  includes: tuple[str, ...] = ()
  sort: Callable[[type], Any] | None = None
  split: str = 'test'

  def runs(self, sweeps: Sweeps) -> list[str]:
    """Names of the study's runs at a scale, sorted."""
    return sorted(set(self.variants(sweeps)) | set(self.includes))


CODE_ENGLISH = (('Code', 'code'), ('English', 'english'))
ALL_DOMAINS = (('Math', 'math'), ('Code', 'code'), ('English', 'english'), ('Average', 'average'))
_yes_no = lambda flag: 'yes' if flag else 'no'


def _lora_options(exp) -> str:
  return 'attention' + ' + FFN' * exp.LORA_FFN + ' + embeddings' * exp.LORA_EMBEDDINGS


def _table2_variants(s: Sweeps) -> Variants:
  """LoRA rank sweep (attention only) and the FFN / embedding options at rank 16, on Code."""
  v = {f'LoraCodeRank{r}': ('LoraCode', dict(LORA_RANK=r)) for r in s.lora_ranks}
  for suffix, ffn, emb in (('Ffn', True, False), ('Emb', False, True), ('FfnEmb', True, True)):
    v[f'LoraCodeRank16{suffix}'] = ('LoraCode', dict(LORA_FFN=ffn, LORA_EMBEDDINGS=emb))
  return v


def _mode_layout(blocks, layers):
  return f'CodeExpertB{blocks}L{layers}', ('CodeExpert', dict(NUM_BLOCKS=blocks,
                                                             EXPERT_LAYERS=layers))


def _table3_variants(s: Sweeps) -> Variants:
  """Blocks x expert layers per block, one new expert on Code."""
  del s
  return dict(_mode_layout(b, l) for b in (2, 3, 6) for l in (1, 2))


def _figure3_params_variants(s: Sweeps) -> Variants:
  """LoRA ranks against MoDE expert layers per block (3 blocks): accuracy vs added parameters.
  MoDE twice: the paper's (random gates) and ours with gates that start at the backbone (the
  CodeExpertGateInit recipe, its weight as chosen at the scale)."""
  v = {k: x for k, x in _table2_variants(s).items() if k.removeprefix('LoraCodeRank').isdigit()}
  v.update(_mode_layout(3, l) for l in s.expert_layer_counts)
  v.update((f'CodeExpertGateInitB3L{l}',
            ('CodeExpertGateInit', dict(NUM_BLOCKS=3, EXPERT_LAYERS=l)))
           for l in s.expert_layer_counts)
  return v


def _mode_gates(exp) -> str:
  starts_at_backbone = getattr(exp, 'GATE_INITIAL_BACKBONE_WEIGHT', None)  # None: LoRA, or random
  return ', gates start at the backbone' if starts_at_backbone else ''


def _figure3_examples_variants(s: Sweeps) -> Variants:
  """Code training examples, same number of steps, MoDE and LoRA."""
  v = {}
  for n in s.code_sizes:
    v[f'CodeExpertN{n}'] = ('CodeExpert', dict(TRAIN_DATA=f'{tasks.CODE}_n{n}'))
    v[f'LoraCodeN{n}'] = ('LoraCode', dict(TRAIN_DATA=f'{tasks.CODE}_n{n}'))
  return v


FIGURE5_RECIPES = ('ComposeMathCode', 'FrozenExpertsMathCode', 'Uninitialized2xMathCode',
                   'LoraMathCode', 'FullFinetuneMathCode')


def _figure5_variants(s: Sweeps) -> Variants:
  """Math+Code mixture examples for each Table 1 method."""
  return {f'{r}N{n}': (r, dict(TRAIN_DATA=f'{tasks.MATH_CODE}_n{n}'))
          for n in s.mixture_sizes for r in FIGURE5_RECIPES}


def _gate_init_variants(s: Sweeps) -> Variants:
  """Each single-domain expert with gates that start at weight p on the backbone."""
  return {f'{expert}Gate{round(100 * p)}': (expert, dict(GATE_INITIAL_BACKBONE_WEIGHT=p))
          for expert in ('CodeExpert', 'MathExpert') for p in s.gate_init_weights}


def _gate_init_label(exp) -> str:
  p = exp.GATE_INITIAL_BACKBONE_WEIGHT
  return 'random (paper)' if p is None else f'{p:g}'


def _compose_gates_variants(s: Sweeps) -> Variants:
  """The gate-init composition with gates starting at p on the backbone (zero weights) and with
  gates composed from its experts' single-domain gates (GATES_FROM_EXPERTS)."""
  del s
  return {f'ComposeMathCode{kind}Gates': ('ComposeMathCodeGateInit',
                                         dict(GATES_FROM_EXPERTS=kind == 'Expert'))
          for kind in ('Zero', 'Expert')}


def _compose_gates_label(exp) -> str:
  if exp.GATE_INITIAL_BACKBONE_WEIGHT is None:
    return 'random (paper)'
  return ("the experts' gates" if exp.GATES_FROM_EXPERTS
          else f'{exp.GATE_INITIAL_BACKBONE_WEIGHT:g} on the backbone')


def _backbone_lr_name(lr: float) -> str:
  return f'BackboneLr{lr:g}'.replace('.', 'p')


def _backbone_lr_variants(s: Sweeps) -> Variants:
  """The backbone pre-trained at each learning rate for backbone_study_steps on the English+SOTU
  mixture (everything else the Backbone's)."""
  return {_backbone_lr_name(lr): ('Backbone', dict(
      LEARNING_RATE=lr, MAX_STEPS=s.backbone_study_steps, TRAIN_DATA=tasks.ENGLISH_PRETRAIN))
          for lr in s.backbone_learning_rates}


def _backbone_data_variants(s: Sweeps) -> Variants:
  """The backbone pre-trained on each data choice at the best rate of backbone_lr (the largest
  swept, 1e-2); the English+SOTU point is backbone_lr's run at that rate."""
  lr = max(s.backbone_learning_rates, default=0.0)
  out = {}
  for data in s.backbone_pretrain_data:
    if data == tasks.ENGLISH_PRETRAIN:
      name = _backbone_lr_name(lr)
    else:
      name = 'BackboneOn' + ''.join(w.title() for w in data.removeprefix('mode_').split('_'))
    out[name] = ('Backbone', dict(LEARNING_RATE=lr, MAX_STEPS=s.backbone_study_steps,
                                  TRAIN_DATA=data))
  return out


def _backbone_steps_variants(s: Sweeps) -> Variants:
  """The backbone pre-trained for more steps (warm-up and decay stretched with them)."""
  return {f'BackboneSteps{n}': ('Backbone', dict(MAX_STEPS=n)) for n in s.backbone_steps}


def _train_examples(exp, count) -> int:
  del count
  return tasks.num_train_examples(exp.TRAIN_DATA)


STUDIES = (
    Study(name='table2', variants=_table2_variants,
          columns=(('LoRA rank', lambda e: e.LORA_RANK), ('FFN', lambda e: _yes_no(e.LORA_FFN)),
                   ('Embeddings', lambda e: _yes_no(e.LORA_EMBEDDINGS))),
          group=lambda e: f'LoRA on {_lora_options(e)}', x=lambda e, c: e.LORA_RANK,
          xlabel='LoRA rank', logx=True, panels=CODE_ENGLISH,
          sort=lambda e: (e.LORA_FFN, e.LORA_EMBEDDINGS, e.LORA_RANK)),
    Study(name='table3', variants=_table3_variants,
          columns=(('Blocks', lambda e: e.NUM_BLOCKS),
                   ('Expert layers per block', lambda e: e.EXPERT_LAYERS)),
          group=lambda e: f'{e.EXPERT_LAYERS} expert layer(s) per block',
          x=lambda e, c: e.NUM_BLOCKS, xlabel='MoDE blocks', logx=False, panels=CODE_ENGLISH,
          sort=lambda e: (e.NUM_BLOCKS, e.EXPERT_LAYERS)),
    Study(name='figure3_params', variants=_figure3_params_variants,
          columns=(('Method', lambda e: e.METHOD_NAME + _mode_gates(e)),),
          group=lambda e: e.METHOD_NAME + (' (rank)' if e.METHOD_NAME == 'LoRA'
                                           else _mode_gates(e) + ' (expert layers per block)'),
          x=lambda e, c: c.trainable, xlabel='trainable parameters', logx=True,
          panels=(('Code', 'code'),)),
    Study(name='figure3_examples', variants=_figure3_examples_variants,
          includes=('CodeExpert', 'LoraCode'),
          columns=(('Method', lambda e: e.METHOD_NAME),),
          group=lambda e: e.METHOD_NAME, x=_train_examples, xlabel='Code training examples',
          logx=True, panels=(('Code', 'code'),)),
    Study(name='figure5', variants=_figure5_variants, includes=FIGURE5_RECIPES,
          columns=(('Method', lambda e: e.LABEL),),
          group=lambda e: e.LABEL, x=_train_examples, xlabel='Math + Code training examples',
          logx=True, panels=ALL_DOMAINS),
)
STUDIES += (
    Study(name='gate_init', variants=_gate_init_variants, includes=('CodeExpert', 'MathExpert'),
          columns=(('Initial backbone weight', _gate_init_label),),
          group=lambda e: f'{e.TRAIN_DATA.removeprefix("mode_")} expert',
          x=lambda e, c: e.GATE_INITIAL_BACKBONE_WEIGHT or 0.0,
          xlabel='initial gate weight on the backbone (0: random, the paper)', logx=False,
          panels=ALL_DOMAINS, sort=lambda e: (e.TRAIN_DATA, e.GATE_INITIAL_BACKBONE_WEIGHT or 0),
          split='validation'),
    Study(name='compose_gates', variants=_compose_gates_variants, includes=('ComposeMathCode',),
          columns=(('Composition gates start at', _compose_gates_label),),
          group=lambda e: 'MoDE 2x Experts (Math + Code)',
          x=lambda e, c: (0 if e.GATE_INITIAL_BACKBONE_WEIGHT is None
                          else 1 + int(e.GATES_FROM_EXPERTS)),
          xlabel="composition gates: 0 random (paper), 1 at p on the backbone, 2 the experts'",
          logx=False, panels=ALL_DOMAINS, sort=lambda e: (e.GATE_INITIAL_BACKBONE_WEIGHT or 0,
                                                         e.GATES_FROM_EXPERTS),
          split='validation'),
    Study(name='backbone_steps', variants=_backbone_steps_variants, includes=('Backbone',),
          columns=(('Steps', lambda e: e.MAX_STEPS),
                   ('Tokens', lambda e: e.MAX_STEPS * e.TRAIN_BATCH_SIZE * e.SEQUENCE_LENGTH)),
          group=lambda e: 'backbone', x=lambda e, c: e.MAX_STEPS,
          xlabel='backbone pre-training steps', logx=True, panels=ALL_DOMAINS,
          sort=lambda e: e.MAX_STEPS, split='validation'),
    Study(name='backbone_data', variants=_backbone_data_variants,
          columns=(('Pre-training data', lambda e: e.TRAIN_DATA.removeprefix('mode_')),),
          group=lambda e: 'backbone', x=lambda e, c: int(e.TRAIN_DATA == tasks.ENGLISH),
          xlabel='pre-training data: 0 English + SOTU, 1 English only', logx=False,
          panels=ALL_DOMAINS, sort=lambda e: e.TRAIN_DATA, split='validation'),
    Study(name='backbone_lr', variants=_backbone_lr_variants,
          columns=(('Learning rate', lambda e: f'{e.LEARNING_RATE:g}'),),
          group=lambda e: 'backbone', x=lambda e, c: e.LEARNING_RATE,
          xlabel='backbone pre-training learning rate', logx=True, panels=ALL_DOMAINS,
          sort=lambda e: e.LEARNING_RATE, split='validation'),
)
BY_NAME = {s.name: s for s in STUDIES}


def relayout_backbone(blocks: int) -> tuple[str, tuple[str, dict[str, Any]]]:
  """The Backbone run in `blocks` blocks: trains nothing, its checkpoint is the Backbone run's
  relaid out (PRETRAINED='run:Backbone', `mode_pax.convert --run`; the pipeline schedules it
  after that run)."""
  return f'BackboneB{blocks}', ('Backbone', dict(
      NUM_BLOCKS=blocks, MAX_STEPS=0, PRETRAINED='run:Backbone',
      __doc__=f'The Backbone run relaid out into {blocks} blocks (no training).'))


def with_backbone_relayouts(variants: Variants, backbone_blocks: int | None) -> Variants:
  """`variants`, where those in other blocks than the stored backbone's start from a relayout.

  With scanned layers (SCAN_LAYERS) every run stores and loads the backbone in its NUM_BLOCKS
  blocks, and Pax's warm-start rules cannot split or stack a variable, so a variant with another
  NUM_BLOCKS (Table 3) starts from `BackboneB{b}` (`relayout_backbone`), added here.

  Args:
    variants: name -> (recipe name, class attributes); each recipe starts from 'Backbone'.
    backbone_blocks: the Backbone run's NUM_BLOCKS where the scale scans its layers; None (no
      scanning: every run loads the plain backbone by name) returns `variants` unchanged.
  """
  if backbone_blocks is None:
    return variants
  out = dict(variants)
  for name, (recipe, overrides) in variants.items():
    blocks = overrides.get('NUM_BLOCKS', backbone_blocks)
    if recipe == 'Backbone' or blocks == backbone_blocks:
      continue
    backbone, spec = relayout_backbone(blocks)
    out[name] = (recipe, dict(overrides, BACKBONE=backbone))
    out[backbone] = spec
  return out


def all_variants(sweeps: Sweeps, backbone_blocks: int | None = None) -> Variants:
  """Every study's variants at a scale (a run shared by two studies is registered once), and the
  relaid-out backbones they need (`with_backbone_relayouts`; backbone_blocks: the Backbone run's
  NUM_BLOCKS at a scale with scanned layers, else None)."""
  out: Variants = {}
  for study in STUDIES:
    for name, spec in study.variants(sweeps).items():
      if name in out and out[name] != spec:
        raise ValueError(f'Study {study.name} defines {name} as {spec}, another as {out[name]}.')
      out[name] = spec
  return with_backbone_relayouts(out, backbone_blocks)
