"""The main job: the small-scale Table 1 pipeline on CPU, end to end and resumable.

  python -m mode_pax.pipeline            (README: `make main`)

Stages run as `python -m paxml.main` subprocesses, each in its own job_log_dir under
$MODE_PAX_RUNS (mode_pax.paths): data build (if missing), backbone pre-training, the Code and Math
experts, the four MoDE compositions, the LoRA and full fine-tuning baselines, then `--mode=eval`
of every run on the test splits. A finished stage is skipped; an interrupted one resumes from its
last checkpoint (Pax does that on its own). Writes results/table1.{md,csv}.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from absl import app
from absl import flags

from mode_pax import paths
from mode_pax import results

# No JAX persistent compilation cache: with jax 0.4.26 on CPU, a stage that loaded its train
# step from the cache (written by an earlier stage of the same architecture) produced NaNs from
# its first step, in frozen variables too.
_EXTRA_ENV = dict(TF_CPP_MIN_LOG_LEVEL='3', PYTHONUNBUFFERED='1')

# Table 1 order; the backbone is evaluated too, as the reference without adaptation.
TABLE1_STAGES = (
    ('Backbone (no adaptation)', 'Backbone'),
    ('Full-parameter Fine-tuning', 'FullFinetuneMathCode'),
    ('LoRA', 'LoraMathCode'),
    ('MoDE 1x Uninitialized Expert', 'Uninitialized1xMathCode'),
    ('MoDE 2x Uninitialized Experts', 'Uninitialized2xMathCode'),
    ('MoDE 2x Frozen Experts', 'FrozenExpertsMathCode'),
    ('MoDE 2x Experts', 'ComposeMathCode'),
)
TRAIN_ORDER = ('Backbone', 'CodeExpert', 'MathExpert', 'ComposeMathCode',
               'FrozenExpertsMathCode', 'Uninitialized1xMathCode', 'Uninitialized2xMathCode',
               'LoraMathCode', 'FullFinetuneMathCode')


def _log(msg: str) -> None:
  print(f'[{time.strftime("%H:%M:%S")}] {msg}', flush=True)


def ensure_data() -> None:
  """Builds the datasets when no finished build is there (the build skips finished parts)."""
  from mode_pax.data import errors, tasks  # pylint: disable=g-import-not-at-top
  try:
    tasks.build_info()
    return
  except errors.DataNotBuiltError:
    pass
  _log('data: not built yet; building (python -m mode_pax.data.build) ...')
  subprocess.run([sys.executable, '-m', 'mode_pax.data.build'], check=True)


def run_paxml(exp: str, job_log_dir: str, mode: str, log_name: str, env=None) -> None:
  """Runs paxml main for one experiment; its output goes to job_log_dir/log_name."""
  os.makedirs(job_log_dir, exist_ok=True)
  log_path = os.path.join(job_log_dir, log_name)
  cmd = [sys.executable, '-m', 'paxml.main', f'--exp={exp}', f'--job_log_dir={job_log_dir}',
         f'--mode={mode}']
  with open(log_path, 'a') as log:
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=paths.REPO_ROOT,
                          env={**os.environ, **_EXTRA_ENV, **(env or {})})
  if proc.returncode:
    with open(log_path) as log:
      tail = ''.join(log.readlines()[-25:])
    raise RuntimeError(f'{" ".join(cmd)} failed ({proc.returncode}); end of {log_path}:\n{tail}')


def train_stage(module: str, name: str) -> None:
  experiment_cls = results.lookup(f'{module}.{name}')
  job_log_dir = paths.run_dir(experiment_cls)
  target = experiment_cls.MAX_STEPS
  step = paths.latest_checkpoint_step(paths.checkpoint_dir(job_log_dir))
  if step is not None and step >= target:
    _log(f'train {name}: done ({step} steps), skipped')
    return
  start = time.time()
  _log(f'train {name}: {"resuming at step " + str(step) if step else "starting"}, '
       f'{target} steps -> {job_log_dir}')
  run_paxml(f'{module}.{name}', job_log_dir, 'train', 'train_log.txt')
  _log(f'train {name}: finished in {time.time() - start:.0f} s')


def evaluate_stage(module: str, name: str) -> dict[str, float]:
  """Next-token accuracy on each test set, cached per checkpoint step in the run's folder."""
  experiment_cls = results.lookup(f'{module}.{name}')
  job_log_dir = paths.run_dir(experiment_cls)
  cached = results.load_test_metrics(job_log_dir)
  if cached is not None:
    return cached
  start = time.time()
  _log(f'eval {name}: test splits ...')
  run_paxml(f'{module}.{name}', job_log_dir, 'eval', 'eval_log.txt',
            env={'MODE_PAX_EVAL_SPLIT': 'test'})
  metrics = results.save_test_metrics(job_log_dir, experiment_cls)
  _log(f'eval {name}: {metrics} ({time.time() - start:.0f} s)')
  return metrics


def main(argv) -> None:
  del argv
  start = time.time()
  module = f'mode.{flags.FLAGS.scale}'
  ensure_data()
  for name in TRAIN_ORDER:
    train_stage(module, name)
  rows = []
  for method, name in TABLE1_STAGES:
    metrics = evaluate_stage(module, name)
    rows.append(results.Row(method=method, experiment=f'{module}.{name}', metrics=metrics))
  wall = time.time() - start
  out = results.write_table1(rows, flags.FLAGS.out, scale=flags.FLAGS.scale, wall_seconds=wall)
  _log(f'Table 1 ({flags.FLAGS.scale} scale) -> {out}; this run took {wall / 60:.1f} min')
  with open(out) as f:
    print(f.read())


if __name__ == '__main__':
  flags.DEFINE_string('scale', 'small', "Experiment module under `mode`: 'small'.")
  flags.DEFINE_string('out', str(paths.REPO_ROOT / 'results'), 'Where tables go.')
  app.run(main)
