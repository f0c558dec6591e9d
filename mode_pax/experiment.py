"""Base experiment for every mode_pax run: one backbone architecture and one adaptation method.

Concrete experiments (in `experiments/`, importable as the `mode` package) are small registered
subclasses that override class attributes, in the style of paxml's own LM experiments.
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import flags
from etils import epath
from jax import numpy as jnp
from paxml import tasks_lib
import jax
from paxml.tasks.lm import model_params
from praxis import base_input
from praxis import pax_fiddle
from praxis import py_utils

from mode_pax import naming
from mode_pax import paths
from mode_pax.data import inputs
from mode_pax.data import tasks as data_tasks
from mode_pax.layers import lora
from mode_pax.layers import mode

# Adaptation methods.
PRETRAIN = 'pretrain'  # train a plain praxis TransformerLm from scratch (the backbone)
FULL = 'full'  # full-parameter fine-tuning of the backbone
LORA = 'lora'  # LoRA adapters on the frozen backbone
MODE = 'mode'  # MoDE blocks: frozen backbone, trainable experts and gates
METHODS = (PRETRAIN, FULL, LORA, MODE)


class LmInputSpecs(base_input.BaseInputSpecsProvider):
  """Shapes of a packed LM batch, so that a model initialises without opening its data.

  Attributes:
    batch_size: Per-process batch size.
    seq_len: Sequence length.
  """
  batch_size: int = 1
  seq_len: int = 8

  def get_input_specs(self):
    shape = (self.batch_size, self.seq_len)
    ints = jax.ShapeDtypeStruct(shape, jnp.int32)
    floats = jax.ShapeDtypeStruct(shape, jnp.float32)
    return py_utils.NestedMap(ids=ints, labels=ints, weights=floats, paddings=floats,
                              segment_ids=ints, segment_pos=ints)


class LmExperiment(model_params.TransformerLmSpmdAdafactor):
  """A praxis TransformerLm adapted by one method; paper-scale defaults (Section 4.1).

  The backbone defaults reproduce the paper's 1.58B-parameter, 18-layer PLM (Table 1's parameter
  column within 1%; see `mode_pax.param_count`).
  """
  # Backbone architecture.
  NUM_LAYERS = 18
  MODEL_DIMS = 2048
  HIDDEN_DIMS = 12032
  DIMS_PER_HEAD = 128
  NUM_HEADS = 16
  VOCAB_SIZE = 192000
  FPROP_DTYPE = jnp.bfloat16

  # Adaptation.
  METHOD = MODE
  NUM_BLOCKS = 3
  NUM_DOMAIN_EXPERTS = 1
  EXPERT_LAYERS = 2  # per block: 3 blocks x 2 layers = 6 layers per expert
  FREEZE_EXPERTS = False  # composition with frozen experts: only the gates train
  LORA_RANK = 16
  LORA_ALPHA: float | None = None  # None: alpha = rank (scaling 1)
  LORA_FFN = False
  LORA_EMBEDDINGS = False

  # Training (paper: batch 128, learning rate 1e-3, 50k steps).
  LEARNING_RATE = 1e-3
  WARMUP_STEPS = 1000
  MAX_STEPS = 50000
  TRAIN_BATCH_SIZE = 128
  SEQUENCE_LENGTH = 1024
  CHECKPOINT_EVERY_N_STEPS = 1000
  EVAL_INTERVAL_STEPS = 1000

  # Data: seqio task names from mode_pax.data.tasks.
  TRAIN_DATA = data_tasks.CODE
  TRAIN_DATA_SEED = 1234  # fixed shuffle order: a rerun reproduces a run (None: new each run)
  EVAL_DATA = (data_tasks.MATH, data_tasks.CODE, data_tasks.ENGLISH)
  EVAL_BATCH_SIZE = 32
  EVAL_NUM_BATCHES = -1  # -1: the whole split, exactly once; N: its first N batches

  # Upstream stages (experiment classes) whose checkpoints this run warm-starts from.
  BACKBONE = None  # provides the backbone: a PRETRAIN experiment (class or name, see resolve_stage)
  EXPERTS = ()  # expert j starts from expert 0 of EXPERTS[j]'s run
  BUILD_FOR_RUN = True  # False: only build the config (no upstream checks, no job_log_dir claim)

  @property
  def eval_split(self) -> str:
    """Split evaluated by eval datasets; the test split only for final reporting."""
    return os.environ.get('MODE_PAX_EVAL_SPLIT', 'validation')

  def get_input_specs_provider_params(self):
    return pax_fiddle.Config(LmInputSpecs, batch_size=self.TRAIN_BATCH_SIZE,
                             seq_len=self.SEQUENCE_LENGTH)

  def datasets(self):
    data_vocab = data_tasks.vocab_size()
    if data_vocab > self.VOCAB_SIZE:
      raise ValueError(
          f'{type(self).__name__}.VOCAB_SIZE={self.VOCAB_SIZE} is smaller than the built '
          f'vocabulary ({data_vocab} pieces in {data_tasks.resolve_data_dir()}); rebuild the '
          f'data with --vocab_size={self.VOCAB_SIZE} or raise VOCAB_SIZE.')
    train = inputs.seqio_input_params(
        self.TRAIN_DATA, 'train', batch_size=self.TRAIN_BATCH_SIZE,
        seq_len=self.SEQUENCE_LENGTH, is_training=True, name='train',
        input_random_seed=self.TRAIN_DATA_SEED)
    evals = [inputs.seqio_input_params(
        name, self.eval_split, batch_size=self.EVAL_BATCH_SIZE, seq_len=self.SEQUENCE_LENGTH,
        is_training=False, name=name.removeprefix('mode_')) for name in self.EVAL_DATA]
    for p in evals:
      p.eval_loop_num_batches = self.EVAL_NUM_BATCHES
    return [train] + evals

  def trainable_variables(self) -> Sequence[str]:
    """Regexes of the variables that train (bprop_variable_inclusion); () means all."""
    if self.METHOD in (PRETRAIN, FULL):
      return ()
    if self.METHOD == LORA:
      return (lora.LORA_VARIABLES_REGEX,)
    return naming.TRAIN_GATES if self.FREEZE_EXPERTS else naming.TRAIN_EXPERTS_AND_GATES

  def task(self) -> pax_fiddle.Config:
    if self.METHOD not in METHODS:
      raise ValueError(f'{type(self).__name__}.METHOD={self.METHOD!r}; use one of {METHODS}.')
    if self.BUILD_FOR_RUN:
      self._claim_job_log_dir()
    task_p = super().task()
    lm_tpl = task_p.model.lm_tpl
    if self.METHOD == MODE:
      lm_tpl = mode.to_mode_lm(
          lm_tpl, num_blocks=self.NUM_BLOCKS, num_domain_experts=self.NUM_DOMAIN_EXPERTS,
          expert_layers=self.EXPERT_LAYERS)
    elif self.METHOD == LORA:
      lm_tpl = lora.add_lora(
          lm_tpl, rank=self.LORA_RANK, alpha=self.LORA_ALPHA, attention=True,
          ffn=self.LORA_FFN, embeddings=self.LORA_EMBEDDINGS)
    task_p.model.lm_tpl = lm_tpl
    model_params.set_default_adafactor(
        task_p, self.LEARNING_RATE, self.WEIGHT_DECAY, warmup_steps=self.WARMUP_STEPS,
        decay_start=self.WARMUP_STEPS + 1, decay_end=self.MAX_STEPS,
        clip_gradient_norm_to_value=self.CLIP_GRADIENT_NORM_TO_VALUE)
    task_p.train.num_train_steps = self.MAX_STEPS
    task_p.train.learner.bprop_variable_inclusion = list(self.trainable_variables())
    task_p.train.init_from_checkpoint_rules = self.warm_start_rules()
    return task_p

  def backbone_checkpoint_dir(self) -> str | None:
    """Folder with the backbone's checkpoint_XXXXXXXX folders (MODE_PAX_BACKBONE_CKPT wins)."""
    if os.environ.get('MODE_PAX_BACKBONE_CKPT'):
      return os.environ['MODE_PAX_BACKBONE_CKPT']
    if self.BACKBONE is None:
      return None
    return paths.checkpoint_dir(paths.run_dir(self.resolve_stage(self.BACKBONE)))

  def resolve_stage(self, stage):
    """The experiment class of an upstream stage given in BACKBONE or EXPERTS."""
    return stage

  def _upstream_rules(self, upstream: type, ckpt_dir: str, load_rules, ignore_rules=()):
    if self.BUILD_FOR_RUN and paths.latest_checkpoint_step(ckpt_dir) is None:
      name = paths.experiment_name(upstream)
      raise FileNotFoundError(
          f'{type(self).__name__} starts from the checkpoint of {name}, but {ckpt_dir} holds '
          f'no checkpoint. Run that stage first: python -m paxml.main --exp={name} '
          f'--job_log_dir={os.path.dirname(ckpt_dir)} (or point MODE_PAX_RUNS / '
          'MODE_PAX_BACKBONE_CKPT at where it ran).')
    source = upstream()
    source.BUILD_FOR_RUN = False
    return tasks_lib.CheckpointLoadingRules(
        task_p=source.task(), load_rules=list(load_rules), ignore_rules=list(ignore_rules),
        input_specs_provider_p=source.get_input_specs_provider_params(), safe_load=True,
        load_step=False, load_opt_states=False)

  def warm_start_rules(self) -> dict[str, tasks_lib.CheckpointLoadingRules]:
    """init_from_checkpoint_rules: backbone from BACKBONE's run, expert j from EXPERTS[j]'s."""
    if self.METHOD == PRETRAIN:
      return {}
    if self.BACKBONE is None:
      raise ValueError(f'{type(self).__name__} adapts a backbone: set BACKBONE.')
    backbone_ckpt = self.backbone_checkpoint_dir()
    if self.METHOD == MODE:
      backbone_load = naming.backbone_from_transformer_lm(self.NUM_LAYERS, self.NUM_BLOCKS)
      ignore = ()
    else:
      backbone_load = [(r'(params/lm/.*)', '{}')]
      ignore = (lora.LORA_VARIABLES_REGEX,) if self.METHOD == LORA else ()
    rules = {backbone_ckpt: self._upstream_rules(
        self.resolve_stage(self.BACKBONE), backbone_ckpt, backbone_load, ignore)}
    if len(self.EXPERTS) > self.NUM_DOMAIN_EXPERTS:
      raise ValueError(f'{type(self).__name__}: {len(self.EXPERTS)} expert runs for '
                       f'NUM_DOMAIN_EXPERTS={self.NUM_DOMAIN_EXPERTS}.')
    for j, expert_exp in enumerate(self.resolve_stage(e) for e in self.EXPERTS):
      ckpt = paths.checkpoint_dir(paths.run_dir(expert_exp))
      if ckpt in rules:
        raise ValueError(f'{type(self).__name__}: {expert_exp.__name__} is listed twice.')
      rules[ckpt] = self._upstream_rules(expert_exp, ckpt, naming.expert_from_mode_lm(0, j))
    return rules

  def _claim_job_log_dir(self) -> None:
    """Refuses a job_log_dir that already holds a run of a different experiment."""
    if not (flags.FLAGS.is_parsed() and 'job_log_dir' in flags.FLAGS):
      return
    job_log_dir = flags.FLAGS.job_log_dir
    if not job_log_dir:
      return
    marker = epath.Path(job_log_dir) / 'mode_experiment.txt'
    name = paths.experiment_name(type(self))
    if marker.exists() and marker.read_text().strip() != name:
      raise ValueError(
          f'{job_log_dir} holds a run of {marker.read_text().strip()}, not {name}; Pax would '
          'resume from its checkpoints. Use another --job_log_dir or delete that one.')
    if not marker.exists():
      marker.parent.mkdir(parents=True, exist_ok=True)
      marker.write_text(name + '\n')
