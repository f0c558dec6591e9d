"""Reading Pax's evaluation summaries and writing the paper's tables.

Accuracy is Pax's `fraction_of_correct_next_step_preds` (next-token accuracy), the paper's metric,
read from the TensorBoard summaries that `paxml.main --mode=eval` writes for each eval input.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os

import tensorflow as tf

from mode import recipes
from mode_pax import param_count
from mode_pax import paths
from mode_pax.data import tasks

ACCURACY = 'fraction_of_correct_next_step_preds'
DOMAINS = (('Math', 'math'), ('Code', 'code'), ('English', 'english'))
METRICS_FILE = 'test_metrics.json'


def read_eval_accuracy(job_log_dir: str, input_name: str) -> tuple[int, float]:
  """(step, accuracy) of the newest eval of `input_name` in a Pax job_log_dir."""
  pattern = os.path.join(job_log_dir, 'summaries', f'eval_test_{input_name}', 'events.*')
  best = None
  for event_file in sorted(glob.glob(pattern)):  # names start with their time: oldest first
    for event in tf.compat.v1.train.summary_iterator(event_file):
      for value in event.summary.value:
        if value.tag.split('/')[-1] == ACCURACY:
          scalar = (value.simple_value if value.HasField('simple_value')
                    else float(tf.make_ndarray(value.tensor)))
          if best is None or event.step >= best[0]:
            best = (event.step, scalar)
  if best is None:
    raise FileNotFoundError(f'No {ACCURACY} summary for eval input {input_name!r} under '
                            f'{pattern}; run paxml.main --mode=eval on {job_log_dir} first.')
  return best


def eval_key(job_log_dir: str, experiment_cls) -> dict:
  """Everything that defines a run's test metrics: cached metrics count only for this key."""
  return dict(step=paths.latest_checkpoint_step(paths.checkpoint_dir(job_log_dir)),
              eval_data=list(experiment_cls.EVAL_DATA),
              eval_num_batches=experiment_cls.EVAL_NUM_BATCHES,
              eval_batch_size=experiment_cls.EVAL_BATCH_SIZE,
              sequence_length=experiment_cls.SEQUENCE_LENGTH,
              data_fingerprint=tasks.build_info(experiment_cls().data_dir())['fingerprint'])


def save_test_metrics(job_log_dir: str, experiment_cls) -> dict[str, float]:
  cache_key = eval_key(job_log_dir, experiment_cls)
  metrics = {}
  for _, key in DOMAINS:
    eval_step, accuracy = read_eval_accuracy(job_log_dir, key)
    metrics[key] = 100.0 * accuracy
  metrics['average'] = sum(metrics[k] for _, k in DOMAINS) / len(DOMAINS)
  count = param_count.count_experiment(experiment_cls)
  record = dict(key=cache_key, eval_step=eval_step, metrics=metrics, total_params=count.total,
                trainable_params=count.trainable)
  with open(os.path.join(job_log_dir, METRICS_FILE), 'w') as f:
    json.dump(record, f, indent=1)
  return metrics


def load_test_metrics(job_log_dir: str, experiment_cls) -> dict[str, float] | None:
  """Cached test metrics, if they were computed with today's `eval_key` (the run's newest
  checkpoint, the same test rows, the same data build)."""
  path = os.path.join(job_log_dir, METRICS_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  if record.get('key') != eval_key(job_log_dir, experiment_cls):
    return None
  return record['metrics']


@dataclasses.dataclass
class Row:
  method: str
  experiment: str
  metrics: dict[str, float]
  params: int | None = None


def _params(row: Row) -> int:
  if row.params is None:
    record_path = os.path.join(paths.run_dir(row.experiment), METRICS_FILE)
    with open(record_path) as f:
      row.params = json.load(f)['total_params']
  return row.params


def eval_rows(experiment_cls) -> str:
  """What an experiment's evaluation reads of each test split, in words."""
  if experiment_cls.EVAL_NUM_BATCHES < 0:
    return 'the whole test splits'
  rows = experiment_cls.EVAL_NUM_BATCHES * experiment_cls.EVAL_BATCH_SIZE
  return (f'the first {rows} rows of each test split (EVAL_NUM_BATCHES='
          f'{experiment_cls.EVAL_NUM_BATCHES} x EVAL_BATCH_SIZE={experiment_cls.EVAL_BATCH_SIZE})')


# The README command that writes each scale's Table 1.
SCALE_COMMANDS = {'small': 'make main', 'smollm2': 'make smollm2'}


def write_table1(rows: list[Row], out_dir: str, *, scale: str,
                 eval_rows: str = 'the test splits') -> str:
  """Writes results/table1_<scale>.md and .csv in the paper's Table 1 layout; returns the .md.

  The table depends only on the runs (no wall time, nothing about this call), so a rerun of a
  checkout on the same kind of machine rewrites the committed table byte for byte.
  """
  os.makedirs(out_dir, exist_ok=True)
  by_method = {r.method: r for r in rows}
  cols = [label for label, _ in DOMAINS] + ['Average']
  keys = [key for _, key in DOMAINS] + ['average']
  lines = [f'| Method | Parameters | {" | ".join(cols)} |',
           '|---|---:|' + '---:|' * len(cols)]
  csv_rows = [['method', 'experiment', 'parameters'] + keys]
  for r in rows:
    values = ' | '.join(f'{r.metrics[k]:.2f}' for k in keys)
    lines.append(f'| {r.method} | {_params(r) / 1e6:.3f} M | {values} |')
    csv_rows.append([r.method, r.experiment, _params(r)] + [f'{r.metrics[k]:.4f}' for k in keys])
  mode_recipe, baselines = recipes.TABLE1_COMPARISONS
  mode_row = by_method.get(mode_recipe.LABEL)
  for baseline in (b.LABEL for b in baselines):
    if mode_row and baseline in by_method:
      base = by_method[baseline]
      deltas = ' | '.join(f'{mode_row.metrics[k] - base.metrics[k]:+.2f}' for k in keys)
      lines.append(f'| &nbsp;&nbsp;vs. {baseline} | {(_params(mode_row) - _params(base)) / 1e6:+.3f}'
                   f' M | {deltas} |')
  lines.append('')
  lines.append(f'Next-token accuracy (%) on {eval_rows}, {scale} scale '
               f'(`{SCALE_COMMANDS.get(scale, "python -m mode_pax.pipeline --scale=" + scale)}`).')
  md_path = os.path.join(out_dir, f'table1_{scale}.md')
  with open(md_path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  with open(os.path.join(out_dir, f'table1_{scale}.csv'), 'w', newline='') as f:
    csv.writer(f).writerows(csv_rows)
  return md_path
