"""One command per study of the paper: trains its registered runs, evaluates, writes a table and a
matplotlib figure under results/.

  python -m mode_pax.studies --study=table3 [--scale=small]

Studies: table2 (LoRA ranks and FFN/embedding options, Code), table3 (blocks x expert layers,
Code), figure3_params (Code accuracy vs added parameters, LoRA vs MoDE), figure3_examples (Code
accuracy vs training examples), figure5 (accuracy vs Math+Code mixture examples, five methods).
Runs are shared with the main job (mode_pax.pipeline): finished stages are skipped.
"""

from __future__ import annotations

import csv
import os
import re
import sys

from absl import app
from absl import flags
import matplotlib

matplotlib.use('Agg')
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

from mode_pax import param_count
from mode_pax import paths
from mode_pax import pipeline
from mode_pax import results

# Study -> regex over the names registered in the scale's module; group 1.. are the settings.
STUDIES = {
    'table2': r'LoraCodeRank(\d+)(Ffn|Emb|FfnEmb)?',
    'table3': r'CodeExpertB([236])L([12])',
    'figure3_params': r'(LoraCodeRank|CodeExpertB3L)(\d+)',
    'figure3_examples': r'(CodeExpert|LoraCode)N(\d+)',
    'figure5': r'(ComposeMathCode|FrozenExpertsMathCode|Uninitialized2xMathCode|LoraMathCode|'
               r'FullFinetuneMathCode)N(\d+)',
}
UPSTREAM = {'figure5': ('MathExpert', 'CodeExpert')}


def study_runs(study: str, module: str) -> list[tuple[str, tuple[str, ...]]]:
  """(experiment name, regex groups) of every registered run of a study, in a stable order."""
  __import__(module)
  names = sorted(vars(sys.modules[module]))
  runs = []
  for name in names:
    m = re.fullmatch(STUDIES[study], name)
    if m:
      runs.append((name, m.groups()))
  key = lambda r: tuple(int(g) if g and g.isdigit() else (g or '') for g in r[1])
  return sorted(runs, key=key)


def _plot(study, rows, path):
  if study == 'figure5':
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (label, key) in zip(axes, results.DOMAINS[1::-1] + results.DOMAINS[2:]):
      for method in sorted({r['group'] for r in rows}):
        pts = sorted((r['x'], r[key]) for r in rows if r['group'] == method)
        ax.plot(*zip(*pts), marker='o', label=method)
      ax.set_xscale('log'), ax.set_xlabel('Math + Code examples'), ax.set_title(label)
      ax.set_ylabel('next-token accuracy (%)')
    axes[0].legend(fontsize=7)
  else:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for group in sorted({r['group'] for r in rows}):
      pts = sorted((r['x'], r['code']) for r in rows if r['group'] == group)
      ax.plot(*zip(*pts), marker='o', label=group)
    ax.set_xscale('log')
    ax.set_xlabel({'figure3_params': 'trainable parameters',
                   'figure3_examples': 'Code training examples'}.get(study, study))
    ax.set_ylabel('Code next-token accuracy (%)')
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run_study(study: str, scale: str, out_dir: str, module: str | None = None) -> str:
  """Trains and evaluates every run of a study; writes its table (and figure); returns the .md."""
  module = module or f'mode.{scale}'
  runs = study_runs(study, module)
  if not runs:
    raise ValueError(f'No registered runs of {study} in {module}.')
  pipeline.ensure_data()
  for upstream in ('Backbone',) + UPSTREAM.get(study, ()):
    pipeline.train_stage(module, upstream)
  rows = []
  for name, groups in runs:
    pipeline.train_stage(module, name)
    metrics = pipeline.evaluate_stage(module, name)
    count = param_count.count_experiment(results.lookup(f'{module}.{name}'))
    row = dict(experiment=name, trainable=count.trainable, total=count.total, **metrics)
    if study in ('table2', 'table3'):
      row.update(group='', x=0)
    elif study == 'figure3_params':
      row.update(group='LoRA (rank)' if groups[0].startswith('Lora') else 'MoDE (expert layers)',
                 x=count.trainable)
    else:
      row.update(group=groups[0], x=int(groups[1]))
    rows.append(row)
  os.makedirs(out_dir, exist_ok=True)
  base = os.path.join(out_dir, f'{study}_{scale}')
  keys = ['experiment', 'trainable', 'total', 'math', 'code', 'english', 'average']
  with open(base + '.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(keys)
    writer.writerows([[r[k] for k in keys] for r in rows])
  # The paper's Tables 2 and 3 report Code, English and their average.
  lines = ['| Experiment | Trainable params | Code | English | Code+English avg | Math |',
           '|---|---:|---:|---:|---:|---:|']
  for r in rows:
    lines.append(f"| {r['experiment']} | {r['trainable']:,} | {r['code']:.2f} | "
                 f"{r['english']:.2f} | {(r['code'] + r['english']) / 2:.2f} | {r['math']:.2f} |")
  lines.append(f'\nNext-token accuracy (%) on the test splits, {scale} scale.')
  with open(base + '.md', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  if study not in ('table2', 'table3'):
    _plot(study, rows, base + '.png')
  return base + '.md'


def main(argv):
  del argv
  out = run_study(flags.FLAGS.study, flags.FLAGS.scale, flags.FLAGS.out)
  with open(out) as f:
    print(f.read())


if __name__ == '__main__':
  flags.DEFINE_enum('study', None, list(STUDIES), 'Which study to run.')
  flags.DEFINE_string('scale', 'small', "Experiment module under `mode`.")
  flags.DEFINE_string('out', str(paths.REPO_ROOT / 'results'), 'Output folder.')
  flags.mark_flag_as_required('study')
  app.run(main)
