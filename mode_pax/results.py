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
from typing import Sequence

import numpy as np
import tensorflow as tf

from mode import recipes
from mode_pax import bootstrap
from mode_pax import param_count
from mode_pax import paths
from mode_pax.data import tasks

ACCURACY = 'fraction_of_correct_next_step_preds'
DOMAINS = (('Math', 'math'), ('Code', 'code'), ('English', 'english'))
# What the evaluation pass computes (mode_pax.evaluate): change it when the pass changes, so
# cached metrics of the old pass are not reused.
EVALUATION_VERSION = 2


def metrics_file(split: str) -> str:
  return f'{split}_metrics.json'


def scores_file(split: str) -> str:
  return f'{split}_scores.npz'


def domain_key(task_name: str) -> str:
  """'mode_math' -> 'math': a column of the tables."""
  return task_name.removeprefix('mode_')


def read_eval_accuracy(job_log_dir: str, input_name: str, split: str = 'test'
                       ) -> tuple[int, float]:
  """(step, accuracy) of the newest Pax eval (`paxml.main --mode=eval`) of `input_name`."""
  pattern = os.path.join(job_log_dir, 'summaries', f'eval_{split}_{input_name}', 'events.*')
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


def eval_key(job_log_dir: str, experiment_cls, split: str = 'test') -> dict:
  """Everything that defines a run's metrics on a split: cached metrics count only for it."""
  ckpt_dir = paths.checkpoint_dir(job_log_dir)
  return dict(evaluation_version=EVALUATION_VERSION, checkpoint=os.path.abspath(ckpt_dir),
              step=paths.latest_checkpoint_step(ckpt_dir), split=split,
              eval_data=list(experiment_cls.EVAL_DATA),
              token_fraction=experiment_cls.EVAL_TOKEN_FRACTION,
              sample_seed=experiment_cls.EVAL_SAMPLE_SEED,
              sequence_length=experiment_cls.SEQUENCE_LENGTH,
              data_fingerprint=tasks.build_info(experiment_cls().data_dir())['fingerprint'])


def summarize(scores: dict[str, 'evaluate.TaskScores']) -> dict:
  """Accuracy (%), tokens and examples per domain, average accuracy, and mean gate weights
  (per domain: [block][backbone, expert 0, ...]) of per-example scores."""
  metrics = {domain_key(t): 100.0 * s.accuracy for t, s in scores.items()}
  # The average of the tables' domains (of those evaluated, for a run evaluated on fewer).
  keys = [k for _, k in DOMAINS if k in metrics] or list(metrics)
  metrics['average'] = sum(metrics[k] for k in keys) / len(keys)
  routing = {domain_key(t): (s.gate_sums / s.tokens.sum()).round(6).tolist()
             for t, s in scores.items() if s.gate_sums is not None}
  return dict(metrics=metrics,
              tokens={domain_key(t): int(s.tokens.sum()) for t, s in scores.items()},
              examples={domain_key(t): len(s.tokens) for t, s in scores.items()},
              routing=routing or None)


def evaluate_and_save(experiment_name: str, split: str = 'test',
                      job_log_dir: str | None = None) -> dict[str, float]:
  """Scores a run per example on `split` (mode_pax.evaluate) and saves the scores and their
  summary in its folder, keyed by `eval_key`; returns the metrics (%)."""
  from mode_pax import evaluate  # pylint: disable=g-import-not-at-top
  from mode_pax import registry  # pylint: disable=g-import-not-at-top
  experiment_cls = registry.lookup(experiment_name)
  job_log_dir = job_log_dir or paths.run_dir(registry.experiment_name(experiment_cls))
  cache_key = eval_key(job_log_dir, experiment_cls, split)
  scores, step = evaluate.evaluate_split(experiment_name, split, job_log_dir)
  evaluate.save_scores(os.path.join(job_log_dir, scores_file(split)), scores)
  count = param_count.count_experiment(experiment_cls)
  record = dict(key=cache_key, eval_step=step, **summarize(scores), total_params=count.total,
                trainable_params=count.trainable)
  path = os.path.join(job_log_dir, metrics_file(split))
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=1)
  os.replace(path + '.tmp', path)
  return record['metrics']


def load_record(job_log_dir: str, experiment_cls, split: str = 'test') -> dict | None:
  """A run's saved evaluation record, if it was computed with today's `eval_key` (the same
  checkpoint, examples, data build and evaluation pass); None otherwise."""
  path = os.path.join(job_log_dir, metrics_file(split))
  if not os.path.exists(path) or not os.path.exists(
      os.path.join(job_log_dir, scores_file(split))):
    return None
  with open(path) as f:
    record = json.load(f)
  if record.get('key') != eval_key(job_log_dir, experiment_cls, split):
    return None
  return record


def load_test_metrics(job_log_dir: str, experiment_cls, split: str = 'test'
                      ) -> dict[str, float] | None:
  record = load_record(job_log_dir, experiment_cls, split)
  return None if record is None else record['metrics']


def reference_rows(experiment_cls, folder: str, orders=(1, 2, 3)) -> list['Row']:
  """Rows of n-gram count models (mode_pax.ngram) scored on `experiment_cls`'s test examples,
  cached in `folder` for the same examples, data build (eval_key) and training tasks."""
  from mode_pax import evaluate  # pylint: disable=g-import-not-at-top
  from mode_pax import ngram  # pylint: disable=g-import-not-at-top
  key = dict(eval_key(folder, experiment_cls), orders=list(orders),
             train_tasks=ngram.training_tasks(experiment_cls))
  key_path = os.path.join(folder, metrics_file('test'))
  paths_ = {n: os.path.join(folder, f'test_scores_{n}gram.npz') for n in orders}
  cached = os.path.exists(key_path) and all(os.path.exists(p) for p in paths_.values())
  if cached:
    with open(key_path) as f:
      cached = json.load(f).get('key') == key
  if cached:
    scores = {n: evaluate.load_scores(p) for n, p in paths_.items()}
  else:
    scores = ngram.reference_scores(experiment_cls, 'test', orders)
    os.makedirs(folder, exist_ok=True)
    for n, p in paths_.items():
      evaluate.save_scores(p, scores[n])
    with open(key_path, 'w') as f:
      json.dump(dict(key=key), f, indent=1)
  return [Row(method=ngram.label(n), experiment=f'mode_pax.ngram --orders={n}',
              metrics=summarize(scores[n])['metrics'], scores=scores[n], reference=True)
          for n in orders]


@dataclasses.dataclass
class Row:
  """A row of a table: a run (experiment) or a reference model (scores given)."""
  method: str
  experiment: str
  metrics: dict[str, float]
  params: int | None = None
  scores: dict | None = None  # task -> evaluate.TaskScores (default: the run's saved scores)
  reference: bool = False  # a count model, not a run: no parameters


def _record(row: Row) -> dict:
  with open(os.path.join(paths.run_dir(row.experiment), metrics_file('test'))) as f:
    return json.load(f)


def _params(row: Row) -> int | None:
  if row.params is None and not row.reference:
    row.params = _record(row)['total_params']
  return row.params


def _scores(row: Row) -> dict:
  if row.scores is None:
    from mode_pax import evaluate  # pylint: disable=g-import-not-at-top
    row.scores = evaluate.load_scores(
        os.path.join(paths.run_dir(row.experiment), scores_file('test')))
  return row.scores


def resampled(row: Row) -> dict[str, np.ndarray]:
  """Domain key (and 'average') -> bootstrap resamples of the row's accuracy (%)."""
  out = {domain_key(t): 100.0 * bootstrap.resampled_accuracy(t, s.tokens, s.correct)
         for t, s in _scores(row).items()}
  out['average'] = sum(out[k] for _, k in DOMAINS) / len(DOMAINS)
  return out


def eval_rows(experiment_cls) -> str:
  """What an experiment's evaluation reads of each test split, in words."""
  fraction = experiment_cls.EVAL_TOKEN_FRACTION
  if fraction >= 1.0:
    return 'every example of each test split'
  return (f'a fixed pseudo-random sample of each test split\'s examples holding at least '
          f'{100 * fraction:.0f}% of its tokens (EVAL_TOKEN_FRACTION={fraction}, '
          f'EVAL_SAMPLE_SEED={experiment_cls.EVAL_SAMPLE_SEED})')


# The README command that writes each scale's Table 1.
SCALE_COMMANDS = {'small': 'make main', 'smollm2': 'make smollm2'}


def _write(base: str, lines: Sequence[str], csv_rows: Sequence[Sequence]) -> str:
  """Writes base.md (lines) and base.csv (rows); returns the .md path."""
  os.makedirs(os.path.dirname(base) or '.', exist_ok=True)
  with open(base + '.md', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  with open(base + '.csv', 'w', newline='') as f:
    csv.writer(f).writerows(csv_rows)
  return base + '.md'


def _cell(value: float, samples: np.ndarray) -> str:
  low, high = bootstrap.interval(samples)
  return f'{value:.2f} [{low:.2f}, {high:.2f}]'


def write_table1(rows: list[Row], out_dir: str, *, scale: str,
                 eval_rows: str = 'the test splits', references: Sequence[Row] = ()) -> str:
  """Writes results/table1_<scale>.md and .csv in the paper's Table 1 layout; returns the .md.

  Each accuracy comes with its 95% bootstrap interval over test examples (mode_pax.bootstrap);
  the MoDE row's differences to the baselines with the paired interval (same resampled
  examples). `references` (count models, no parameters) follow the runs. The table depends only
  on the runs (no wall time, nothing about this call), so a rerun of a checkout on the same kind
  of machine rewrites the committed table byte for byte.
  """
  os.makedirs(out_dir, exist_ok=True)
  by_method = {r.method: r for r in rows}
  cols = [label for label, _ in DOMAINS] + ['Average']
  keys = [key for _, key in DOMAINS] + ['average']
  lines = [f'| Method | Parameters | {" | ".join(cols)} |',
           '|---|---:|' + '---:|' * len(cols)]
  csv_rows = [['method', 'experiment', 'parameters'] + [
      f'{k}{suffix}' for k in keys for suffix in ('', '_low', '_high')] + [
          f'{key}_tokens' for _, key in DOMAINS]]
  # Bootstrap resamples of every row, drawn once (the "vs." rows pair them).
  samples_of = {r.method: resampled(r) for r in list(rows) + list(references)}
  for r in list(rows) + list(references):
    samples = samples_of[r.method]
    params = _params(r)
    lines.append(f'| {r.method} | {"-" if params is None else f"{params / 1e6:.3f} M"} | '
                 + ' | '.join(_cell(r.metrics[k], samples[k]) for k in keys) + ' |')
    csv_rows.append([r.method, r.experiment, '' if params is None else params] + [
        f'{v:.4f}' for k in keys for v in (r.metrics[k], *bootstrap.interval(samples[k]))] + [
            int(_scores(r)['mode_' + key].tokens.sum()) for _, key in DOMAINS])
  mode_recipes, baselines = recipes.TABLE1_COMPARISONS
  for mode_row, baseline in ((by_method.get(m.LABEL), b.LABEL)
                             for m in mode_recipes for b in baselines):
    if mode_row and baseline in by_method:
      base = by_method[baseline]
      mode_samples, base_samples = samples_of[mode_row.method], samples_of[base.method]
      deltas = ' | '.join(
          _cell(mode_row.metrics[k] - base.metrics[k], mode_samples[k] - base_samples[k])
          for k in keys)
      lines.append(f'| {mode_row.method} vs. {baseline} | '
                   f'{(_params(mode_row) - _params(base)) / 1e6:+.3f} M | {deltas} |')
  scores = _scores(rows[0])
  tokens = ', '.join(f'{label} {int(scores["mode_" + key].tokens.sum()):,} tokens in '
                     f'{len(scores["mode_" + key].tokens):,} examples' for label, key in DOMAINS)
  lines.append('')
  lines.append(f'Next-token accuracy (%) on {eval_rows}, {scale} scale '
               f'(`{SCALE_COMMANDS.get(scale, "python -m mode_pax.pipeline --scale=" + scale)}`); '
               f'[95% bootstrap interval over test examples, {bootstrap.RESAMPLES} resamples; '
               f'"vs." rows: paired]. Scored: {tokens}.')
  return _write(os.path.join(out_dir, f'table1_{scale}'), lines, csv_rows)


# ------------------------------------------------------------------------------------------------
# Routing diagnostics: where each MoDE run's gates send the tokens of each domain.


def branch_names(experiment_cls) -> list[str]:
  """'backbone', then each expert by the run it starts from (or 'expert j' when new)."""
  experts = [s if isinstance(s, str) else s.__name__ for s in experiment_cls.EXPERTS]
  return ['backbone'] + [experts[j] if j < len(experts) else f'expert {j}'
                         for j in range(experiment_cls.NUM_DOMAIN_EXPERTS)]


def write_routing(experiment_names: Sequence[str], out_dir: str, *, scale: str) -> str:
  """results/routing_<scale>.{md,csv,png}: each MoDE run's mean gate weight on the backbone and
  on each expert, per block and per test domain (from its saved test evaluation)."""
  from mode_pax import registry  # pylint: disable=g-import-not-at-top
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  runs = []
  for name in experiment_names:
    experiment_cls = registry.lookup(name)
    record = load_record(paths.run_dir(registry.experiment_name(experiment_cls)),
                         experiment_cls)
    if record is None:
      raise FileNotFoundError(f'{name} has no test evaluation of its newest checkpoint: run '
                              f'python -m mode_pax.evaluate --exp={name} --split=test')
    runs.append((name, branch_names(experiment_cls), record['routing']))
  lines = ['| Run | Block | Domain | Mean gate weight per branch |', '|---|---:|---|---|']
  csv_rows = [['run', 'block', 'domain', 'branch', 'mean_gate_weight']]
  for name, branches, routing in runs:
    for block in range(len(routing['math'])):
      for label, key in DOMAINS:
        weights = routing[key][block]
        lines.append(f'| {name} | {block} | {label} | ' + ', '.join(
            f'{b} {w:.3f}' for b, w in zip(branches, weights)) + ' |')
        csv_rows += [[name, block, key, b, f'{w:.6f}'] for b, w in zip(branches, weights)]
  lines += ['', f'Mean gate weight of each branch over the test tokens of each domain ({scale} '
            f'scale, `{SCALE_COMMANDS.get(scale, "python -m mode_pax.pipeline")}`); block 0 is '
            'the first. Weights of a block sum to 1.']
  base = os.path.join(out_dir, f'routing_{scale}')
  _write(base, lines, csv_rows)
  cols = min(3, len(runs))
  rows_ = -(-len(runs) // cols)
  fig, axes = plt.subplots(rows_, cols, figsize=(4.2 * cols, 3.2 * rows_), sharey=True,
                           squeeze=False)
  for ax in axes.flat[len(runs):]:
    ax.set_visible(False)
  colors = ['#4d4d4d', '#1f77b4', '#d62728', '#2ca02c']
  for ax, (name, branches, routing) in zip(axes.flat, runs):
    num_blocks = len(routing['math'])
    for d, (label, key) in enumerate(DOMAINS):
      x = np.arange(num_blocks) * (len(DOMAINS) + 1) + d
      bottom = np.zeros(num_blocks)
      for j, branch in enumerate(branches):
        w = np.array([routing[key][b][j] for b in range(num_blocks)])
        ax.bar(x, w, bottom=bottom, color=colors[j % len(colors)], width=0.9,
               label=branch if d == 0 else None)
        bottom += w
      for xi in x:
        ax.text(xi, 1.01, label[0], ha='center', fontsize=7)
    ax.set_xticks(np.arange(num_blocks) * (len(DOMAINS) + 1) + 1)
    ax.set_xticklabels([f'block {b}' for b in range(num_blocks)])
    ax.set_title(name.rsplit('.', 1)[-1], fontsize=9)
    ax.set_ylim(0, 1.08)
    ax.legend(fontsize=6, loc='upper right', framealpha=0.9)
  for row in axes:
    row[0].set_ylabel('mean gate weight\n(M/C/E: test domain)')
  fig.tight_layout()
  fig.savefig(base + '.png', dpi=110)
  plt.close(fig)
  return base + '.md'


# ------------------------------------------------------------------------------------------------
# Run-to-run variation: the decisive rows of Table 1 over seeds.


def seed_interval(values: Sequence[float], level: float = bootstrap.LEVEL
                  ) -> tuple[float, float, float]:
  """(mean, low, high): Student's t interval of the mean over runs (seeds)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  values = np.asarray(values, np.float64)
  mean = float(values.mean())
  if len(values) < 2:
    return mean, float('nan'), float('nan')
  half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(
      len(values))
  return mean, mean - half, mean + half


def write_seeds(runs: dict[str, dict[int, dict[str, float]]], comparisons, out_dir: str, *,
                scale: str, command: str) -> str:
  """results/seeds_<scale>.{md,csv}: each method's accuracy per seed, its mean with a 95% t
  interval over seeds, and the paired per-seed differences of `comparisons`.

  runs: method label -> seed -> metrics (%); comparisons: (label a, label b) pairs, a - b.
  """
  keys = [key for _, key in DOMAINS] + ['average']
  cols = [label for label, _ in DOMAINS] + ['Average']

  def fmt(values):
    mean, low, high = seed_interval(values)
    return f'{mean:.2f} [{low:.2f}, {high:.2f}]'

  lines = [f'| Method | Seeds | {" | ".join(cols)} |', '|---|---|' + '---:|' * len(cols)]
  csv_rows = [['row', 'seeds'] + [f'{k}{s}' for k in keys for s in ('_mean', '_low', '_high')]
              + [f'{k}_seed{s}' for k in keys for s in range(max(len(r) for r in runs.values()))]]

  def add(label, per_seed: dict[int, dict[str, float]]):
    seeds = sorted(per_seed)
    lines.append(f'| {label} | {",".join(map(str, seeds))} | ' + ' | '.join(
        fmt([per_seed[s][k] for s in seeds]) for k in keys) + ' |')
    csv_rows.append([label, ' '.join(map(str, seeds))] + [
        f'{v:.4f}' for k in keys for v in seed_interval([per_seed[s][k] for s in seeds])] + [
            f'{per_seed[s][k]:.4f}' for k in keys for s in seeds])

  for label, per_seed in runs.items():
    add(label, per_seed)
  for a, b in comparisons:
    common = sorted(set(runs[a]) & set(runs[b]))
    add(f'{a} - {b} (paired by seed)',
        {s: {k: runs[a][s][k] - runs[b][s][k] for k in keys} for s in common})
  for a, b in comparisons:
    common = sorted(set(runs[a]) & set(runs[b]))
    lines.append('')
    lines.append(f'Per-seed differences {a} - {b}: ' + '; '.join(
        f'seed {s}: ' + ', '.join(f'{label} {runs[a][s][k] - runs[b][s][k]:+.2f}'
                                 for label, k in zip(cols, keys)) for s in common) + '.')
  lines += ['', f'Next-token accuracy (%) on the test examples of Table 1 ({scale} scale, '
            f'`{command}`); mean over seeds [95% Student t interval over seeds]. A seed changes '
            'the run\'s data order and initialisation (SEED); upstream runs (backbone, experts) '
            'are shared.']
  return _write(os.path.join(out_dir, f'seeds_{scale}'), lines, csv_rows)
