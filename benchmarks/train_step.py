r"""Train-step throughput: Pax's step vs. a hand-written JAX step; expert vs. full FT; the PLM.

  nice -n 19 .venv/bin/python benchmarks/train_step.py [--scale small] [--rounds 15] [--steps 1] \
      [--warmup 2] [--out results/train_step_<scale>.md]
  .venv/bin/python benchmarks/train_step.py --scale smollm2 --rounds 5   # SmolLM2-135M
  # A setting compared in one run: Experiment[ATTR=VALUE,...] overrides class attributes.
  .venv/bin/python benchmarks/train_step.py --out '' --configs \
      'pax:Backbone,pax:Backbone[EMBEDDING_LOOKUP_STYLE=None,SOFTMAX_CHUNK_SIZE=None]'

Measures, in ONE process and on one synthetic batch (exp.TRAIN_BATCH_SIZE x exp.SEQUENCE_LENGTH
random token ids, no padding; a step-time benchmark, the data pipeline has its own):

  pax:CodeExpert            Pax's `trainer_lib.train_step_single_learner` of `mode.small.CodeExpert`
                            (MoDE, one expert: frozen backbone, trainable experts and gates);
  jax:CodeExpert            a minimal hand-written jitted step of the same praxis model and
                            optimizer: `model.apply` -> the learner's loss (`total_loss`),
                            `jax.value_and_grad` w.r.t. the variables the learner's
                            bprop_variable_inclusion regexes select, clipping by global norm to the
                            optimizer's clip_gradient_norm_to_value, then the very gradient
                            transformation Pax's learner uses (`learner.get_grad_tx(...)`: praxis
                            ShardedAdafactor with its learning-rate schedule and weight decay) and
                            `params + update`. No summaries, no anomaly checks, no step masking;
  pax:FullFinetuneMathCode  Pax's step of `mode.small.FullFinetuneMathCode` (all variables train);
  fwd:Backbone              (--scale smollm2's default, with the two pax: steps) the forward pass
                            and loss of the backbone alone (evaluation mode, no gradient);
  matmul:MxKxN              (on request) one float32 [M, K] x [K, N] matmul, e.g. a model's own
                            shapes (small scale: 1024 tokens, width 128, FFN 512, vocabulary
                            8192), reported as a percentage of the matmul peak below.

Every run also times `matmul:2048` (a float32 [2048, 2048] x [2048, 2048] matmul, the machine's
practical matmul peak) in the same rounds, so FLOP/s are ratios to it taken under the same load.

Configurations are interleaved: `--rounds` rounds, each running `--steps` steps of every
configuration in turn (default: one step each, A B C A B C ...), so load changes on this shared
machine hit all of them alike. Every step
is timed on its own (dispatch to `jax.block_until_ready` of the whole new train state). The first
call (compile) and `--warmup` further steps per configuration are excluded. Reported: the median
step time over all measured steps, tokens/s = non-padding tokens per step / median step time,
and ratios: of the medians (the headline), the median and quartiles of the per-round ratios
(paired steps, adjacent in time: robust to slow load drift) and of the minimums (least disturbed).
Nothing is loaded from checkpoints (warm-start rules are dropped): step time does not depend on
the weights' values. The Pax and hand-written steps start from the same state and see the same
batch, so their losses after the same number of steps must agree: this is checked and reported.
"""

from __future__ import annotations

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import argparse  # pylint: disable=g-import-not-at-top,g-bad-import-order
import ast
import platform
import re
import shlex
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top
import jax
from jax import numpy as jnp
import numpy as np
import optax
from paxml import trainer_lib
from praxis import base_layer
from praxis import py_utils

from mode_pax import lm_batch
from mode_pax import param_count
from mode_pax import registry

DEFAULT_CONFIGS = {
    'small': ('pax:CodeExpert', 'jax:CodeExpert', 'pax:FullFinetuneMathCode'),
    # The PLM's forward pass, a MoDE expert step (frozen backbone) and full fine-tuning.
    'smollm2': ('fwd:Backbone', 'pax:CodeExpert', 'pax:FullFinetuneMathCode'),
}


def synthetic_batch(batch_size: int, seq_len: int, vocab_size: int) -> py_utils.NestedMap:
  """A packed-LM batch of random ids, one segment per row, no padding."""
  ids = np.random.RandomState(0).randint(1, vocab_size, (batch_size, seq_len)).astype(np.int32)
  return lm_batch.lm_batch(ids, np.roll(ids, -1, axis=1))


def experiment_class(spec: str, scale: str = 'small') -> type:
  """The registered experiment `mode.<scale>.Name` of a spec 'Name' or 'Name[ATTR=VALUE,...]',
  the latter a subclass with those class attributes overridden (VALUE: a Python literal, or a
  bare word read as a string), to compare a setting in one run."""
  match = re.fullmatch(r'(\w+)(?:\[(.*)\])?', spec)
  if not match:
    raise ValueError(f'{spec!r}: expected Experiment or Experiment[ATTR=VALUE,...].')
  cls = registry.lookup(f'mode.{scale}.{match.group(1)}')
  overrides = {}
  for item in filter(None, (match.group(2) or '').split(',')):
    attr, sep, value = (x.strip() for x in item.partition('='))
    if not sep or not hasattr(cls, attr):
      raise ValueError(f'{spec!r}: {item!r} is not ATTR=VALUE with ATTR a class attribute of '
                       f'{cls.__name__} (e.g. SOFTMAX_CHUNK_SIZE=None).')
    try:
      overrides[attr] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[attr] = value
  # In the experiment's module: recipes resolve upstream stages (BACKBONE) by name there.
  return (type(cls.__name__, (cls,), dict(overrides, __module__=cls.__module__))
          if overrides else cls)


def matmul_shape(cfg: str) -> tuple[int, int, int]:
  """'matmul:1024x128x8192' -> (1024, 128, 8192): [M, K] x [K, N]."""
  m = re.fullmatch(r'matmul:(\d+)x(\d+)x(\d+)', cfg)
  if not m:
    raise ValueError(f'--configs: {cfg!r}: give a matmul as matmul:MxKxN (positive integers), '
                     'e.g. matmul:1024x128x8192.')
  shape = tuple(int(d) for d in m.groups())
  if min(shape) < 1:
    raise ValueError(f'--configs: {cfg!r}: every dimension must be at least 1.')
  return shape


def split_configs(configs: str) -> list[str]:
  """'pax:A,jax:B[X=1,Y=2]' -> ['pax:A', 'jax:B[X=1,Y=2]'] (commas inside [...] kept)."""
  return [c.strip() for c in re.findall(r'(?:[^,\[]|\[[^\]]*\])+', configs) if c.strip()]


def build_task(name: str, scale: str = 'small'):
  """(instantiated Pax task, experiment) of an experiment spec (`experiment_class`), with no
  warm start."""
  exp = experiment_class(name, scale)()
  task_p = exp.task()
  task_p.train.init_from_checkpoint_rules = {}
  return base_layer.instantiate(task_p), exp


def count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


class PaxStep:
  """Pax's own train step (what `paxml.main` runs, minus the mesh: one CPU device)."""

  def __init__(self, task, state, batch):
    self.state = jax.tree_util.tree_map(jnp.copy, state)  # its own: the step donates it
    # The state donated, as paxml's partitioners do (`donate_argnums`).
    self._fn = jax.jit(lambda s, k, b: trainer_lib.train_step_single_learner(task, s, k, b),
                       donate_argnums=0)
    self._key = jax.random.PRNGKey(1234)
    self._batch = batch
    with base_layer.JaxContext.new_context(hparams=base_layer.JaxContext.HParams(do_eval=False)):
      wps = task.model.abstract_init_with_metadata(batch)
    excluded = trainer_lib.get_excluded_var_masks(wps, task.learners[0])[0]
    self.trainable = _trainable_count(wps, excluded)

  def __call__(self):
    self.state, out = self._fn(self.state, self._key, self._batch)
    jax.block_until_ready((self.state, out.loss))
    return out.loss


def _trainable_count(wps, excluded) -> int:
  leaves = zip(jax.tree_util.tree_leaves(wps, is_leaf=_is_wp),
               jax.tree_util.tree_leaves(excluded))
  return int(sum(np.prod(w.full_shape) for w, e in leaves if not e))


def _is_wp(x) -> bool:
  return isinstance(x, base_layer.WeightHParams)


class ForwardStep:
  """The model's forward pass and loss alone (evaluation mode, no gradient): the PLM's speed."""

  def __init__(self, task, state, batch):
    model = task.model
    context_p = base_layer.JaxContext.HParams(do_eval=True)

    def forward(mdl_vars, inputs):
      with base_layer.JaxContext.new_context(hparams=context_p):
        metrics, _ = model.apply(mdl_vars, inputs, rngs={'random': jax.random.PRNGKey(0)})
      return metrics[task.learners[0].loss_name][0]

    self._fn = jax.jit(forward)
    self._vars, self._batch = state.mdl_vars, batch
    self.trainable = 0

  def __call__(self):
    loss = self._fn(self._vars, self._batch)
    jax.block_until_ready(loss)
    return loss


class Matmul:
  """One float32 [m, k] x [k, n] matmul (jitted), timed in the same rounds as the steps, so
  FLOP/s ratios see the same load. [2048, 2048] x [2048, 2048]: the machine's practical matmul
  peak."""

  def __init__(self, m: int = 2048, k: int = 2048, n: int = 2048):
    keys = jax.random.split(jax.random.PRNGKey(0))
    self._a = jax.random.normal(keys[0], (m, k), jnp.float32)
    self._b = jax.random.normal(keys[1], (k, n), jnp.float32)
    self._fn = jax.jit(jnp.dot)
    self.flops = 2.0 * m * k * n
    self.trainable = 0

  def __call__(self):
    out = self._fn(self._a, self._b)
    jax.block_until_ready(out)
    return out[0, 0]


def model_flops_per_token(exp) -> float | None:
  """Training FLOPs per token of a step that trains every variable (Kaplan et al. 2020, Table 1:
  forward 2 N + 2 L T d_attn with N the parameters (mode_pax.param_count; a tied embedding
  counts once, as the softmax matmul), training 3x forward); None for the other steps (a frozen
  backbone skips its weight gradients)."""
  if type(exp).METHOD_NAME not in ('Pre-training', 'Full FT'):
    return None
  n = param_count.count_experiment(type(exp)).total
  d_attn = exp.NUM_HEADS * exp.DIMS_PER_HEAD
  return 3.0 * (2 * n + 2 * exp.NUM_LAYERS * exp.SEQUENCE_LENGTH * d_attn)


class HandWrittenStep:
  """value_and_grad of the praxis model's loss w.r.t. the trainable variables + the learner's tx."""

  def __init__(self, task, state, batch):
    model = task.model
    learner = task.learners[0]
    context_p = base_layer.JaxContext.HParams(do_eval=False)
    with base_layer.JaxContext.new_context(hparams=context_p):
      wps = model.abstract_init_with_metadata(batch)
    mdl_vars = state.mdl_vars
    # The learner's bprop_variable_inclusion regexes (and non-trainable collections) -> frozen.
    excluded = trainer_lib.get_excluded_var_masks(wps, learner)[0]
    masked = lambda tree: jax.tree_util.tree_map(
        lambda x, e: py_utils.BpropMaskedNode() if e else x, tree, excluded,
        is_leaf=_is_wp)
    keep = lambda tree: jax.tree_util.tree_map(
        lambda x, e: x if e else py_utils.BpropMaskedNode(), tree, excluded, is_leaf=_is_wp)
    train_vars, frozen_vars = masked(mdl_vars), keep(mdl_vars)
    train_wps = masked(wps)
    self.trainable = count(train_vars)
    tx = learner.get_grad_tx(train_wps)  # what learner.update_states applies
    clip = float(learner.optimizer.clip_gradient_norm_to_value or 0.0)
    loss_name = learner.loss_name

    def merge(train, frozen):
      return jax.tree_util.tree_map(
          lambda e, f, t: f if e else t, excluded, frozen, train)

    def loss_fn(train, frozen, inputs, key):
      with base_layer.JaxContext.new_context(hparams=context_p):
        metrics, _ = model.apply(merge(train, frozen), inputs, rngs={'random': key})
      return metrics[loss_name][0]

    def step(train, opt_state, frozen, inputs, key):
      loss, grads = jax.value_and_grad(loss_fn)(train, frozen, inputs, key)
      if clip:
        grads = optax.clip_by_global_norm(clip).update(grads, optax.EmptyState())[0]
      updates, opt_state = tx.update(grads, opt_state, train)
      return optax.apply_updates(train, updates), opt_state, loss

    self._fn = jax.jit(step, donate_argnums=(0, 1))  # like PaxStep: the updated state donated
    # Its own copy of the trainable variables (the step donates them), not the shared state's.
    self._train = jax.tree_util.tree_map(jnp.copy, train_vars)
    self._frozen = frozen_vars
    self._opt_state = tx.init(self._train)
    self._batch = batch
    self._key = jax.random.PRNGKey(1234)

  def __call__(self):
    self._train, self._opt_state, loss = self._fn(
        self._train, self._opt_state, self._frozen, self._batch, self._key)
    jax.block_until_ready((self._train, self._opt_state, loss))
    return loss


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=15, help='Interleaved rounds.')
  parser.add_argument('--steps', type=int, default=1,
                      help='Timed steps of each configuration per round.')
  parser.add_argument('--warmup', type=int, default=2,
                      help='Untimed steps per configuration after the compiling first call.')
  parser.add_argument('--scale', default='small', choices=sorted(DEFAULT_CONFIGS),
                      help='Experiments of mode.<scale>.')
  parser.add_argument('--configs', default=None,
                      help='Comma-separated {pax,jax,fwd}:Experiment (mode.<scale>.Experiment) '
                      'or matmul:MxKxN; Experiment[ATTR=VALUE,...] overrides class attributes, '
                      'e.g. "pax:Backbone,pax:Backbone[SOFTMAX_CHUNK_SIZE=None]"; '
                      'default: the scale\'s (DEFAULT_CONFIGS).')
  parser.add_argument('--out', default=None,
                      help="Markdown report ('' to only print); default "
                      'results/train_step_<scale>.md.')
  parser.add_argument('--machine_note', default='2 CPU cores, shared with a running training '
                      'pipeline; run under nice -n 19', help='Written into the report.')
  parser.add_argument('--compile_cache', default='',
                      help='JAX persistent compilation cache folder (off by default: then '
                      '"first call" is tracing + compiling); speeds up re-runs only.')
  args = parser.parse_args(argv)
  if args.compile_cache:
    jax.config.update('jax_compilation_cache_dir', args.compile_cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  flags.FLAGS.mark_as_parsed()  # paxml library calls read absl flags

  configs = args.configs if args.configs is not None else ','.join(DEFAULT_CONFIGS[args.scale])
  names = split_configs(configs)
  for cfg in names:  # bad names fail here, before any compiling
    kind, _, exp_name = cfg.partition(':')
    if kind == 'matmul':
      matmul_shape(cfg)
      continue
    if kind not in ('pax', 'jax', 'fwd'):
      raise ValueError(f'--configs: {cfg!r} is not pax:, jax: or fwd:<Experiment> or '
                       'matmul:MxKxN.')
    experiment_class(exp_name, args.scale)
  if args.out is None:
    args.out = f'results/train_step_{args.scale}.md'
  tasks, states, steppers, compile_s, tokens, first_loss = {}, {}, {}, {}, {}, {}
  start = time.perf_counter()
  for cfg in names:
    kind, exp_name = cfg.split(':', 1)
    if kind == 'matmul':
      steppers[cfg] = Matmul(*matmul_shape(cfg))
      t0 = time.perf_counter()
      steppers[cfg]()
      compile_s[cfg] = time.perf_counter() - t0
      continue
    if exp_name not in tasks:
      task, exp = build_task(exp_name, args.scale)
      batch = synthetic_batch(exp.TRAIN_BATCH_SIZE, exp.SEQUENCE_LENGTH, exp.VOCAB_SIZE)
      t0 = time.perf_counter()
      state, _ = trainer_lib.initialize_model_state(task, jax.random.PRNGKey(0), batch)
      jax.block_until_ready(state)
      print(f'{exp_name}: initialised in {time.perf_counter() - t0:.1f} s', flush=True)
      tasks[exp_name], states[exp_name] = (task, batch, exp), state
    task, batch, _ = tasks[exp_name]
    steppers[cfg] = {'pax': PaxStep, 'jax': HandWrittenStep, 'fwd': ForwardStep}[kind](
        task, states[exp_name], batch)
    tokens[cfg] = float(jnp.sum(batch.weights))
    t0 = time.perf_counter()
    first_loss[cfg] = float(steppers[cfg]())
    compile_s[cfg] = time.perf_counter() - t0
    for _ in range(args.warmup):
      steppers[cfg]()
    print(f'{cfg}: first call (compile + step) {compile_s[cfg]:.1f} s, '
          f'{steppers[cfg].trainable:,} trainable variables', flush=True)

  # The matmul peak runs in the same rounds as the steps (same load): FLOP/s ratios in one run.
  peak_name = 'matmul:2048'
  steppers[peak_name] = Matmul()
  steppers[peak_name]()
  names.append(peak_name)
  flops_per_token = {c: model_flops_per_token(tasks[c.split(':', 1)[1]][2]) for c in names
                     if c.startswith('pax:')}
  times = {cfg: [] for cfg in names}
  round_medians = {cfg: [] for cfg in names}
  losses = {}
  for r in range(args.rounds):
    for cfg in names:
      these = []
      for _ in range(args.steps):
        t0 = time.perf_counter()
        losses[cfg] = steppers[cfg]()
        these.append(time.perf_counter() - t0)
      times[cfg] += these
      round_medians[cfg].append(statistics.median(these))
    print(f'round {r + 1}/{args.rounds}: ' + ', '.join(
        f'{c} {1e3 * round_medians[c][-1]:.0f} ms' for c in names), flush=True)

  med = {c: statistics.median(times[c]) for c in names}
  peak = steppers[peak_name].flops / med[peak_name]
  rows = ['| configuration | trainable variables | median step (ms) | min-max (ms) | tokens/s | '
          'first call (s) | model GFLOP/s (% of matmul peak) |',
          '|---|---:|---:|---:|---:|---:|---:|']
  for c in names:
    if c == peak_name:
      rows.append(f'| {c} (float32 [2048, 2048] x [2048, 2048]) | | {1e3 * med[c]:.1f} | '
                  f'{1e3 * min(times[c]):.0f}-{1e3 * max(times[c]):.0f} | | | '
                  f'{peak / 1e9:.1f} (the peak) |')
      continue
    if c.startswith('matmul:'):
      m, k, n = matmul_shape(c)
      rate = steppers[c].flops / med[c]
      rows.append(f'| {c} (float32 [{m}, {k}] x [{k}, {n}]) | | {1e3 * med[c]:.2f} | '
                  f'{1e3 * min(times[c]):.1f}-{1e3 * max(times[c]):.1f} | | | '
                  f'{rate / 1e9:.1f} ({100 * rate / peak:.0f}%) |')
      continue
    per_token = flops_per_token.get(c)
    rate = ('' if per_token is None else
            f'{per_token * tokens[c] / med[c] / 1e9:.1f} '
            f'({100 * per_token * tokens[c] / med[c] / peak:.0f}%)')
    rows.append(f'| {c} | {steppers[c].trainable:,} | {1e3 * med[c]:.1f} | '
                f'{1e3 * min(times[c]):.0f}-{1e3 * max(times[c]):.0f} | '
                f'{tokens[c] / med[c]:,.0f} | {compile_s[c]:.0f} | {rate} |')

  def ratio(a, b, label):
    if a in med and b in med:
      per_round = [x / y for x, y in zip(round_medians[a], round_medians[b])]
      q = np.percentile(per_round, [25, 75])
      rows.append(f'| {label} | **{med[a] / med[b]:.2f}** | {statistics.median(per_round):.2f} '
                  f'| {q[0]:.2f}-{q[1]:.2f} | {min(times[a]) / min(times[b]):.2f} |')

  rows += ['', '| ratio | of medians | median of per-round ratios | per-round ratios p25-p75 | '
           'of minimums |', '|---|---:|---:|---:|---:|']
  ratio('pax:CodeExpert', 'jax:CodeExpert', 'Pax step / hand-written step (CodeExpert)')
  ratio('pax:CodeExpert', 'pax:FullFinetuneMathCode',
        'expert training (CodeExpert) / full FT (FullFinetuneMathCode), Pax')
  ratio('jax:CodeExpert', 'pax:FullFinetuneMathCode',
        'hand-written CodeExpert / Pax full FT')
  ratio('pax:CodeExpert', 'fwd:Backbone', 'expert training step / forward pass of the PLM')

  checks = []
  for exp_name in tasks:
    a, b = f'pax:{exp_name}', f'jax:{exp_name}'
    if a in losses and b in losses:
      la, lb = float(losses[a]), float(losses[b])
      checks.append(
          f'Same-computation check ({exp_name}, same initial state and batch): loss at step 1 '
          f'Pax {first_loss[a]:.6f} / hand-written {first_loss[b]:.6f}; at step '
          f'{args.warmup + 1 + args.rounds * args.steps} Pax {la:.6f} / hand-written {lb:.6f} '
          f'(|diff| {abs(la - lb):.2e}).')

  n = args.rounds * args.steps
  command = 'nice -n 19 .venv/bin/python benchmarks/train_step.py ' + ' '.join(
      shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
  batch_desc = ', '.join(sorted({f'{int(tokens[c])} tokens/step' for c in names if c in tokens}))
  report = '\n'.join([
      f'# Train step time at {args.scale} scale (`mode.{args.scale}`)', '',
      f'Command: `{command.strip()}`', '',
      f'Machine: {args.machine_note}; {platform.machine()}, {os.cpu_count()} logical CPUs, '
      f'jax {jax.__version__} ({jax.default_backend()}).', '',
      f'Synthetic batch ({batch_desc}, no padding). Medians over {n} timed steps per '
      f'configuration ({args.rounds} interleaved rounds x {args.steps} steps), after the '
      f'compiling first call and {args.warmup} warm-up step(s), each step timed to '
      '`block_until_ready` of the new state. tokens/s = non-padding tokens per step / median '
      'step time. "first call" = compile + one step. Model FLOP/s: training FLOPs per token '
      '(6 N + 6 L T d_attn, Kaplan et al. 2020; only for steps that train every variable) x '
      'tokens / median step time, against the median float32 matmul rate measured in the same '
      'rounds; a matmul:MxKxN row: its 2 M K N FLOPs / its median time.', '',
      *rows, '', *checks, '',
      f'Whole run: {time.perf_counter() - start:.0f} s (mostly tracing and compiling).', ''])
  print('\n' + report)
  if args.out:
    os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
    with open(args.out, 'w') as f:
      f.write(report)
    print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
