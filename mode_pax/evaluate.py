"""Next-token accuracy of a trained run: on its test splits per example, or on any text file.

  python -m mode_pax.evaluate --exp=mode.small.ComposeMathCode --text_file=my_notes.txt
  python -m mode_pax.evaluate --exp=mode.small.ComposeMathCode --split=test   # Table 1's pass

The run's newest checkpoint (in its job_log_dir, see mode_pax.paths, or --job_log_dir) is
restored into the experiment's own Pax model, whose predictions are scored as its own metric
`fraction_of_correct_next_step_preds` scores them (argmax == label on every non-padding token).

`--split` scores the experiment's evaluation examples (`eval_examples`: each EVAL_DATA task's
split, the whole split or a fixed pseudo-random sample of its examples holding at least
EVAL_TOKEN_FRACTION of its tokens) and writes, per example, the tokens scored and how many were
right, and per MoDE block the gate's summed weights on each branch (`TaskScores`): the input of
intervals (`mode_pax.bootstrap`) and routing diagnostics (`mode_pax.results`). Pax's own
`--mode=eval` aggregates over the split and keeps no per-example numbers, hence this pass; on
the same rows both give the same accuracy (tests/test_experiments.py).

`--text_file` averages over every token of the file (tokenized with the data build's
vocabulary, cut into rows of the experiment's sequence length).

Bad input stops with one message naming it and the fix, before the work it would waste: the text
file (missing, unreadable, not UTF-8, empty) before the imports of JAX and Pax; an unknown
--exp, a run without a checkpoint, and a checkpoint whose variables are not the experiment's
model (another experiment's run, another architecture) before any variable is read.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from absl import app
from absl import flags
import numpy as np

# JAX, Praxis, Pax and the data pipeline are imported inside the functions that use them (about
# 20 s of imports): `main` checks the text file first, so a bad one is reported at once.

# Variables named in a mismatch message, per kind (missing, unexpected, other shape).
_SHOWN = 3


class EvaluateError(ValueError):
  """Bad input to the evaluation: the message names what is wrong and how to fix it."""


def read_text_file(path: str) -> str:
  """The text of a UTF-8 file (CRLF -> LF); EvaluateError naming the file and the fix."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except FileNotFoundError:
    raise EvaluateError(f'--text_file={path}: no such file (looked for {os.path.abspath(path)}); '
                        'give the path of a UTF-8 text file.') from None
  except IsADirectoryError:
    raise EvaluateError(f'--text_file={path} is a folder; give one UTF-8 text file in it.'
                        ) from None
  except OSError as e:
    raise EvaluateError(f'--text_file={path} cannot be read ({e.strerror}); check its '
                        f'permissions (e.g. chmod u+r {path}) or give another file.') from None
  try:
    text = data.decode('utf-8').replace('\r\n', '\n')
  except UnicodeDecodeError as e:
    raise EvaluateError(f'--text_file={path} is not UTF-8 text ({e.reason} at byte {e.start}); '
                        f'convert it, e.g. iconv -f ITS_ENCODING -t UTF-8 {path} > '
                        f'{path}.utf8, and give that file.') from None
  if not text:
    raise EvaluateError(f'--text_file={path} is empty: nothing to evaluate; give a file with '
                        'text in it.')
  return text


def token_rows(token_ids: list[int], seq_len: int, eos_id: int = 1):
  """Cuts a token stream (EOS appended) into Pax LM rows: ids = BOS(0) + shifted labels."""
  stream = list(token_ids) + [eos_id]
  chunks = [stream[start:start + seq_len] for start in range(0, len(stream), seq_len)]
  ids, labels, weights, _ = example_rows([chunks], seq_len)
  return ids, labels, weights


def _lookup(experiment_name: str) -> type:
  from mode_pax import registry  # pylint: disable=g-import-not-at-top
  try:
    return registry.lookup(experiment_name)
  except ValueError as e:  # the registry's message names the experiment and the fix
    raise EvaluateError(str(e)) from None


def _trained_by(job_log_dir: str) -> tuple[str | None, str]:
  """(the --exp a run was trained with, or None; the marker paxml.main leaves in its folder)."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from mode_pax import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
  marker = epath.Path(job_log_dir) / experiment_lib.EXPERIMENT_MARKER
  name = marker.read_text().strip() if marker.exists() else ''
  return name or None, os.fspath(marker)


def _train_command(name: str, job_log_dir: str) -> str:
  """How to train the run of `name` into `job_log_dir` (and `make main` where it trains it)."""
  command = f'python -m paxml.main --exp={name} --job_log_dir={job_log_dir}'
  module, _, stage = name.rpartition('.')
  if module == 'mode.small':
    from mode import recipes  # pylint: disable=g-import-not-at-top
    from mode_pax import pipeline  # pylint: disable=g-import-not-at-top
    table1 = [recipe.__name__ for recipe in recipes.TABLE1]
    if ('train', stage) in pipeline.schedule(module, table1)[0]:
      command += ' (or `make main`, which trains every Table 1 run)'
  return command


def newest_checkpoint(name: str, job_log_dir: str) -> tuple[str, int]:
  """(checkpoint folder, newest step) of a run; EvaluateError saying how to train it."""
  from mode_pax import paths  # pylint: disable=g-import-not-at-top
  ckpt_dir = paths.checkpoint_dir(job_log_dir)
  step = paths.latest_checkpoint_step(ckpt_dir)
  if step is None:
    where = ('no such folder' if not os.path.exists(job_log_dir) else
             'no checkpoint_XXXXXXXX folder there')
    raise EvaluateError(
        f'No checkpoint of {name}: looked in {ckpt_dir} ({where}). Train the run first: '
        f'{_train_command(name, job_log_dir)}; or give the folder it ran in with --job_log_dir '
        '(or MODE_PAX_RUNS, the folder of the runs).')
  return ckpt_dir, step


def model_shapes(model) -> dict[str, tuple[int, ...]]:
  """Variable path -> shape of a Pax model (abstract init: nothing is allocated)."""
  from mode_pax import lm_batch  # pylint: disable=g-import-not-at-top
  from mode_pax import trees  # pylint: disable=g-import-not-at-top
  hparams = model.abstract_init_with_metadata(lm_batch.lm_batch_specs(1, 8))
  return {path: tuple(hp.full_shape) for path, hp in trees.flatten(hparams).items()}


def _some(paths_: list[str]) -> str:
  more = f', ... ({len(paths_) - _SHOWN} more)' if len(paths_) > _SHOWN else ''
  return ', '.join(paths_[:_SHOWN]) + more


def check_checkpoint_matches(name: str, job_log_dir: str, step_dir: str,
                             expected: dict[str, tuple[int, ...]]) -> None:
  """EvaluateError unless the checkpoint holds exactly the model's variables, in its shapes.

  Restoring another experiment's run (a LoRA experiment on a MoDE run, another architecture)
  would otherwise fail deep inside flax (ScopeParamNotFoundError) or score the wrong weights.
  """
  from mode_pax import checkpoints  # pylint: disable=g-import-not-at-top
  found = checkpoints.read_shapes(step_dir)
  missing = sorted(set(expected) - set(found))
  unexpected = sorted(set(found) - set(expected))
  reshaped = sorted(p for p in set(expected) & set(found) if expected[p] != found[p])
  if not (missing or unexpected or reshaped):
    return
  problems = []
  if missing:
    problems.append(f'{len(missing)} variable(s) of the model are not in it ({_some(missing)})')
  if unexpected:
    problems.append(f'{len(unexpected)} of its variables are not in the model '
                    f'({_some(unexpected)})')
  if reshaped:
    shown = [f'{p}: model {expected[p]}, checkpoint {found[p]}' for p in reshaped]
    problems.append(f'{len(reshaped)} differ in shape ({_some(shown)})')
  trained_by, marker = _trained_by(job_log_dir)
  if trained_by and trained_by != name:
    fix = (f'This run was trained with --exp={trained_by} (says {marker}): '
           f'evaluate it with --exp={trained_by}, or give --job_log_dir of a run of {name}.')
  elif trained_by:
    fix = (f'This run was trained with --exp={name}, whose model has changed since: train it '
           f'again into a new folder (python -m paxml.main --exp={name} --job_log_dir=NEW_DIR) '
           'and give --job_log_dir=NEW_DIR.')
  else:
    fix = f'Give the --exp the run was trained with, or --job_log_dir of a run of {name}.'
  raise EvaluateError(
      f'--exp={name} does not fit the checkpoint {step_dir}: ' + '; '.join(problems) + '. '
      + fix)


def restore_run(experiment_name: str, job_log_dir: str | None = None):
  """(experiment, model, variables, step) of a run's newest checkpoint, in the experiment's model.

  Raises:
    EvaluateError: an unknown experiment, a run without a checkpoint, or a checkpoint that is not
      this experiment's model.
  """
  # pylint: disable=g-import-not-at-top
  from praxis import base_layer
  from mode_pax import checkpoints
  from mode_pax import paths
  from mode_pax import registry
  from mode_pax import trees
  # pylint: enable=g-import-not-at-top
  experiment_cls = _lookup(experiment_name)
  name = registry.experiment_name(experiment_cls)
  experiment = experiment_cls()
  job_log_dir = job_log_dir or paths.run_dir(name)
  ckpt_dir, step = newest_checkpoint(name, job_log_dir)
  model = base_layer.instantiate(experiment.task().model)
  check_checkpoint_matches(name, job_log_dir, os.fspath(checkpoints.step_dir(ckpt_dir, step)),
                           model_shapes(model))
  variables = trees.unflatten(checkpoints.read_variables(ckpt_dir, step))
  return experiment, model, variables, step


def evaluate_text(experiment_name: str, text: str, job_log_dir: str | None = None,
                  batch_size: int = 16) -> tuple[float, int]:
  """(next-token accuracy, number of tokens) of a run's newest checkpoint on `text`.

  Raises:
    EvaluateError: an unknown experiment, a run without a checkpoint, a checkpoint that is not
      this experiment's model, or an empty text.
  """
  from mode_pax.data import tasks  # pylint: disable=g-import-not-at-top
  experiment, model, variables, _ = restore_run(experiment_name, job_log_dir)
  token_ids = tasks.vocabulary(experiment.data_dir()).encode(text)  # its TOKENIZER's build
  if not token_ids:
    raise EvaluateError('The text is empty: nothing to evaluate.')
  ids, labels, weights = token_rows(token_ids, experiment.SEQUENCE_LENGTH)
  scores = score_rows(model, variables, ids, labels, weights, batch_size)
  total = float(weights.sum())
  return float(scores.correct.sum()) / total, int(total)


# ------------------------------------------------------------------------------------------------
# The evaluation examples of an experiment, scored one by one.


def task_rows(task_name: str, split: str, seq_len: int, data_dir: str) -> list[np.ndarray]:
  """Target rows of a MoDE seqio task's split as the Pax inputs read them, in file order
  (unshuffled, unpacked, examples cut to seq_len with EOS: `mode_pax.data.tasks`), unpadded."""
  import seqio  # pylint: disable=g-import-not-at-top
  from mode_pax.data import tasks  # pylint: disable=g-import-not-at-top
  tasks.register_tasks(data_dir)
  ds = seqio.get_mixture_or_task(task_name).get_dataset(
      sequence_length={'targets': seq_len}, split=split, shuffle=False, num_epochs=1,
      use_cached=False)
  return [np.asarray(ex['targets'], np.int64) for ex in ds.as_numpy_iterator()]


def split_examples(task_name: str, split: str, seq_len: int, data_dir: str
                   ) -> list[list[np.ndarray]]:
  """The examples of a MoDE seqio task's split, in file order, each as its `task_rows`."""
  import seqio  # pylint: disable=g-import-not-at-top
  rows = task_rows(task_name, split, seq_len, data_dir)
  # How many rows each example became: split_to_length's count, ceil(tokens / (seq_len - 1)),
  # at least 1, from the uncut examples (EOS appended) of the same task.
  uncut = seqio.get_mixture_or_task(task_name).get_dataset(
      sequence_length=None, split=split, shuffle=False, num_epochs=1, use_cached=False)
  counts = [max(1, math.ceil((len(ex['targets']) - 1) / (seq_len - 1)))
            for ex in uncut.as_numpy_iterator()]
  if sum(counts) != len(rows):
    raise RuntimeError(f'{task_name}/{split}: {len(rows)} rows but the examples make '
                       f'{sum(counts)}: the task no longer cuts examples as split_to_length.')
  bounds = np.cumsum([0] + counts)
  return [rows[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def sample_examples(num_tokens: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Indices (sorted) of the examples scored: all of them for fraction >= 1, otherwise examples
  in a fixed pseudo-random order (seed) until they hold at least `fraction` of the tokens."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'EVAL_TOKEN_FRACTION={fraction}: give a fraction of each split\'s '
                     'tokens in (0, 1] (1 = the whole split).')
  if fraction >= 1.0:
    return np.arange(len(num_tokens))
  order = np.random.default_rng(seed).permutation(len(num_tokens))
  enough = np.searchsorted(np.cumsum(num_tokens[order]), fraction * num_tokens.sum()) + 1
  return np.sort(order[:enough])


def eval_examples(experiment, task_name: str, split: str) -> tuple[np.ndarray,
                                                                   list[list[np.ndarray]]]:
  """(indices in the split, rows) of the examples `experiment` is evaluated on for a task."""
  examples = split_examples(task_name, split, experiment.SEQUENCE_LENGTH, experiment.data_dir())
  num_tokens = np.array([sum(len(r) for r in ex) for ex in examples])
  chosen = sample_examples(num_tokens, experiment.EVAL_TOKEN_FRACTION,
                           experiment.EVAL_SAMPLE_SEED)
  return chosen, [examples[i] for i in chosen]


def example_rows(examples: list[list[np.ndarray]], seq_len: int):
  """(ids, labels, weights, example index of each row) of Pax LM rows (BOS = 0, shifted
  labels, zero padding) holding `examples`' target rows."""
  flat = [(i, row) for i, ex in enumerate(examples) for row in ex]
  labels = np.zeros((len(flat), seq_len), np.int32)
  weights = np.zeros((len(flat), seq_len), np.float32)
  for r, (_, row) in enumerate(flat):
    labels[r, :len(row)] = row
    weights[r, :len(row)] = 1.0
  ids = np.concatenate([np.zeros((len(flat), 1), np.int32), labels[:, :-1]], axis=1)
  return ids, labels, weights, np.array([i for i, _ in flat], np.int64)


@dataclasses.dataclass
class RowScores:
  """Per row: tokens predicted right; per gate (block index -> [branches]): summed weights."""
  correct: np.ndarray
  gate_sums: dict[int, np.ndarray]


def _is_gate_call(module, method_name: str) -> bool:
  from mode_pax.layers import mode  # pylint: disable=g-import-not-at-top
  return isinstance(module, mode.MoDEGate) and method_name == '__call__'


def score_rows(model, variables, ids, labels, weights, batch_size: int) -> RowScores:
  """Scores Pax LM rows with `model` in evaluation mode, `batch_size` rows per pass (the last
  pass padded with empty rows: one compiled shape)."""
  # pylint: disable=g-import-not-at-top
  import jax
  from jax import numpy as jnp
  from praxis import base_layer
  from mode_pax import lm_batch
  from mode_pax import trees
  # pylint: enable=g-import-not-at-top

  @jax.jit
  def score(ids, labels, weights):
    batch = lm_batch.lm_batch(ids, labels, paddings=1.0 - weights)
    context = base_layer.JaxContext.HParams(do_eval=True)
    with base_layer.JaxContext.new_context(hparams=context):
      predictions, state = model.apply(
          variables, batch, method=model.compute_predictions,
          rngs={base_layer.RANDOM: jax.random.PRNGKey(0)},
          capture_intermediates=_is_gate_call, mutable=[base_layer.INTERMEDIATES])
    right = (predictions.per_example_argmax.astype(jnp.int32) == batch.labels) * weights
    gates = {path: jnp.sum(out[0] * weights[..., None], axis=(0, 1))
             for path, out in trees.flatten(state.get(base_layer.INTERMEDIATES, {})).items()}
    return jnp.sum(right, axis=-1), gates

  num = len(ids)
  pad = (-num) % batch_size
  if pad:
    ids, labels, weights = (np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)])
                            for a in (ids, labels, weights))
  correct, gate_sums = [], {}
  for start in range(0, len(ids), batch_size):
    sl = slice(start, start + batch_size)
    right, gates = jax.device_get(score(ids[sl], labels[sl], weights[sl]))
    correct.append(right)
    for path, sums in gates.items():
      block = int(re.search(r'blocks_(\d+)/gate', path).group(1))
      gate_sums[block] = gate_sums.get(block, 0.0) + np.asarray(sums, np.float64)
  return RowScores(np.concatenate(correct)[:num].astype(np.int64), gate_sums)


@dataclasses.dataclass
class TaskScores:
  """A run's scores on one evaluation task, per example (indices into the task's split)."""
  example_index: np.ndarray
  tokens: np.ndarray
  correct: np.ndarray
  gate_sums: np.ndarray | None  # [blocks, 1 + experts]: gate weights summed over its tokens

  @property
  def accuracy(self) -> float:
    return float(self.correct.sum() / self.tokens.sum())


def score_examples(model, variables, examples, seq_len: int, batch_size: int,
                   example_index: np.ndarray) -> TaskScores:
  ids, labels, weights, owner = example_rows(examples, seq_len)
  scores = score_rows(model, variables, ids, labels, weights, batch_size)
  tokens = np.bincount(owner, weights=weights.sum(-1), minlength=len(examples)).astype(np.int64)
  correct = np.bincount(owner, weights=scores.correct, minlength=len(examples)).astype(np.int64)
  gates = (np.stack([scores.gate_sums[b] for b in sorted(scores.gate_sums)])
           if scores.gate_sums else None)
  return TaskScores(np.asarray(example_index), tokens, correct, gates)


def evaluate_split(experiment_name: str, split: str, job_log_dir: str | None = None
                   ) -> tuple[dict[str, TaskScores], int]:
  """({eval task: its per-example scores}, checkpoint step) of a run's newest checkpoint on
  `split` of each of its EVAL_DATA tasks (the examples `eval_examples` chooses)."""
  experiment, model, variables, step = restore_run(experiment_name, job_log_dir)
  scores = {}
  for task_name in experiment.EVAL_DATA:
    index, examples = eval_examples(experiment, task_name, split)
    scores[task_name] = score_examples(model, variables, examples, experiment.SEQUENCE_LENGTH,
                                       experiment.EVAL_BATCH_SIZE, index)
  return scores, step


def save_scores(path: str, scores: dict[str, TaskScores]) -> None:
  """Writes per-example scores as one .npz (arrays named <task>/<field>)."""
  arrays = {}
  for task_name, s in scores.items():
    for field in dataclasses.fields(TaskScores):
      value = getattr(s, field.name)
      if value is not None:
        arrays[f'{task_name}/{field.name}'] = value
  tmp = path + '.tmp.npz'
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)


def load_scores(path: str) -> dict[str, TaskScores]:
  with np.load(path) as data:
    names = sorted({key.split('/')[0] for key in data.files})
    return {n: TaskScores(**{f.name: (data[f'{n}/{f.name}'] if f'{n}/{f.name}' in data.files
                                      else None) for f in dataclasses.fields(TaskScores)})
            for n in names}


def main(argv):
  del argv
  args = flags.FLAGS
  try:
    if args.batch_size < 1:
      raise EvaluateError(f'--batch_size={args.batch_size}: give 1 or more rows per pass.')
    if bool(args.text_file) == bool(args.split):
      raise EvaluateError('Give either --text_file=FILE (your own text) or --split=test (or '
                          'validation: the experiment\'s evaluation examples), not both.')
    if args.split:
      from mode_pax import results  # pylint: disable=g-import-not-at-top
      metrics = results.evaluate_and_save(args.exp, args.split, args.job_log_dir)
      print(f'{args.exp} on its {args.split} examples: ' + ', '.join(
          f'{k} {v:.2f}%' for k, v in metrics.items()))
      return
    text = read_text_file(args.text_file)  # before the heavy imports of evaluate_text
    accuracy, num_tokens = evaluate_text(args.exp, text, args.job_log_dir, args.batch_size)
  except EvaluateError as e:
    raise SystemExit(f'ERROR: {e}') from None
  print(f'{args.exp} on {args.text_file}: next-token accuracy {100 * accuracy:.2f}% '
        f'over {num_tokens} tokens')


if __name__ == '__main__':
  flags.DEFINE_string('exp', None, 'Registered experiment of the trained run.')
  flags.DEFINE_string('text_file', None, 'UTF-8 text file to evaluate on.')
  flags.DEFINE_enum('split', None, ['test', 'validation'],
                    "Score the experiment's evaluation examples of this split, per example "
                    "(written into the run's folder; what Table 1 reads).")
  flags.DEFINE_string('job_log_dir', None, "The run's folder (default: mode_pax.paths).")
  flags.DEFINE_integer('batch_size', 16, 'Rows per forward pass (--text_file).')
  flags.mark_flags_as_required(['exp'])
  app.run(main)
