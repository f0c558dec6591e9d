"""The main job: the small-scale Table 1 pipeline on CPU, end to end and resumable.

  python -m mode_pax.pipeline            (README: `make main`)

Stages run as `python -m paxml.main` subprocesses, each in its own job_log_dir under
$MODE_PAX_RUNS (mode_pax.paths): data build (if missing), backbone pre-training, the Code and Math
experts, the four MoDE compositions, the LoRA and full fine-tuning baselines, and `--mode=eval`
of every run on the test splits. Stages whose upstream runs are finished run side by side,
`--jobs` at a time: XLA:CPU compiles on one thread, so on 2 cores two stages take little longer
than one. A finished stage is skipped; an interrupted one resumes from its last checkpoint (Pax
does that on its own). Writes results/table1_<scale>.{md,csv}.
"""

from __future__ import annotations

from concurrent import futures
import importlib
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from mode import recipes
from mode_pax import convert
from mode_pax import methods
from mode_pax import paths
from mode_pax import registry
from mode_pax import results

# No JAX persistent compilation cache: with jax 0.4.26 on CPU, a stage that loaded its train
# step from the cache (written by an earlier stage of the same architecture) produced NaNs from
# its first step, in frozen variables too.
_EXTRA_ENV = dict(TF_CPP_MIN_LOG_LEVEL='3', PYTHONUNBUFFERED='1')
# Pax logs the training loss at every summary step: '[PAX STATUS] step_i: 50, training loss: 5.4'.
_PAX_STEP_RE = re.compile(rb'step_i: (\d+), training loss: ([-+.\deE]+|nan|inf)')
PROGRESS_SECONDS = 60.0  # how often a running stage reports its step


def _log(msg: str) -> None:
  print(f'[{time.strftime("%H:%M:%S")}] {msg}', flush=True)


def ensure_data(experiment_cls=None) -> None:
  """Builds the datasets an experiment reads (its TOKENIZER's build) when no finished build is
  there (the build skips finished parts)."""
  from mode_pax.data import errors, tasks  # pylint: disable=g-import-not-at-top
  tokenizer = experiment_cls.TOKENIZER if experiment_cls else None
  data_dir = experiment_cls().data_dir() if experiment_cls else tasks.resolve_data_dir()
  try:
    tasks.build_info(data_dir)
    return
  except errors.DataNotBuiltError as e:  # missing, partial or damaged: the build repairs it
    _log(f'data: {e}')
  cmd = [sys.executable, '-m', 'mode_pax.data.build']
  if tokenizer:
    cmd += [f'--tokenizer={tokenizer}', f'--data_dir={data_dir}']
  _log(f'data: building ({" ".join(["python"] + cmd[1:])}) ...')
  subprocess.run(cmd, check=True)


class StageProgress:
  """Reads a running stage's Pax log: its newest step and loss, and the time left.

  The rate is measured from the first step seen by this monitor (compilation and a resumed
  run's earlier steps do not count).
  """

  def __init__(self, log_path: str, total_steps: int | None):
    self.log_path, self.total_steps = log_path, total_steps
    self.start = time.time()
    self._first: tuple[float, int] | None = None
    self._offset = 0  # how far the log has been read (a status line can be far from its end)
    self._newest: tuple[int, float] | None = None

  def newest_step(self) -> tuple[int, float] | None:
    """(step, loss) of the newest step Pax logged, reading what the log gained since last time."""
    try:
      with open(self.log_path, 'rb') as f:
        f.seek(self._offset)
        text = f.read()
    except OSError:
      return self._newest
    end = text.rfind(b'\n') + 1  # a line still being written is read next time
    found = _PAX_STEP_RE.findall(text[:end])
    self._offset += end
    if found:
      self._newest = (int(found[-1][0]), float(found[-1][1]))
    return self._newest

  def line(self, now: float | None = None) -> str:
    now = time.time() if now is None else now
    newest = self.newest_step()
    if newest is None:
      return f'starting / compiling ({now - self.start:.0f} s)'
    step, loss = newest
    if self._first is None or step < self._first[1]:
      self._first = (now, step)
    text = f'step {step}' + (f'/{self.total_steps}' if self.total_steps else '')
    text += f', loss {loss:.3f}'
    first_time, first_step = self._first
    if self.total_steps and step > first_step and now > first_time:
      left = (self.total_steps - step) * (now - first_time) / (step - first_step)
      text += f', ~{left / 60:.1f} min left'
    return text


def _failed(cmd: Sequence[str], returncode: int, log_path: str) -> None:
  with open(log_path) as log:
    tail = ''.join(log.readlines()[-25:])
  raise RuntimeError(f'{" ".join(cmd)} failed ({returncode}); end of {log_path}:\n{tail}')


def _run_logged(cmd: Sequence[str], log_path: str) -> None:
  """Runs a command of this repository, its output appended to log_path; raises on failure."""
  with open(log_path, 'a') as log:
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=paths.REPO_ROOT,
                          env={**os.environ, **_EXTRA_ENV}, check=False)
  if proc.returncode:
    _failed(cmd, proc.returncode, log_path)


def run_paxml(exp: str, job_log_dir: str, mode: str, log_name: str, env=None,
              total_steps: int | None = None, label: str | None = None) -> None:
  """Runs paxml main for one experiment; its output goes to job_log_dir/log_name.

  Every PROGRESS_SECONDS it prints one line: the stage's step, total, loss and time left (read
  from the log), and the log's path.
  """
  os.makedirs(job_log_dir, exist_ok=True)
  log_path = os.path.join(job_log_dir, log_name)
  cmd = [sys.executable, '-m', 'paxml.main', f'--exp={exp}', f'--job_log_dir={job_log_dir}',
         f'--mode={mode}']
  progress = StageProgress(log_path, total_steps)
  with open(log_path, 'a') as log:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=paths.REPO_ROOT,
                            env={**os.environ, **_EXTRA_ENV, **(env or {})})
    while True:
      try:
        proc.wait(timeout=PROGRESS_SECONDS)
        break
      except subprocess.TimeoutExpired:
        _log(f'{label or mode + " " + exp}: {progress.line()}  ({log_path})')
  if proc.returncode:
    _failed(cmd, proc.returncode, log_path)


def convert_stage(module: str, name: str, job_log_dir: str) -> None:
  """The run of a PRETRAINED backbone: the PLM converted into its checkpoint folder, or, for
  PRETRAINED='run:NAME', the run of NAME (trained before: `upstream_stages`) relaid out into
  this experiment's blocks."""
  experiment_cls = registry.lookup(f'{module}.{name}')
  start = time.time()
  _log(f'convert {name}: {experiment_cls.PRETRAINED} -> {job_log_dir}')
  os.makedirs(job_log_dir, exist_ok=True)
  log_path = os.path.join(job_log_dir, 'convert_log.txt')
  cmd = [sys.executable, '-m', 'mode_pax.convert', convert.source_flag(experiment_cls),
         f'--exp={module}.{name}', f'--out={paths.checkpoint_dir(job_log_dir)}']
  _run_logged(cmd, log_path)
  _log(f'convert {name}: finished in {time.time() - start:.0f} s')


def expert_gates_stage(module: str, name: str) -> None:
  """A composition's gates composed from its experts' runs (MoDE.GATES_FROM_EXPERTS), written
  afresh before its training starts (the experts' runs are upstream stages, trained before)."""
  experiment = registry.lookup(f'{module}.{name}')()
  out = experiment.expert_gates_dir()
  if os.path.exists(out):  # from an earlier start, maybe of other expert runs: recompose
    shutil.rmtree(out)
  os.makedirs(out)
  _log(f'compose {name}: the gates of {", ".join(map(str, experiment.EXPERTS))} -> {out}')
  cmd = [sys.executable, '-m', 'mode_pax.convert', '--expert_gates', f'--exp={module}.{name}',
         f'--out={out}']
  _run_logged(cmd, os.path.join(os.path.dirname(out), 'convert_log.txt'))


def train_stage(module: str, name: str) -> None:
  experiment_cls = registry.lookup(f'{module}.{name}')
  job_log_dir = paths.run_dir(registry.experiment_name(experiment_cls))
  target = experiment_cls.MAX_STEPS
  step = paths.latest_checkpoint_step(paths.checkpoint_dir(job_log_dir))
  if step is not None and step >= target:
    _log(f'train {name}: done ({step} steps), skipped')
    return
  if experiment_cls.PRETRAINED:
    convert_stage(module, name, job_log_dir)
    return
  if getattr(experiment_cls, 'GATES_FROM_EXPERTS', False) and step is None:
    expert_gates_stage(module, name)
  start = time.time()
  _log(f'train {name}: {"resuming at step " + str(step) if step else "starting"}, '
       f'{target} steps -> {job_log_dir}')
  run_paxml(f'{module}.{name}', job_log_dir, 'train', 'train_log.txt', total_steps=target,
            label=f'train {name}')
  _log(f'train {name}: finished in {time.time() - start:.0f} s')


def evaluate_stage(module: str, name: str, split: str = 'test') -> dict[str, float]:
  """Next-token accuracy on each evaluation task's `split`, per example (`mode_pax.evaluate
  --split`), cached in the run's folder for its checkpoint and evaluation (results.eval_key)."""
  experiment_cls = registry.lookup(f'{module}.{name}')
  job_log_dir = paths.run_dir(registry.experiment_name(experiment_cls))
  cached = results.load_test_metrics(job_log_dir, experiment_cls, split)
  if cached is not None:
    return cached
  start = time.time()
  _log(f'eval {name}: {split} splits ...')
  log_path = os.path.join(job_log_dir, 'eval_log.txt')
  cmd = [sys.executable, '-m', 'mode_pax.evaluate', f'--exp={module}.{name}', f'--split={split}',
         f'--job_log_dir={job_log_dir}']
  _run_logged(cmd, log_path)
  metrics = results.load_test_metrics(job_log_dir, experiment_cls, split)
  _log(f'eval {name} ({split}): ' + ', '.join(f'{k} {v:.2f}' for k, v in metrics.items())
       + f' ({time.time() - start:.0f} s)')
  return metrics


def upstream_stages(module: str, name: str) -> list[str]:
  """Names of the runs a stage starts from (its BACKBONE and EXPERTS, and the run that a
  relayout backbone, PRETRAINED='run:NAME', relays out), in `module`."""
  experiment_cls = registry.lookup(f'{module}.{name}')
  stages = ([experiment_cls.BACKBONE] if experiment_cls.BACKBONE else []) + list(
      experiment_cls.EXPERTS)
  relaid_out = convert.pretrained_run(experiment_cls)
  if relaid_out is not None:
    stages.append(relaid_out)
  return [s if isinstance(s, str) else s.__name__ for s in stages]


def schedule(module: str, train: Sequence[str], evaluate: Sequence[str] = ()):
  """(order, deps) of the stages ('train' or 'eval', name) that `run_stages` runs: `train`,
  their upstream runs before them, and `evaluate`."""
  order, deps = [], {}

  def add_train(name):
    if ('train', name) in deps:
      return
    ups = upstream_stages(module, name)
    for up in ups:
      add_train(up)
    deps[('train', name)] = {('train', up) for up in ups}
    order.append(('train', name))

  for name in list(train) + list(evaluate):
    add_train(name)
  for name in evaluate:
    deps[('eval', name)] = {('train', name)}
    order.append(('eval', name))
  return order, deps


def is_done(module: str, kind: str, name: str) -> bool:
  """Whether a stage has nothing left to do (trained to MAX_STEPS; evaluated and cached)."""
  experiment_cls = registry.lookup(f'{module}.{name}')
  job_log_dir = paths.run_dir(registry.experiment_name(experiment_cls))
  if kind == 'eval':
    return results.load_test_metrics(job_log_dir, experiment_cls) is not None
  step = paths.latest_checkpoint_step(paths.checkpoint_dir(job_log_dir))
  return step is not None and step >= experiment_cls.MAX_STEPS


def run_stages(module: str, train: Sequence[str], evaluate: Sequence[str] = (),
               jobs: int = 1, split: str = 'test') -> dict[str, dict[str, float]]:
  """Trains `train` and their upstream runs, evaluates `evaluate` on `split`, `jobs` stages at
  a time.

  A stage starts once its upstream runs are trained; among ready stages, training goes first,
  in the order given (upstream runs before the runs that need them). The first failure stops
  new stages from starting and is raised once the running ones end. Returns name -> metrics.
  """
  if jobs < 1:
    raise ValueError(f'jobs={jobs}: run at least one stage at a time.')
  order, deps = schedule(module, train, evaluate)
  done, running, metrics, failure = set(), {}, {}, None
  run = {'train': train_stage,
         'eval': lambda module, name: evaluate_stage(module, name, split)}
  with futures.ThreadPoolExecutor(max_workers=jobs) as pool:
    while len(done) < len(order):
      ready = [t for t in order
               if t not in done and t not in running.values() and deps[t] <= done]
      ready.sort(key=lambda t: t[0] != 'train')  # stable: keeps `order` within a kind
      while failure is None and ready and len(running) < jobs:
        task = ready.pop(0)
        running[pool.submit(run[task[0]], module, task[1])] = task
      if not running:
        break
      finished, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
      for future in finished:
        kind, name = running.pop(future)
        try:
          value = future.result()
        except Exception as e:  # pylint: disable=broad-except
          failure = failure or e
          _log(f'{kind} {name}: FAILED; waiting for running stages, starting no new ones')
          continue
        done.add((kind, name))
        if kind == 'eval':
          metrics[name] = value
      _log(f'progress: {len(done)}/{len(order)} stages done, {len(running)} running')
  if failure is not None:
    raise failure
  return metrics


def default_jobs() -> int:
  return os.cpu_count() or 1


# Scales the main job runs on a CPU (modules of experiments/): the backbone pre-trained here,
# and SmolLM2-135M (`make smollm2`).
SCALES = ('small', 'smollm2')


def check_jobs(jobs: int) -> bool:
  """absl flag validator of --jobs (flags are checked before any work)."""
  if jobs < 1:
    raise flags.ValidationError(
        f'--jobs={jobs}: give the number of stages to run at once, 1 or more (default '
        f'{default_jobs()}, the CPU count).')
  return True


def check_scale(scale: str) -> bool:
  """absl flag validator of --scale."""
  if scale not in SCALES:
    raise flags.ValidationError(
        f'--scale={scale!r}: the pipeline runs one of {", ".join(SCALES)} '
        '(experiments/<scale>.py); paper scale runs on TPU, see README.')
  return True


def seed_runs(module: str) -> dict[str, dict[int, str]]:
  """Seeded recipe -> SEED -> run name in `module` (seed 0: the Table 1 run itself)."""
  scale = importlib.import_module(module)
  out = {}
  for recipe in recipes.SEEDED:
    out[recipe.__name__] = {0: recipe.__name__}
    for name in vars(scale):
      found = re.fullmatch(rf'{recipe.__name__}Seed(\d+)', name)
      if found:
        out[recipe.__name__][int(found[1])] = name
  return out


def run_seeds(module: str, scale: str, out_dir: str, jobs: int) -> str:
  """Trains and evaluates the seeded runs of Table 1's decisive rows; writes
  results/seeds_<scale>.{md,csv} (`make seeds`)."""
  runs = seed_runs(module)
  if all(len(by_seed) == 1 for by_seed in runs.values()):
    raise SystemExit(f'{module} registers no seeded runs (recipes.register_all(seeds=...)).')
  names = [n for by_seed in runs.values() for n in by_seed.values()]
  metrics = run_stages(module, names, names, jobs=jobs)
  label = {r.__name__: r.LABEL for r in recipes.SEEDED}
  by_label = {label[recipe]: {s: metrics[n] for s, n in by_seed.items()}
              for recipe, by_seed in runs.items()}
  mode_recipes, baselines = recipes.TABLE1_COMPARISONS
  comparisons = [(m.LABEL, b.LABEL) for m in mode_recipes for b in baselines]
  return results.write_seeds(by_label, comparisons, out_dir, scale=scale,
                             command='make seeds' if scale == 'small' else
                             f'python -m mode_pax.pipeline --scale={scale} --seeds')


def main(argv) -> None:
  del argv
  start = time.time()
  module = f'mode.{flags.FLAGS.scale}'
  ensure_data(registry.lookup(f'{module}.{recipes.Backbone.__name__}'))
  if flags.FLAGS.seeds:
    out = run_seeds(module, flags.FLAGS.scale, flags.FLAGS.out, flags.FLAGS.jobs)
    _log(f'Seeds ({flags.FLAGS.scale} scale) -> {out}; this run took '
         f'{(time.time() - start) / 60:.1f} min.')
    with open(out) as f:
      print(f.read())
    return
  # Upstream runs (the backbone, the single-domain experts) are trained first by run_stages.
  names = [recipe.__name__ for recipe in recipes.TABLE1]
  # Runs that others start from go first (the critical path: backbone, experts, compositions).
  upstream = [u for n in names for u in upstream_stages(module, n)]
  train = list(dict.fromkeys(upstream + names))
  # Every run is evaluated: Table 1's, and the single-domain experts for routing diagnostics.
  evaluated = list(dict.fromkeys(names + upstream))
  stages, _ = schedule(module, train, evaluated)
  skipped = [f'{kind} {name}' for kind, name in stages if is_done(module, kind, name)]
  metrics = run_stages(module, train, evaluated, jobs=flags.FLAGS.jobs)
  rows = [results.Row(method=recipe.LABEL, experiment=f'{module}.{recipe.__name__}',
                      metrics=metrics[recipe.__name__]) for recipe in recipes.TABLE1]
  backbone_cls = registry.lookup(f'{module}.{recipes.Backbone.__name__}')
  _log('n-gram reference models on the same test examples ...')
  logging.set_verbosity(logging.WARNING)  # seqio and TFDS log every dataset they open
  references = results.reference_rows(
      backbone_cls, os.path.join(paths.runs_root(), f'{module}.ngram_references'))
  wall = time.time() - start
  out = results.write_table1(rows, flags.FLAGS.out, scale=flags.FLAGS.scale,
                             eval_rows=results.eval_rows(backbone_cls), references=references)
  results.write_routing([f'{module}.{n}' for n in evaluated
                         if issubclass(registry.lookup(f'{module}.{n}'), methods.MoDE)],
                        flags.FLAGS.out, scale=flags.FLAGS.scale)
  done_before = (f'{len(skipped)} of {len(stages)} stages were already done and skipped: '
                 f'{", ".join(skipped)}' if skipped else f'all {len(stages)} stages ran')
  _log(f'Table 1 ({flags.FLAGS.scale} scale) -> {out}; this run took {wall / 60:.1f} min; '
       f'{done_before}.')
  with open(out) as f:
    print(f.read())


if __name__ == '__main__':
  flags.DEFINE_string('scale', 'small', "Experiment module under `mode`: 'small' or 'smollm2'.")
  flags.DEFINE_string('out', str(paths.REPO_ROOT / 'results'), 'Where tables go.')
  flags.DEFINE_integer('jobs', default_jobs(), 'Stages run at once (default: CPU count).')
  flags.DEFINE_bool('seeds', False, "Instead of Table 1: its decisive rows over seeds "
                    "(results/seeds_<scale>.md; the Table 1 runs are seed 0).")
  flags.register_validator('jobs', check_jobs)
  flags.register_validator('scale', check_scale)
  app.run(main)
