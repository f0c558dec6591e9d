"""The stage scheduler of the main job and the studies (mode_pax.pipeline.run_stages).

Stages are replaced by stand-ins that run until the test releases them, so the test decides when
each stage ends: which stages run side by side and the order they start in do not depend on the
machine's speed. What is checked is the scheduling, not training (tests/test_experiments.py
trains through it for real).
"""

from concurrent import futures
import os
import subprocess
import sys
import threading

from absl import flags
import pytest

from mode_pax import pipeline

MODULE = 'tests.tiny_experiments'
T, E = 'train', 'eval'
# Bounds a wait only when the scheduler is wrong (a stage it never starts or never ends).
TIMEOUT = 60


class Stages:
  """Stands in for train_stage / evaluate_stage: a stage runs until the test releases it."""

  def __init__(self):
    self.events = []  # ('start' | 'end', kind, name) in the order they happened
    self.running = set()  # (kind, name) of the stages started and not yet released
    self.fail = None  # (kind, name) of a stage that raises once released
    self._released = set()
    self._release_all = False
    self._cond = threading.Condition()

  def _run(self, kind, name):
    task = (kind, name)
    with self._cond:
      self.events.append(('start', kind, name))
      self.running.add(task)
      self._cond.notify_all()
      self._cond.wait_for(lambda: task in self._released or self._release_all)
      self.running.remove(task)
      self.events.append(('end', kind, name))
      self._cond.notify_all()
    if task == self.fail:
      raise RuntimeError(f'{kind} {name} broke')
    return {'math': 1.0} if kind == E else None

  def train(self, module, name):
    assert module == MODULE
    return self._run(T, name)

  def evaluate(self, module, name, split='test'):
    assert module == MODULE and split == 'test'
    return self._run(E, name)

  def wait_running(self, expected):
    """Waits until exactly `expected` run. They keep running until released, so a stage the
    scheduler starts too early or too late shows here as a mismatch."""
    with self._cond:
      if not self._cond.wait_for(lambda: self.running == set(expected), TIMEOUT):
        pytest.fail(f'running {sorted(self.running)}, expected {sorted(expected)}; events '
                    f'{self.events}')

  def release(self, task):
    with self._cond:
      self._released.add(task)
      self._cond.notify_all()

  def release_all(self):
    with self._cond:
      self._release_all = True
      self._cond.notify_all()

  def index(self, what, kind, name):
    return self.events.index((what, kind, name))


@pytest.fixture
def stages(monkeypatch):
  stand_in = Stages()
  monkeypatch.setattr(pipeline, 'train_stage', stand_in.train)
  monkeypatch.setattr(pipeline, 'evaluate_stage', stand_in.evaluate)
  yield stand_in
  stand_in.release_all()  # a failed test leaves no stage (nor the scheduler's pool) waiting


def _in_background(fn, *args, **kwargs) -> futures.Future:
  future = futures.Future()

  def target():
    try:
      future.set_result(fn(*args, **kwargs))
    except Exception as e:  # pylint: disable=broad-except
      future.set_exception(e)
  threading.Thread(target=target, daemon=True).start()
  return future


def test_upstream_stages_come_from_backbone_and_experts():
  assert pipeline.upstream_stages(MODULE, 'Backbone') == []
  assert pipeline.upstream_stages(MODULE, 'CodeExpert') == ['Backbone']
  assert pipeline.upstream_stages(MODULE, 'ComposeMathCode') == [
      'Backbone', 'MathExpert', 'CodeExpert']


# Training ComposeMathCode and LoraMathCode and evaluating ComposeMathCode and Backbone, `jobs` at
# a time: the stages running once the scheduler has started all it may, and the one the test
# then ends. A stage starts once its upstream runs ended; among ready stages training comes
# before evaluation, in the order upstream-first; never more than `jobs` at once.
SCHEDULES = {
    1: [({(T, 'Backbone')}, (T, 'Backbone')),
        ({(T, 'MathExpert')}, (T, 'MathExpert')),
        ({(T, 'CodeExpert')}, (T, 'CodeExpert')),
        ({(T, 'ComposeMathCode')}, (T, 'ComposeMathCode')),
        ({(T, 'LoraMathCode')}, (T, 'LoraMathCode')),
        ({(E, 'ComposeMathCode')}, (E, 'ComposeMathCode')),
        ({(E, 'Backbone')}, (E, 'Backbone'))],
    2: [({(T, 'Backbone')}, (T, 'Backbone')),
        ({(T, 'MathExpert'), (T, 'CodeExpert')}, (T, 'MathExpert')),
        ({(T, 'CodeExpert'), (T, 'LoraMathCode')}, (T, 'CodeExpert')),
        ({(T, 'LoraMathCode'), (T, 'ComposeMathCode')}, (T, 'LoraMathCode')),
        ({(T, 'ComposeMathCode'), (E, 'Backbone')}, (T, 'ComposeMathCode')),
        ({(E, 'Backbone'), (E, 'ComposeMathCode')}, (E, 'Backbone')),
        ({(E, 'ComposeMathCode')}, (E, 'ComposeMathCode'))],
    3: [({(T, 'Backbone')}, (T, 'Backbone')),
        ({(T, 'MathExpert'), (T, 'CodeExpert'), (T, 'LoraMathCode')}, (T, 'MathExpert')),
        ({(T, 'CodeExpert'), (T, 'LoraMathCode'), (E, 'Backbone')}, (T, 'CodeExpert')),
        ({(T, 'LoraMathCode'), (E, 'Backbone'), (T, 'ComposeMathCode')}, (T, 'ComposeMathCode')),
        ({(T, 'LoraMathCode'), (E, 'Backbone'), (E, 'ComposeMathCode')}, (E, 'Backbone')),
        ({(T, 'LoraMathCode'), (E, 'ComposeMathCode')}, (T, 'LoraMathCode')),
        ({(E, 'ComposeMathCode')}, (E, 'ComposeMathCode'))],
}


@pytest.mark.parametrize('jobs', sorted(SCHEDULES))
def test_stages_start_once_upstream_runs_end_at_most_jobs_at_a_time(stages, jobs):
  run = _in_background(pipeline.run_stages, MODULE, ['ComposeMathCode', 'LoraMathCode'],
                       ['ComposeMathCode', 'Backbone'], jobs=jobs)
  for running, release in SCHEDULES[jobs]:
    stages.wait_running(running)
    stages.release(release)
  assert run.result(TIMEOUT) == {'ComposeMathCode': {'math': 1.0}, 'Backbone': {'math': 1.0}}
  started = [(k, n) for what, k, n in stages.events if what == 'start']
  # Upstream runs are added by the scheduler; each stage runs exactly once.
  assert sorted(started) == sorted([
      (T, 'Backbone'), (T, 'MathExpert'), (T, 'CodeExpert'), (T, 'ComposeMathCode'),
      (T, 'LoraMathCode'), (E, 'ComposeMathCode'), (E, 'Backbone')])
  for kind, name in started:
    deps = ([(T, name)] if kind == E else
            [(T, up) for up in pipeline.upstream_stages(MODULE, name)])
    for dep in deps:
      assert stages.index('end', *dep) < stages.index('start', kind, name), (dep, name)


def test_a_failure_starts_nothing_new_and_is_raised_once_running_stages_end(stages):
  stages.fail = (T, 'MathExpert')
  run = _in_background(pipeline.run_stages, MODULE, ['ComposeMathCode', 'LoraMathCode'],
                       ['ComposeMathCode'], jobs=2)
  stages.wait_running({(T, 'Backbone')})
  stages.release((T, 'Backbone'))
  stages.wait_running({(T, 'MathExpert'), (T, 'CodeExpert')})
  stages.release((T, 'MathExpert'))  # fails; LoraMathCode is ready for the freed slot
  # The stage running beside the failed one is waited for: no result while it runs.
  with pytest.raises(futures.TimeoutError):
    run.result(timeout=1)
  stages.wait_running({(T, 'CodeExpert')})
  stages.release((T, 'CodeExpert'))
  with pytest.raises(RuntimeError, match='MathExpert broke'):
    run.result(TIMEOUT)
  started = {(k, n) for what, k, n in stages.events if what == 'start'}
  assert started == {(T, 'Backbone'), (T, 'MathExpert'), (T, 'CodeExpert')}
  assert ('end', T, 'CodeExpert') in stages.events


@pytest.mark.parametrize('jobs', [0, -3])
def test_jobs_below_one_is_refused_naming_the_flag(jobs):
  with pytest.raises(flags.ValidationError, match=rf'--jobs={jobs}: .* 1 or more'):
    pipeline.check_jobs(jobs)
  with pytest.raises(ValueError, match=f'jobs={jobs}'):
    pipeline.run_stages(MODULE, ['Backbone'], jobs=jobs)


def test_unknown_scale_is_refused_naming_the_choices():
  with pytest.raises(flags.ValidationError, match=r"--scale='nonsense'.*small"):
    pipeline.check_scale('nonsense')
  assert pipeline.check_scale('small')


def test_bad_flags_stop_the_main_job_before_any_work(tmp_path):
  """The real command line: an error naming the flag, and no data build, run or table."""
  env = {**os.environ, 'MODE_PAX_RUNS': str(tmp_path / 'runs'),
         'MODE_PAX_DATA_DIR': str(tmp_path / 'data')}
  for flag in ('--jobs=0', '--scale=nonsense'):
    proc = subprocess.run([sys.executable, '-m', 'mode_pax.pipeline', flag,
                           f'--out={tmp_path / "results"}'], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode != 0 and flag.split('=')[0] in proc.stderr, proc.stderr[-2000:]
    assert not list(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_progress_line_reads_step_loss_and_time_left_from_the_pax_log(tmp_path):
  log = tmp_path / 'train_log.txt'
  progress = pipeline.StageProgress(str(log), total_steps=150)
  assert progress.line(now=progress.start + 42).startswith('starting / compiling (42 s)')
  log.write_text('I1124 summary_utils.py:901] [PAX STATUS] step_i: 10, training loss: 7.25\n')
  assert progress.line(now=100.0) == 'step 10/150, loss 7.250'
  with open(log, 'a') as f:
    f.write('I1124 summary_utils.py:901] [PAX STATUS] step_i: 30, training loss: 6.5\n')
  # 20 steps in 40 s since the first step seen: 120 steps left take 240 s.
  assert progress.line(now=140.0) == 'step 30/150, loss 6.500, ~4.0 min left'
  # A status line followed by more than 64 KB of other lines (a large model's checkpoint and
  # summary lines), and a status line still being written, are read right.
  with open(log, 'a') as f:
    f.write('I1124 summary_utils.py:901] [PAX STATUS] step_i: 40, training loss: 6.25\n')
    f.write('I1124 checkpoint_manager.py:1004] Finished synchronous save.\n' * 5000)
    f.write('I1124 summary_utils.py:901] [PAX STATUS] step_i: 50, training loss: 6.')
  assert progress.line(now=160.0).startswith('step 40/150, loss 6.250')
  with open(log, 'a') as f:
    f.write('0\n')
  assert progress.line(now=180.0).startswith('step 50/150, loss 6.000')
