"""The stage scheduler of the main job and the studies (mode_pax.pipeline.run_stages).

Stages are replaced by recording functions here: what is checked is the order the scheduler
starts them in, not training (tests/test_experiments.py trains through it for real).
"""

import threading
import time

import pytest

from mode_pax import pipeline

MODULE = 'tests.tiny_experiments'


class Recorder:
  """Stands in for train_stage / evaluate_stage: logs start and end, can fail on one stage."""

  def __init__(self, fail=None, seconds=0.05):
    self.events, self.fail, self.seconds = [], fail, seconds
    self._lock = threading.Lock()
    self.running = self.most_running = 0

  def _run(self, kind, name):
    with self._lock:
      self.events.append(('start', kind, name))
      self.running += 1
      self.most_running = max(self.most_running, self.running)
    time.sleep(self.seconds)
    with self._lock:
      self.running -= 1
      self.events.append(('end', kind, name))
    if (kind, name) == self.fail:
      raise RuntimeError(f'{kind} {name} broke')
    return {'math': 1.0} if kind == 'eval' else None

  def train(self, module, name):
    assert module == MODULE
    return self._run('train', name)

  def evaluate(self, module, name):
    return self._run('eval', name)

  def index(self, what, kind, name):
    return self.events.index((what, kind, name))


@pytest.fixture
def recorder(monkeypatch):
  rec = Recorder()
  monkeypatch.setattr(pipeline, 'train_stage', rec.train)
  monkeypatch.setattr(pipeline, 'evaluate_stage', rec.evaluate)
  return rec


def test_upstream_stages_come_from_backbone_and_experts():
  assert pipeline.upstream_stages(MODULE, 'Backbone') == []
  assert pipeline.upstream_stages(MODULE, 'CodeExpert') == ['Backbone']
  assert pipeline.upstream_stages(MODULE, 'ComposeMathCode') == [
      'Backbone', 'MathExpert', 'CodeExpert']


@pytest.mark.parametrize('jobs', [1, 2, 3])
def test_every_stage_starts_after_its_upstream_runs_end(recorder, jobs):
  metrics = pipeline.run_stages(MODULE, ['ComposeMathCode', 'LoraMathCode'],
                                ['ComposeMathCode', 'Backbone'], jobs=jobs)
  assert metrics == {'ComposeMathCode': {'math': 1.0}, 'Backbone': {'math': 1.0}}
  started = [(k, n) for what, k, n in recorder.events if what == 'start']
  # Upstream runs are added by the scheduler; each stage runs exactly once.
  assert sorted(started) == sorted([
      ('train', 'Backbone'), ('train', 'MathExpert'), ('train', 'CodeExpert'),
      ('train', 'ComposeMathCode'), ('train', 'LoraMathCode'),
      ('eval', 'ComposeMathCode'), ('eval', 'Backbone')])
  for kind, name in started:
    deps = ([('train', name)] if kind == 'eval' else
            [('train', up) for up in pipeline.upstream_stages(MODULE, name)])
    for dep in deps:
      assert recorder.index('end', *dep) < recorder.index('start', kind, name), (dep, name)
  assert recorder.most_running == min(jobs, 3)  # after Backbone: 2 experts + LoRA are ready


def test_a_failure_starts_nothing_downstream_and_is_raised(recorder):
  recorder.fail = ('train', 'MathExpert')
  with pytest.raises(RuntimeError, match='MathExpert broke'):
    pipeline.run_stages(MODULE, ['ComposeMathCode'], ['ComposeMathCode'], jobs=2)
  started = {n for what, _, n in recorder.events if what == 'start'}
  assert 'ComposeMathCode' not in started
  # The stage running beside the failed one was allowed to finish.
  assert ('end', 'train', 'CodeExpert') in recorder.events
