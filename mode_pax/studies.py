"""One command per study of the paper: trains its registered runs, evaluates, writes a table and a
matplotlib figure under results/.

  python -m mode_pax.studies --study=table3 [--scale=small] [--jobs=N]
  python -m mode_pax.studies --study=all      (every study, runs scheduled together)

Studies: table2 (LoRA ranks and FFN/embedding options, Code), table3 (blocks x expert layers,
Code), figure3_params (Code accuracy vs added parameters, LoRA vs MoDE), figure3_examples (Code
accuracy vs training examples), figure5 (accuracy vs Math+Code mixture examples, five methods).
Runs are shared with the main job (mode_pax.pipeline): finished stages are skipped, and stages
run `--jobs` at a time.
"""

from __future__ import annotations

import csv
import os
import re
import sys
import time
from typing import Sequence

from absl import app
from absl import flags
import matplotlib

matplotlib.use('Agg')
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib import ticker  # pylint: disable=g-import-not-at-top

from mode_pax import experiment
from mode_pax import param_count
from mode_pax import paths
from mode_pax import pipeline
from mode_pax import results
from mode_pax.data import tasks

FIGURE5_LABELS = {
    'ComposeMathCode': 'MoDE 2x Experts', 'FrozenExpertsMathCode': 'MoDE 2x Frozen Experts',
    'Uninitialized2xMathCode': 'MoDE 2x Uninitialized', 'LoraMathCode': 'LoRA',
    'FullFinetuneMathCode': 'Full FT'}
# Study -> regex over the names registered in the scale's module. The unsuffixed recipes are the
# all-examples points of Figures 3 (right) and 5.
STUDIES = {
    'table2': r'LoraCodeRank\d+(Ffn|Emb|FfnEmb)?',
    'table3': r'CodeExpertB[236]L[12]',
    'figure3_params': r'LoraCodeRank\d+|CodeExpertB3L\d+',
    'figure3_examples': r'(CodeExpert|LoraCode)(N\d+)?',
    'figure5': f'({"|".join(FIGURE5_LABELS)})' + r'(N\d+)?',
}
METHOD_LABELS = {experiment.LORA: 'LoRA', experiment.MODE: 'MoDE', experiment.FULL: 'Full FT'}


def study_runs(study: str, module: str) -> list[str]:
  """Experiment names of every registered run of a study, sorted by name."""
  __import__(module)
  return sorted(n for n in vars(sys.modules[module]) if re.fullmatch(STUDIES[study], n))


def _settings(study: str, name: str, exp) -> dict:
  """The run's place in the study: table columns, or the figure's curve (group) and x."""
  if study == 'table2':
    where = 'attention' + ' + FFN' * exp.LORA_FFN + ' + embeddings' * exp.LORA_EMBEDDINGS
    return dict(rank=exp.LORA_RANK, ffn=exp.LORA_FFN, emb=exp.LORA_EMBEDDINGS,
                group=f'LoRA on {where}', x=exp.LORA_RANK)
  if study == 'table3':
    return dict(blocks=exp.NUM_BLOCKS, layers=exp.EXPERT_LAYERS, x=exp.NUM_BLOCKS,
                group=f'{exp.EXPERT_LAYERS} expert layer(s) per block')
  if study == 'figure3_params':
    return dict(group=('LoRA (rank)' if exp.METHOD == experiment.LORA
                       else 'MoDE (expert layers per block)'))
  group = (FIGURE5_LABELS[re.fullmatch(STUDIES[study], name).group(1)] if study == 'figure5'
           else METHOD_LABELS[exp.METHOD])
  return dict(group=group, x=tasks.num_train_examples(exp.TRAIN_DATA))


# Study -> (panels: (label, metric key)), x-axis label, log x).
_DOMAIN_PANELS = tuple(results.DOMAINS) + (('Average', 'average'),)
_CODE_ENGLISH = (('Code', 'code'), ('English', 'english'))
PLOTS = {
    'table2': (_CODE_ENGLISH, 'LoRA rank', True),
    'table3': (_CODE_ENGLISH, 'MoDE blocks', False),
    'figure3_params': ((('Code', 'code'),), 'trainable parameters', True),
    'figure3_examples': ((('Code', 'code'),), 'Code training examples', True),
    'figure5': (_DOMAIN_PANELS, 'Math + Code training examples', True),
}


def _plot(study, rows, path):
  """One panel per metric, one line per group (method / option), accuracy against x."""
  panels, xlabel, logx = PLOTS[study]
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1, 3.6), squeeze=False)
  for ax, (label, key) in zip(axes[0], panels):
    for group in sorted({r['group'] for r in rows}):
      pts = sorted((r['x'], r[key]) for r in rows if r['group'] == group)
      ax.plot(*zip(*pts), marker='o', label=group)
    if logx:
      ax.set_xscale('log')
    if study.startswith('table'):  # few settings: label exactly those
      ax.set_xticks(sorted({r['x'] for r in rows}))
      ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
      ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f'{label} next-token accuracy (%)')
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _table(study: str, rows: list[dict]) -> list[str]:
  """Markdown rows; Tables 2 and 3 report Code, English and their average, as the paper does."""
  if study == 'table2':
    head = ['LoRA rank', 'FFN', 'Embeddings']
    cells = lambda r: [str(r['rank']), 'yes' if r['ffn'] else 'no', 'yes' if r['emb'] else 'no']
  elif study == 'table3':
    head = ['Blocks', 'Expert layers per block']
    cells = lambda r: [str(r['blocks']), str(r['layers'])]
  else:
    head = ['Experiment', 'Curve', 'x']
    cells = lambda r: [r['experiment'], r['group'], f"{r['x']:,}"]
  lines = ['| ' + ' | '.join(head + ['Trainable params', 'Math', 'Code', 'English',
                                     'Code+English avg', 'Average']) + ' |',
           '|' + '---|' * len(head) + '---:|' * 6]
  for r in rows:
    values = [f"{r['trainable']:,}"] + [f'{r[k]:.2f}' for k in ('math', 'code', 'english')]
    values += [f"{(r['code'] + r['english']) / 2:.2f}", f"{r['average']:.2f}"]
    lines.append('| ' + ' | '.join(cells(r) + values) + ' |')
  return lines


def run_studies(studies: Sequence[str], scale: str, out_dir: str, module: str | None = None,
                jobs: int = 1) -> list[str]:
  """Trains and evaluates the runs of several studies in one schedule (runs shared between
  studies train once), then writes each study's table (and figure); returns the .md paths."""
  module = module or f'mode.{scale}'
  names = {study: study_runs(study, module) for study in studies}
  for study, found in names.items():
    if not found:
      raise ValueError(f'No registered runs of {study} in {module}.')
  pipeline.ensure_data()
  start = time.time()
  every = list(dict.fromkeys(n for study in studies for n in names[study]))
  metrics = pipeline.run_stages(module, every, every, jobs=jobs)
  minutes = (time.time() - start) / 60
  return [_write_study(study, scale, module, names[study], metrics, out_dir, minutes)
          for study in studies]


def run_study(study: str, scale: str, out_dir: str, module: str | None = None,
              jobs: int = 1) -> str:
  """Trains and evaluates every run of a study; writes its table (and figure); returns the .md."""
  return run_studies([study], scale, out_dir, module, jobs)[0]


def _write_study(study, scale, module, names, metrics, out_dir, minutes) -> str:
  """Writes one study's table (.md, .csv) and, for the figures, its plot; returns the .md."""
  rows = []
  for name in names:
    exp = results.lookup(f'{module}.{name}')
    count = param_count.count_experiment(exp)
    rows.append(dict(experiment=name, trainable=count.trainable, total=count.total,
                     **metrics[name], **_settings(study, name, exp)))
    if study == 'figure3_params':
      rows[-1]['x'] = count.trainable
  order = {'table2': lambda r: (r['ffn'], r['emb'], r['rank']),
           'table3': lambda r: (r['blocks'], r['layers'])}.get(study, lambda r: (r['group'], r['x']))
  rows.sort(key=order)
  os.makedirs(out_dir, exist_ok=True)
  base = os.path.join(out_dir, f'{study}_{scale}')
  keys = ['experiment', 'trainable', 'total', 'math', 'code', 'english', 'average']
  keys += [k for k in ('rank', 'ffn', 'emb', 'blocks', 'layers', 'group', 'x') if k in rows[0]]
  with open(base + '.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(keys)
    writer.writerows([[r[k] for k in keys] for r in rows])
  lines = _table(study, rows)
  lines.append(f'\nNext-token accuracy (%) on the test splits, {scale} scale '
               f'(`python -m mode_pax.studies --study={study}`; {minutes:.1f} min for the '
               'runs of this call, runs already done skipped).')
  with open(base + '.md', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  _plot(study, rows, base + '.png')
  return base + '.md'


def main(argv):
  del argv
  studies = list(STUDIES) if flags.FLAGS.study == 'all' else [flags.FLAGS.study]
  for out in run_studies(studies, flags.FLAGS.scale, flags.FLAGS.out, jobs=flags.FLAGS.jobs):
    with open(out) as f:
      print(f.read())


if __name__ == '__main__':
  flags.DEFINE_enum('study', None, list(STUDIES) + ['all'],
                    "Which study to run; 'all' trains the runs of every study in one schedule.")
  flags.DEFINE_string('scale', 'small', "Experiment module under `mode`.")
  flags.DEFINE_string('out', str(paths.REPO_ROOT / 'results'), 'Output folder.')
  flags.DEFINE_integer('jobs', pipeline.default_jobs(), 'Stages run at once (default: CPU count).')
  flags.mark_flag_as_required('study')
  app.run(main)
