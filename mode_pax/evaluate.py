"""Next-token accuracy of a trained run on any text file (retention on the user's own text).

  python -m mode_pax.evaluate --exp=mode.small.ComposeMathCode --text_file=my_notes.txt

The run's newest checkpoint (in its job_log_dir, see mode_pax.paths, or --job_log_dir) is
restored into the experiment's own Pax model, and the model's own metric,
`fraction_of_correct_next_step_preds`, is averaged over every token of the file (tokenized with
the data build's vocabulary, cut into rows of the experiment's sequence length).

Bad input stops with one message naming it and the fix, before the work it would waste: the text
file (missing, unreadable, not UTF-8, empty) before the imports of JAX and Pax; an unknown
--exp, a run without a checkpoint, and a checkpoint whose variables are not the experiment's
model (another experiment's run, another architecture) before any variable is read.
"""

from __future__ import annotations

import math
import os

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
  num_rows = math.ceil(len(stream) / seq_len)
  labels = np.zeros((num_rows, seq_len), np.int32)
  weights = np.zeros((num_rows, seq_len), np.float32)
  for r in range(num_rows):
    chunk = stream[r * seq_len:(r + 1) * seq_len]
    labels[r, :len(chunk)] = chunk
    weights[r, :len(chunk)] = 1.0
  ids = np.concatenate([np.zeros((num_rows, 1), np.int32), labels[:, :-1]], axis=1)
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


def evaluate_text(experiment_name: str, text: str, job_log_dir: str | None = None,
                  batch_size: int = 16) -> tuple[float, int]:
  """(next-token accuracy, number of tokens) of a run's newest checkpoint on `text`.

  Raises:
    EvaluateError: an unknown experiment, a run without a checkpoint, a checkpoint that is not
      this experiment's model, or an empty text.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  from praxis import base_layer
  from mode_pax import checkpoints
  from mode_pax import lm_batch
  from mode_pax import paths
  from mode_pax import registry
  from mode_pax import trees
  from mode_pax.data import tasks
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
  token_ids = tasks.vocabulary(experiment.data_dir()).encode(text)  # its TOKENIZER's build
  if not token_ids:
    raise EvaluateError('The text is empty: nothing to evaluate.')
  ids, labels, weights = token_rows(token_ids, experiment.SEQUENCE_LENGTH)

  @jax.jit
  def metrics_of(batch):
    metrics, _ = model.apply(variables, batch, rngs={base_layer.RANDOM: jax.random.PRNGKey(0)})
    return metrics

  correct = total = 0.0
  for start in range(0, len(ids), batch_size):
    sl = slice(start, start + batch_size)
    metrics = metrics_of(lm_batch.lm_batch(ids[sl], labels[sl], paddings=1.0 - weights[sl]))
    value, weight = metrics['fraction_of_correct_next_step_preds']
    correct += float(value) * float(weight)
    total += float(weight)
  return correct / total, int(total)


def main(argv):
  del argv
  args = flags.FLAGS
  try:
    if args.batch_size < 1:
      raise EvaluateError(f'--batch_size={args.batch_size}: give 1 or more rows per pass.')
    text = read_text_file(args.text_file)  # before the heavy imports of evaluate_text
    accuracy, num_tokens = evaluate_text(args.exp, text, args.job_log_dir, args.batch_size)
  except EvaluateError as e:
    raise SystemExit(f'ERROR: {e}') from None
  print(f'{args.exp} on {args.text_file}: next-token accuracy {100 * accuracy:.2f}% '
        f'over {num_tokens} tokens')


if __name__ == '__main__':
  flags.DEFINE_string('exp', None, 'Registered experiment of the trained run.')
  flags.DEFINE_string('text_file', None, 'UTF-8 text file to evaluate on.')
  flags.DEFINE_string('job_log_dir', None, "The run's folder (default: mode_pax.paths).")
  flags.DEFINE_integer('batch_size', 16, 'Rows per forward pass.')
  flags.mark_flags_as_required(['exp', 'text_file'])
  app.run(main)
