"""One command per study of the paper: trains its registered runs, evaluates, writes a table and a
matplotlib figure under results/.

  python -m mode_pax.studies --study=table3 [--scale=small] [--jobs=N]
  python -m mode_pax.studies --study=all      (every study, runs scheduled together)

Studies: table2 (LoRA ranks and FFN/embedding options, Code), table3 (blocks x expert layers,
Code), figure3_params (Code accuracy vs added parameters, LoRA vs MoDE), figure3_examples (Code
accuracy vs training examples), figure5 (accuracy vs Math+Code mixture examples, five methods).
Each study is declared once, in `experiments/studies.py` (its runs, table columns and figure).
Runs are shared with the main job (mode_pax.pipeline): finished stages are skipped, and stages
run `--jobs` at a time.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from typing import Sequence

from absl import app
from absl import flags
import matplotlib

matplotlib.use('Agg')
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib import ticker  # pylint: disable=g-import-not-at-top

from mode import studies as specs
from mode_pax import param_count
from mode_pax import paths
from mode_pax import pipeline
from mode_pax import registry


def _module_sweeps(module: str):
  __import__(module)
  return sys.modules[module].SWEEPS


def study_runs(study: str, module: str) -> list[str]:
  """Experiment names of every registered run of a study in a scale's module, sorted."""
  return specs.BY_NAME[study].runs(_module_sweeps(module))


def _plot(study: specs.Study, rows, path):
  """One panel per metric, one line per group (method / option), accuracy against x."""
  fig, axes = plt.subplots(1, len(study.panels), figsize=(4.2 * len(study.panels) + 1, 3.6),
                           squeeze=False)
  for ax, (label, key) in zip(axes[0], study.panels):
    for group in sorted({r['group'] for r in rows}):
      pts = sorted((r['x'], r[key]) for r in rows if r['group'] == group)
      ax.plot(*zip(*pts), marker='o', label=group)
    if study.logx:
      ax.set_xscale('log')
    if study.sort is not None:  # a table's few settings: label exactly those
      ax.set_xticks(sorted({r['x'] for r in rows}))
      ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
      ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(study.xlabel)
    ax.set_ylabel(f'{label} next-token accuracy (%)')
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _table(study: specs.Study, rows: list[dict]) -> list[str]:
  """Markdown rows: the study's settings, then Code, English and their average (as Tables 2-3
  report them) besides Math and the average of all three."""
  head = ['Experiment'] + [h for h, _ in study.columns]
  if study.sort is None:  # a figure: its x too
    head.append(study.xlabel)
  lines = ['| ' + ' | '.join(head + ['Trainable params', 'Math', 'Code', 'English',
                                     'Code+English avg', 'Average']) + ' |',
           '|' + '---|' * len(head) + '---:|' * 6]
  for r in rows:
    cells = [r['experiment']] + [str(v) for v in r['settings']]
    if study.sort is None:
      cells.append(f"{r['x']:,}")
    values = [f"{r['trainable']:,}"] + [f'{r[k]:.2f}' for k in ('math', 'code', 'english')]
    values += [f"{(r['code'] + r['english']) / 2:.2f}", f"{r['average']:.2f}"]
    lines.append('| ' + ' | '.join(cells + values) + ' |')
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
  metrics = {}  # split -> run -> metrics; every run trains in the first schedule
  for split in dict.fromkeys(specs.BY_NAME[study].split for study in studies):
    evaluated = list(dict.fromkeys(n for study in studies for n in names[study]
                                   if specs.BY_NAME[study].split == split))
    metrics[split] = pipeline.run_stages(module, every, evaluated, jobs=jobs, split=split)
  minutes = (time.time() - start) / 60
  return [_write_study(study, scale, module, names[study],
                       metrics[specs.BY_NAME[study].split], out_dir, minutes)
          for study in studies]


def run_study(study: str, scale: str, out_dir: str, module: str | None = None,
              jobs: int = 1) -> str:
  """Trains and evaluates every run of a study; writes its table (and figure); returns the .md."""
  return run_studies([study], scale, out_dir, module, jobs)[0]


def _write_study(study_name, scale, module, names, metrics, out_dir, minutes) -> str:
  """Writes one study's table (.md, .csv) and figure (.png); returns the .md path."""
  study = specs.BY_NAME[study_name]
  rows = []
  for name in names:
    exp = registry.lookup(f'{module}.{name}')
    count = param_count.count_experiment(exp)
    rows.append(dict(experiment=name, trainable=count.trainable, total=count.total,
                     settings=[fn(exp) for _, fn in study.columns], group=study.group(exp),
                     x=study.x(exp, count), order=(study.sort or (lambda e: ()))(exp),
                     **metrics[name]))
  rows.sort(key=lambda r: (r['order'], r['group'], r['x']))
  os.makedirs(out_dir, exist_ok=True)
  base = os.path.join(out_dir, f'{study_name}_{scale}')
  metric_keys = ['math', 'code', 'english', 'average']
  with open(base + '.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['experiment', 'trainable', 'total'] + metric_keys +
                    [h for h, _ in study.columns] + ['group', 'x'])
    writer.writerows([[r['experiment'], r['trainable'], r['total']] +
                      [r[k] for k in metric_keys] + r['settings'] + [r['group'], r['x']]
                      for r in rows])
  lines = _table(study, rows)
  lines.append(f'\nNext-token accuracy (%) on the {study.split} splits, {scale} scale '
               f'(`python -m mode_pax.studies --study={study_name}`; {minutes:.1f} min for the '
               'runs of this call, runs already done skipped).')
  with open(base + '.md', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  _plot(study, rows, base + '.png')
  return base + '.md'


def main(argv):
  del argv
  studies = list(specs.BY_NAME) if flags.FLAGS.study == 'all' else [flags.FLAGS.study]
  for out in run_studies(studies, flags.FLAGS.scale, flags.FLAGS.out, jobs=flags.FLAGS.jobs):
    with open(out) as f:
      print(f.read())


if __name__ == '__main__':
  flags.DEFINE_enum('study', None, list(specs.BY_NAME) + ['all'],
                    "Which study to run; 'all' trains the runs of every study in one schedule.")
  flags.DEFINE_string('scale', 'small', "Experiment module under `mode`.")
  flags.DEFINE_string('out', str(paths.REPO_ROOT / 'results'), 'Output folder.')
  flags.DEFINE_integer('jobs', pipeline.default_jobs(), 'Stages run at once (default: CPU count).')
  flags.mark_flag_as_required('study')
  app.run(main)
