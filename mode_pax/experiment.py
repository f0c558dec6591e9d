"""Base experiment for every mode_pax run: a backbone architecture adapted by one method.

Concrete experiments (in `experiments/`, importable as the `mode` package) are small registered
classes that combine three kinds of pieces, in the style of paxml's own LM experiments:

  a method   (`mode_pax.methods`: Pretrain, FullFinetune, Lora, MoDE) - what trains and how the
             backbone's LM config is changed;
  a recipe   (`experiments/recipes.py`: CodeExpert, ComposeMathCode, ...) - data and upstream runs;
  a scale    (`experiments/params.py`, `small.py`: the backbone's size, batch, steps, mesh).

`task()` only builds configuration: it reads the locations in `mode_pax.paths` (environment
variables) and touches no file. What needs the file system - the upstream checkpoints exist, the
data build fits the vocabulary, the job_log_dir is not another experiment's - is checked in
`validate()`, which `paxml.main` calls before it runs anything.
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import flags
from etils import epath
from jax import numpy as jnp
from paxml import tasks_lib
from paxml.tasks.lm import model_params
from praxis import pax_fiddle
from praxis.layers import repeats

from mode_pax import learners
from mode_pax import lm_batch
from mode_pax import paths
from mode_pax import registry
from mode_pax.data import inputs
from mode_pax.data import tasks as data_tasks
from mode_pax.layers import mode

# The marker a run leaves in its job_log_dir: Pax resumes from any checkpoint there, so a folder
# holding another experiment's run is refused.
EXPERIMENT_MARKER = 'mode_experiment.txt'


class LmExperiment(model_params.TransformerLmSpmdAdafactor):
  """A praxis TransformerLm adapted by a method; paper-scale defaults (Section 4.1).

  The backbone defaults reproduce the paper's 1.58B-parameter, 18-layer PLM (Table 1's parameter
  column within 1%; see `mode_pax.param_count`). Methods (`mode_pax.methods`) override the hooks
  `adapt_lm`, `trainable_variables` and `backbone_load_rules`; a backbone family overrides
  `backbone_lm`.
  """
  # Backbone architecture.
  NUM_LAYERS = 18
  MODEL_DIMS = 2048
  HIDDEN_DIMS = 12032
  DIMS_PER_HEAD = 128
  NUM_HEADS = 16
  VOCAB_SIZE = 192000
  FPROP_DTYPE = jnp.bfloat16
  # MoDE blocks B (the backbone's layers are cut into B blocks of NUM_LAYERS / B).
  NUM_BLOCKS = 3
  # Scan the layers of each block (praxis StackedTransformerRepeated): compile time no longer
  # grows with depth. Every method then stores the backbone in blocks (`mode.blocked_backbone`,
  # NUM_BLOCKS of them), the layout its checkpoint has and that the other runs load by name.
  SCAN_LAYERS = False
  # What scanned layers keep for the backward pass: praxis' default recomputes each layer
  # (activation memory of one layer per layer: TPU HBM); SAVE_EVERYTHING is faster on CPU.
  SCAN_CHECKPOINT_POLICY = repeats.AutodiffCheckpointType.SAVE_NOTHING
  # How the output layer (praxis' embedding-softmax) computes, not what: the same model, the
  # same variables, the same loss up to float rounding. None keeps the backbone's own setting.
  # EMBEDDING_LOOKUP_STYLE: 'index' gathers the embedding rows; paxml's sharding sets 'matmul',
  # a one-hot [tokens, vocab] x [vocab, dims] matmul that suits TPUs (SharedEmbeddingSoftmax
  # only: a tied embedding). SOFTMAX_CHUNK_SIZE: praxis' chunk_size, the softmax and loss
  # computed in a scan over chunks of that many positions (the logits are recomputed in the
  # backward pass): [batch, chunk, vocab] arrays that stay in cache on a CPU.
  EMBEDDING_LOOKUP_STYLE: str | None = None
  SOFTMAX_CHUNK_SIZE: int | None = None
  # paxml's per-variable norm summaries (`task.train.variable_norm_summary`: the L2 mean of every
  # variable and of every level of the variable tree, computed in each train step). Summaries
  # only: the learner's own norms are LEARNER_NORM_SUMMARIES' concern.
  VARIABLE_NORM_SUMMARY = True
  # paxml's learner's norm summaries (`grad_norm_summary`: the raw, clipped and applied gradient
  # norms; `var_norm_summary`: the total variable norm), each a sum over every variable computed
  # in each train step. Summaries only. Off, a ConditionalSkipLearner still writes the raw
  # gradient norm, which the step's validity check computes anyway.
  LEARNER_NORM_SUMMARIES = True
  # The optimizer update in XLA conditionals on the step's validity, one per shape of variable
  # (`mode_pax.learners`): the same training, a train step that XLA:CPU compiles in well under
  # half the time. Off for TPUs, where the conditionals would serialise the updates.
  CONDITIONAL_OPTIMIZER_UPDATE = False

  # The method's name in tables and plots (set by each method).
  METHOD_NAME = None
  # The row label in the paper's tables (set by recipes that are Table 1 rows).
  LABEL = None

  # Training (paper: batch 128, learning rate 1e-3, 50k steps).
  LEARNING_RATE = 1e-3
  WARMUP_STEPS = 1000
  MAX_STEPS = 50000
  TRAIN_BATCH_SIZE = 128
  SEQUENCE_LENGTH = 1024
  CHECKPOINT_EVERY_N_STEPS = 1000
  EVAL_INTERVAL_STEPS = 1000

  # Data: seqio task names from mode_pax.data.tasks.
  # The build's tokenizer: None = the vocabulary the data build trains (SentencePiece); a
  # pre-trained LM's tokenizer name (e.g. 'smollm2', `python -m mode_pax.data.build
  # --tokenizer=smollm2`) reads the build in that subfolder of the data folder (paths.data_dir).
  TOKENIZER: str | None = None
  TRAIN_DATA = data_tasks.CODE
  TRAIN_DATA_SEED = 1234  # fixed shuffle order: a rerun reproduces a run (None: new each run)
  RANDOM_SEED = 1234  # initialisation and dropout (Pax's task.train.random_seed)
  # Run-to-run variation: a run with SEED = s offsets both seeds above by s (another data order
  # and initialisation, the same everything else).
  SEED = 0
  EVAL_DATA = (data_tasks.MATH, data_tasks.CODE, data_tasks.ENGLISH)
  EVAL_BATCH_SIZE = 32
  EVAL_NUM_BATCHES = -1  # Pax's eval (--mode=eval): -1, the whole split once; N: N batches
  # The tables' evaluation (`mode_pax.evaluate --split`, per example): the examples of each
  # split, all of them (1.0) or a fixed pseudo-random sample (EVAL_SAMPLE_SEED) holding at least
  # this fraction of its tokens, so every work, package folder and template counts.
  EVAL_TOKEN_FRACTION = 1.0
  EVAL_SAMPLE_SEED = 0

  # Upstream stages (experiment classes, or names resolved by `resolve_stage`) whose checkpoints
  # this run warm-starts from.
  BACKBONE = None  # provides the backbone (a Pretrain experiment); None: nothing to adapt
  # False where the backbone is an existing pre-trained LM that the user brings (paper scale):
  # a missing backbone then asks for MODE_PAX_BACKBONE_CKPT rather than for pre-training it.
  PRETRAIN_BACKBONE_HERE = True
  # A Pretrain experiment whose run is an existing PLM converted rather than trained: a name in
  # mode_pax.plms (e.g. 'smollm2'), a Hugging Face folder or a .gguf file; the pipeline converts
  # it into the run's checkpoint folder (mode_pax.convert --exp=<this experiment>).
  PRETRAINED: str | None = None
  EXPERTS = ()  # MoDE: expert j starts from expert 0 of EXPERTS[j]'s run

  # ---- Hooks of the pieces. ----

  def backbone_lm(self) -> pax_fiddle.Config:
    """The backbone family's praxis LM config (default: paxml's TransformerLm of this size)."""
    return super().task().model.lm_tpl

  def stored_backbone_lm(self) -> pax_fiddle.Config:
    """The backbone's LM config in the layout its checkpoint has (what `mode_pax.convert
    --exp=` writes): `backbone_lm()`, cut into NUM_BLOCKS blocks of scanned layers with
    SCAN_LAYERS."""
    lm_tpl = self.backbone_lm()
    if self.SCAN_LAYERS:
      lm_tpl = mode.blocked_backbone(lm_tpl, num_blocks=self.NUM_BLOCKS,
                                     checkpoint_policy=self.SCAN_CHECKPOINT_POLICY)
    return lm_tpl

  def set_softmax_computation(self, lm_tpl: pax_fiddle.Config) -> pax_fiddle.Config:
    """`lm_tpl` with EMBEDDING_LOOKUP_STYLE and SOFTMAX_CHUNK_SIZE set on its softmax (in
    place); a setting the softmax layer does not have is refused."""
    settings = {'EMBEDDING_LOOKUP_STYLE': ('lookup_style', self.EMBEDDING_LOOKUP_STYLE),
                'SOFTMAX_CHUNK_SIZE': ('chunk_size', self.SOFTMAX_CHUNK_SIZE)}
    softmax_cls = pax_fiddle.get_callable(lm_tpl.softmax_tpl)
    for setting, (field, value) in settings.items():
      if value is None:
        continue
      if not hasattr(softmax_cls, field):
        raise ValueError(
            f'{type(self).__name__}.{setting}={value!r}: the backbone\'s softmax '
            f'{softmax_cls.__name__} has no {field!r}; leave {setting} None for this backbone.')
      setattr(lm_tpl.softmax_tpl, field, value)
    return lm_tpl

  def adapt_lm(self, lm_tpl: pax_fiddle.Config) -> pax_fiddle.Config:
    """The method's change to the backbone's LM config (default: none)."""
    return lm_tpl

  def trainable_variables(self) -> Sequence[str]:
    """Regexes of the variables that train (bprop_variable_inclusion); () means all."""
    return ()

  def backbone_load_rules(self) -> tuple[list[tuple[str, str]], Sequence[str]]:
    """(load_rules, ignore_rules) filling this model from the BACKBONE run's checkpoint."""
    return [(r'(params/lm/.*)', '{}')], ()

  def expert_load_rules(self, index: int) -> list[tuple[str, str]]:
    """Load rules filling expert `index` from an EXPERTS run (only MoDE has experts)."""
    raise ValueError(f'{type(self).__name__} has no experts to warm-start: EXPERTS must be ().')

  # ---- The Pax experiment. ----

  def get_input_specs_provider_params(self):
    return pax_fiddle.Config(lm_batch.LmInputSpecs, batch_size=self.TRAIN_BATCH_SIZE,
                             seq_len=self.SEQUENCE_LENGTH)

  def data_dir(self) -> str:
    """The data build this experiment reads (its TOKENIZER's; no file system access)."""
    return data_tasks.resolve_data_dir(paths.data_dir(self.TOKENIZER))

  def datasets(self):
    train = inputs.seqio_input_params(
        self.TRAIN_DATA, 'train', batch_size=self.TRAIN_BATCH_SIZE,
        seq_len=self.SEQUENCE_LENGTH, is_training=True, name='train',
        input_random_seed=(None if self.TRAIN_DATA_SEED is None
                           else self.TRAIN_DATA_SEED + self.SEED),
        data_dir=self.data_dir())
    # Input checkpointing (see task()) saves the iterator explicitly, shuffle buffer included:
    # paxml's symbolic mode needs tf.data index shuffling, which calls tfds.Readahead, absent
    # from the pinned tensorflow-datasets.
    train.enable_symbolic_checkpointing = False
    evals = [inputs.seqio_input_params(
        name, paths.eval_split(), batch_size=self.EVAL_BATCH_SIZE, seq_len=self.SEQUENCE_LENGTH,
        is_training=False, name=name.removeprefix('mode_'), data_dir=self.data_dir())
             for name in self.EVAL_DATA]
    for p in evals:
      p.eval_loop_num_batches = self.EVAL_NUM_BATCHES
    return [train] + evals

  def task(self) -> pax_fiddle.Config:
    task_p = super().task()
    task_p.model.lm_tpl = self.adapt_lm(self.set_softmax_computation(self.stored_backbone_lm()))
    # (A valid schedule even for a run that trains no step: a converted backbone, MAX_STEPS=0.)
    model_params.set_default_adafactor(
        task_p, self.LEARNING_RATE, self.WEIGHT_DECAY, warmup_steps=self.WARMUP_STEPS,
        decay_start=self.WARMUP_STEPS + 1, decay_end=max(self.MAX_STEPS, self.WARMUP_STEPS + 2),
        clip_gradient_norm_to_value=self.CLIP_GRADIENT_NORM_TO_VALUE)
    task_p.train.num_train_steps = self.MAX_STEPS
    task_p.train.random_seed = self.RANDOM_SEED + self.SEED
    task_p.train.learner.bprop_variable_inclusion = list(self.trainable_variables())
    task_p.train.init_from_checkpoint_rules = self.warm_start_rules()
    # The training input's position is saved with every checkpoint, so a resumed run reads the
    # batches an uninterrupted one would (bit-identical results).
    task_p.train.enable_input_checkpointing = True
    task_p.train.variable_norm_summary = self.VARIABLE_NORM_SUMMARY
    task_p.train.learner.grad_norm_summary = self.LEARNER_NORM_SUMMARIES
    task_p.train.learner.var_norm_summary = self.LEARNER_NORM_SUMMARIES
    if self.CONDITIONAL_OPTIMIZER_UPDATE:
      learners.use_conditional_update(task_p)
    return task_p

  # ---- Upstream runs. ----

  def resolve_stage(self, stage) -> type:
    """The experiment class of an upstream stage given in BACKBONE or EXPERTS."""
    return stage

  def backbone_checkpoint_dir(self) -> str | None:
    """Folder with the backbone's checkpoint_XXXXXXXX folders (MODE_PAX_BACKBONE_CKPT wins)."""
    if paths.backbone_checkpoint_override():
      return paths.backbone_checkpoint_override()
    if self.BACKBONE is None:
      return None
    return paths.checkpoint_dir(paths.run_dir(
        registry.experiment_name(self.resolve_stage(self.BACKBONE))))

  def upstream_runs(self) -> list[tuple[type, str, list, Sequence[str]]]:
    """(experiment, checkpoint folder, load rules, ignore rules) of each run this one starts
    from: the backbone first, then expert j from EXPERTS[j]."""
    if self.BACKBONE is None:
      if self.EXPERTS:
        raise ValueError(f'{type(self).__name__}: EXPERTS need a BACKBONE.')
      return []
    load, ignore = self.backbone_load_rules()
    runs = [(self.resolve_stage(self.BACKBONE), self.backbone_checkpoint_dir(), load, ignore)]
    for j, stage in enumerate(self.EXPERTS):
      expert_cls = self.resolve_stage(stage)
      ckpt = paths.checkpoint_dir(paths.run_dir(registry.experiment_name(expert_cls)))
      if any(ckpt == r[1] for r in runs):
        raise ValueError(f'{type(self).__name__}: {expert_cls.__name__} is listed twice.')
      runs.append((expert_cls, ckpt, self.expert_load_rules(j), ()))
    return runs

  def warm_start_rules(self) -> dict[str, tasks_lib.CheckpointLoadingRules]:
    """init_from_checkpoint_rules: backbone from BACKBONE's run, expert j from EXPERTS[j]'s."""
    return {ckpt_dir: self.loading_rules(upstream(), load, ignore)
            for upstream, ckpt_dir, load, ignore in self.upstream_runs()}

  @staticmethod
  def loading_rules(source: 'LmExperiment', load: Sequence[tuple[str, str]],
                    ignore: Sequence[str] = ()) -> tasks_lib.CheckpointLoadingRules:
    """Pax's rules that load variables (model only, not the step or optimizer state) from a
    checkpoint written by `source`'s model; safe_load: a rule that matches nothing fails."""
    return tasks_lib.CheckpointLoadingRules(
        task_p=source.task(), load_rules=list(load), ignore_rules=list(ignore),
        input_specs_provider_p=source.get_input_specs_provider_params(), safe_load=True,
        load_step=False, load_opt_states=False)

  # ---- Run-time checks (paxml.main calls validate() before it runs anything). ----

  def validate(self) -> None:
    """Checks what a run needs from the file system, then claims the job_log_dir.

    Raises a clear error naming the fix: every missing upstream checkpoint, a data build whose
    vocabulary does not fit VOCAB_SIZE, a job_log_dir holding another experiment's run. The
    folder is claimed (EXPERIMENT_MARKER written) only once every check has passed.
    """
    job_log_dir = self._job_log_dir()
    resuming = bool(job_log_dir) and paths.latest_checkpoint_step(
        paths.checkpoint_dir(job_log_dir)) is not None
    if self.PRETRAINED and not resuming:
      # Its run is a conversion: paxml.main would save the random initialisation instead.
      raise ValueError(
          f'{type(self).__name__} is not trained: its run is {self.PRETRAINED} converted '
          f'(PRETRAINED); run {self._convert_command()} (or the pipeline, which does it).')
    self._check_job_log_dir(job_log_dir)
    if not resuming:  # Pax ignores the warm-start rules when it resumes
      self.check_upstream_runs()
    self._check_vocabulary()
    if job_log_dir:
      marker = epath.Path(job_log_dir) / EXPERIMENT_MARKER
      if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(registry.experiment_name(type(self)) + '\n')

  def check_upstream_runs(self) -> None:
    """FileNotFoundError naming every upstream run whose checkpoint is missing."""
    missing = [(i, upstream, ckpt) for i, (upstream, ckpt, _, _)
               in enumerate(self.upstream_runs()) if paths.latest_checkpoint_step(ckpt) is None]
    if not missing:
      return
    lines = []
    for i, upstream, ckpt in missing:
      name = registry.experiment_name(upstream)
      if i == 0 and not self.PRETRAIN_BACKBONE_HERE:  # the backbone: an existing PLM
        lines.append(
            f'  the backbone ({name}): no checkpoint in {ckpt}; set MODE_PAX_BACKBONE_CKPT to '
            'the folder of checkpoint_XXXXXXXX of a pre-trained praxis LM with its '
            'architecture, e.g. one converted for this run: python -m mode_pax.convert '
            f'--hf=HF_FOLDER --exp={registry.experiment_name(type(self))} --out=DIR '
            '(README: "Pre-trained backbones")')
      elif upstream.PRETRAINED:
        lines.append(f'  {name}: no checkpoint in {ckpt}; it is converted, not trained: '
                     f'{upstream()._convert_command(ckpt)}')  # pylint: disable=protected-access
      else:
        lines.append(f'  {name}: no checkpoint in {ckpt}; run it first: python -m paxml.main '
                     f'--exp={name} --job_log_dir={os.path.dirname(ckpt)}')
    raise FileNotFoundError(
        f'{type(self).__name__} starts from the checkpoints of {len(missing)} run(s) that are '
        'not there:\n' + '\n'.join(lines) + '\n(or point MODE_PAX_RUNS / MODE_PAX_BACKBONE_CKPT '
        'at where they ran).')

  def _convert_command(self, ckpt_dir: str | None = None) -> str:
    """The command that writes this PRETRAINED experiment's run (mode_pax.convert)."""
    from mode_pax import convert  # pylint: disable=g-import-not-at-top  (heavy; rarely needed)
    name = registry.experiment_name(type(self))
    ckpt_dir = ckpt_dir or paths.checkpoint_dir(paths.run_dir(name))
    return (f'python -m mode_pax.convert {convert.source_flag(type(self))} --exp={name} '
            f'--out={ckpt_dir}')

  def _check_vocabulary(self) -> None:
    data_dir = self.data_dir()
    vocab = data_tasks.build_info(data_dir)['vocab']
    if self.TOKENIZER:  # a pre-trained LM: token ids must mean what they meant in pre-training
      rebuild = (f'python -m mode_pax.data.build --tokenizer={self.TOKENIZER} (or the PLM\'s '
                 f'SentencePiece model: --spm_model=FILE) --data_dir={data_dir}')
      if 'given' not in vocab or vocab['size'] != self.VOCAB_SIZE:
        raise ValueError(
            f'{type(self).__name__} reads {data_dir}, built with '
            f"{vocab.get('given') or 'a vocabulary the build trained'} ({vocab['size']} "
            f'tokens), but its backbone needs its own tokenizer {self.TOKENIZER!r} '
            f'({self.VOCAB_SIZE} tokens); build it: {rebuild}')
      return
    if vocab['size'] > self.VOCAB_SIZE:
      raise ValueError(
          f'{type(self).__name__}.VOCAB_SIZE={self.VOCAB_SIZE} is smaller than the built '
          f"vocabulary ({vocab['size']} pieces in {data_dir}); rebuild the data with "
          f'--vocab_size={self.VOCAB_SIZE} or raise VOCAB_SIZE.')

  def _job_log_dir(self) -> str | None:
    """paxml.main's --job_log_dir, when this process is paxml.main."""
    if flags.FLAGS.is_parsed() and 'job_log_dir' in flags.FLAGS:
      return flags.FLAGS.job_log_dir or None
    return None

  def _check_job_log_dir(self, job_log_dir: str | None) -> None:
    """Refuses a job_log_dir that already holds a run of a different experiment."""
    if not job_log_dir:
      return
    marker = epath.Path(job_log_dir) / EXPERIMENT_MARKER
    name = registry.experiment_name(type(self))
    if marker.exists() and marker.read_text().strip() != name:
      raise ValueError(
          f'{job_log_dir} holds a run of {marker.read_text().strip()}, not {name}; Pax would '
          'resume from its checkpoints. Use another --job_log_dir or delete that one.')
