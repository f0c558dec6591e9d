"""Next-token accuracy of a trained run on any text file (retention on the user's own text).

  python -m mode_pax.evaluate --exp=mode.small.ComposeMathCode --text_file=my_notes.txt

The run's newest checkpoint (in its job_log_dir, see mode_pax.paths, or --job_log_dir) is
restored into the experiment's own Pax model, and the model's own metric,
`fraction_of_correct_next_step_preds`, is averaged over every token of the file (tokenized with
the data build's vocabulary, cut into rows of the experiment's sequence length).
"""

from __future__ import annotations

import math

from absl import app
from absl import flags
import jax
import numpy as np
from praxis import base_layer

from mode_pax import checkpoints
from mode_pax import lm_batch
from mode_pax import paths
from mode_pax import registry
from mode_pax import trees
from mode_pax.data import tasks


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


def evaluate_text(experiment_name: str, text: str, job_log_dir: str | None = None,
                  batch_size: int = 16) -> tuple[float, int]:
  """(next-token accuracy, number of tokens) of a run's newest checkpoint on `text`."""
  experiment_cls = registry.lookup(experiment_name)
  experiment = experiment_cls()
  job_log_dir = job_log_dir or paths.run_dir(registry.experiment_name(experiment_cls))
  variables = trees.unflatten(checkpoints.read_variables(paths.checkpoint_dir(job_log_dir)))
  model = base_layer.instantiate(experiment.task().model)
  token_ids = tasks.vocabulary().encode(text)
  if not token_ids:
    raise ValueError('The text is empty: nothing to evaluate.')
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
  with open(args.text_file, 'rb') as f:
    data = f.read()
  try:
    text = data.decode('utf-8').replace('\r\n', '\n')
  except UnicodeDecodeError as e:
    raise SystemExit(f'{args.text_file} is not UTF-8 text ({e.reason} at byte {e.start}); '
                     'convert it, e.g. with iconv -t UTF-8.') from e
  accuracy, num_tokens = evaluate_text(args.exp, text, args.job_log_dir, args.batch_size)
  print(f'{args.exp} on {args.text_file}: next-token accuracy {100 * accuracy:.2f}% '
        f'over {num_tokens} tokens')


if __name__ == '__main__':
  flags.DEFINE_string('exp', None, 'Registered experiment of the trained run.')
  flags.DEFINE_string('text_file', None, 'UTF-8 text file to evaluate on.')
  flags.DEFINE_string('job_log_dir', None, "The run's folder (default: mode_pax.paths).")
  flags.DEFINE_integer('batch_size', 16, 'Rows per forward pass.')
  flags.mark_flags_as_required(['exp', 'text_file'])
  app.run(main)
