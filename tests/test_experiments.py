"""The paper's procedure through `python -m paxml.main`, at tiny size on the fixture corpus."""

import collections
import csv
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from praxis import base_layer
from praxis import pax_fiddle
import pytest

from mode import recipes
from mode_pax import checkpoints
from mode_pax import convert
from mode_pax import evaluate
from mode_pax import lm_batch
from mode_pax import naming
from mode_pax import ngram
from mode_pax import paths
from mode_pax import pipeline
from mode_pax import registry
from mode_pax import results
from mode_pax import trees
from mode_pax.data import tasks
from mode_pax.layers import mode as mode_layers
from tests import run_env
from tests import tiny_experiments

MODULE = 'tests.tiny_experiments'


@pytest.fixture(scope='module')
def runs(tiny_table1_runs):
  """The fixture data and the Table 1 stages trained once (conftest), as the runs folder."""
  data_dir, runs_dir = tiny_table1_runs
  with run_env.pointed_at(data_dir, runs_dir):
    yield runs_dir


def _dir(name):
  return paths.run_dir(f'{MODULE}.{name}')


def _vars(name):
  return checkpoints.read_variables(paths.checkpoint_dir(_dir(name)))


def _matching(variables, regex):
  return {k: v for k, v in variables.items() if re.fullmatch(regex, k)}


def test_every_stage_trained_to_its_last_step(runs):
  del runs
  for name in ('Backbone', 'CodeExpert', 'ComposeMathCode', 'LoraMathCode'):
    assert paths.latest_checkpoint_step(paths.checkpoint_dir(_dir(name))) == 4


def test_backbone_is_bit_identical_after_expert_training(runs):
  del runs
  backbone = _vars('Backbone')
  expert = _vars('CodeExpert')
  per_block = 1  # 2 layers in 2 blocks
  compared = 0
  for path, value in expert.items():
    m = re.fullmatch(r'params/lm/transformer/blocks_(\d+)/backbone/x_layers_(\d+)/(.*)', path)
    if m:
      layer = int(m.group(1)) * per_block + int(m.group(2))
      source = f'params/lm/transformer/x_layers_{layer}/{m.group(3)}'
    elif re.fullmatch(naming.BACKBONE_OUTSIDE_LAYERS, path):
      source = path
    else:
      continue
    np.testing.assert_array_equal(value, backbone[source], err_msg=path)
    compared += 1
  assert compared == len(backbone)


def test_expert_training_moves_the_expert_and_gates_and_nothing_else(runs):
  """Between the run's first checkpoint (step 0: after the warm start, before any update) and
  its last, every expert and gate variable changed and every backbone variable did not."""
  del runs
  ckpt_dir = paths.checkpoint_dir(_dir('CodeExpert'))
  start, end = checkpoints.read_variables(ckpt_dir, 0), checkpoints.read_variables(ckpt_dir, 4)
  assert start.keys() == end.keys()
  trained = {**_matching(start, naming.experts(0)), **_matching(start, naming.GATES)}
  assert trained and len(trained) < len(start)
  for path, value in start.items():
    moved = not np.array_equal(value, end[path])
    assert moved == (path in trained), path


def test_composition_provenance_names_each_upstream_run(runs):
  del runs
  provenance = checkpoints.read_provenance(_dir('ComposeMathCode'))
  origin = lambda regex: {v.rsplit(':', 1)[0].split('/checkpoints')[0]
                          for k, v in provenance.items() if re.fullmatch(regex, k)}
  assert origin(naming.BACKBONE_LAYERS) == {_dir('Backbone')}
  assert origin(naming.BACKBONE_OUTSIDE_LAYERS) == {_dir('Backbone')}
  assert origin(naming.experts(0)) == {_dir('MathExpert')}
  assert origin(naming.experts(1)) == {_dir('CodeExpert')}
  assert origin(naming.GATES) == {'random_init'}


def _gate_weights(variables, block, num_outputs, x, p=None):
  """Block `block`'s MoDEGate weights for inputs x, from its variables (an independent layer)."""
  gate = base_layer.instantiate(pax_fiddle.Config(
      mode_layers.MoDEGate, name='gate', input_dims=x.shape[-1], num_outputs=num_outputs,
      initial_backbone_weight=p))
  prefix = f'params/lm/transformer/blocks_{block}/gate/'
  params = trees.unflatten({k[len(prefix):]: v for k, v in variables.items()
                            if k.startswith(prefix)})
  return np.asarray(gate.apply({'params': params}, x))


def test_composition_gates_start_where_the_experts_gates_ended(runs):
  """GATES_FROM_EXPERTS: at step 0 each expert's weight relative to the backbone's is what its
  single-domain run's trained gate gives, for any token (softmax: w_e / w_b = exp(l_e - l_b))."""
  del runs
  name = 'ComposeMathCodeGatesOfExperts'
  start = checkpoints.read_variables(paths.checkpoint_dir(_dir(name)), 0)
  provenance = checkpoints.read_provenance(_dir(name))
  assert {v.rsplit(':', 1)[0] for k, v in provenance.items()
          if re.fullmatch(naming.GATES, k)} == {os.path.join(_dir(name), 'expert_gates')}
  x = np.random.RandomState(0).normal(size=(5, 32)).astype(np.float32)
  for block in range(2):
    composed = _gate_weights(start, block, 3, x)
    for j, source in enumerate(('MathExpert', 'CodeExpert')):
      single = _gate_weights(_vars(source), block, 2, x)
      np.testing.assert_allclose(composed[:, j + 1] / composed[:, 0], single[:, 1] / single[:, 0],
                                 rtol=1e-5)
    # Not the random start of the paper-literal composition: the rule did load them.
    random_start = checkpoints.read_variables(paths.checkpoint_dir(_dir('ComposeMathCode')), 0)
    assert not np.allclose(_gate_weights(random_start, block, 3, x), composed)


def test_expert_gates_refuse_a_run_that_is_not_a_composition(runs):
  del runs
  with pytest.raises(ValueError, match=r'GATES_FROM_EXPERTS composes .* 0 EXPERTS for '
                     r'NUM_DOMAIN_EXPERTS=1'):
    convert.expert_gates(experiment=registry.lookup(f'{MODULE}.MathExpert')(),
                         out='/nonexistent/never-written')


def test_frozen_experts_stay_their_single_domain_selves(runs):
  del runs
  frozen = _vars('FrozenExpertsMathCode')
  for j, source in enumerate(('MathExpert', 'CodeExpert')):
    trained = _vars(source)
    experts = _matching(frozen, naming.experts(j))
    assert experts
    for path, value in experts.items():
      np.testing.assert_array_equal(value, trained[path.replace(f'experts_{j}', 'experts_0')])
  # The gates, the only trainable part, moved away from their values at step 0.
  start = checkpoints.read_variables(paths.checkpoint_dir(_dir('FrozenExpertsMathCode')), 0)
  gates = _matching(frozen, naming.GATES)
  assert gates and all(not np.array_equal(v, start[k]) for k, v in gates.items())


def test_lora_run_changes_only_lora_variables(runs):
  del runs
  backbone = _vars('Backbone')
  lora_vars = _vars('LoraMathCode')
  lora_only = [k for k in lora_vars if '/lora_' in k]
  assert lora_only and any(np.any(lora_vars[k] != 0) for k in lora_only if k.endswith('lora_b'))
  for path, value in lora_vars.items():
    if '/lora_' not in path:
      np.testing.assert_array_equal(value, backbone[path], err_msg=path)


def test_a_killed_run_resumes_to_the_same_variables_as_an_uninterrupted_one(runs, tmp_path):
  """kill -9 of a real paxml.main after its step-2 checkpoint, then the same command again:
  Pax restores the model, optimizer and input position, and the run ends bit-identical to
  one that was never interrupted (the fixture's MathExpert: the same config and seeds)."""
  del runs
  name = f'{MODULE}.ResumableMathExpert'
  killed = str(tmp_path / 'killed')
  os.makedirs(killed)
  log_path = os.path.join(killed, 'train_log.txt')
  with open(log_path, 'w') as log:
    proc = subprocess.Popen(
        [sys.executable, '-m', 'paxml.main', f'--exp={name}', f'--job_log_dir={killed}'],
        stdout=log, stderr=subprocess.STDOUT, cwd=paths.REPO_ROOT,
        env={**os.environ, tiny_experiments.PAUSE_ENV: '3'})
  ckpt_dir = paths.checkpoint_dir(killed)
  deadline = time.time() + 600
  # Steps 1-3 ran and the input blocks on the 4th batch: step 2's checkpoint is written.
  while not ('paused after 3 batches' in open(log_path).read()
             and paths.latest_checkpoint_step(ckpt_dir) == 2):
    assert proc.poll() is None, open(log_path).read()[-3000:]
    assert time.time() < deadline, 'the run never reached its pause'
    time.sleep(0.5)
  time.sleep(2)  # let an asynchronous checkpoint of step 2 finish; step 4 cannot come
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert paths.latest_checkpoint_step(ckpt_dir) == 2
  pipeline.run_paxml(name, killed, 'train', 'train_log.txt')
  resumed_log = open(log_path).read().split('paused after 3 batches')[-1]
  assert re.search(r'[Rr]estor.*checkpoint_00000002|step 2', resumed_log)
  final, reference = checkpoints.read_variables(ckpt_dir), _vars('MathExpert')
  assert paths.latest_checkpoint_step(ckpt_dir) == 4 and final.keys() == reference.keys()
  for path, value in reference.items():
    np.testing.assert_array_equal(final[path], value, err_msg=path)


def test_evaluation_reports_next_token_accuracy_per_domain(runs, monkeypatch):
  del runs
  metrics = pipeline.evaluate_stage(MODULE, 'ComposeMathCode')
  assert set(metrics) == {'math', 'code', 'english', 'average'}
  assert all(0.0 < v < 100.0 for v in metrics.values())
  assert metrics['average'] == pytest.approx(
      (metrics['math'] + metrics['code'] + metrics['english']) / 3)
  # The per-example pass scores what Pax's own evaluation loop scores (the whole test splits).
  job_log_dir = _dir('ComposeMathCode')
  pipeline.run_paxml(f'{MODULE}.ComposeMathCode', job_log_dir, 'eval', 'pax_eval_log.txt',
                     env={'MODE_PAX_EVAL_SPLIT': 'test'})
  for key in ('math', 'code', 'english'):
    _, pax_accuracy = results.read_eval_accuracy(job_log_dir, key)
    assert metrics[key] == pytest.approx(100.0 * pax_accuracy, abs=1e-4), key
  # Per example: tokens and right predictions add up to the accuracy; gate weights sum to 1.
  experiment_cls = registry.lookup(f'{MODULE}.ComposeMathCode')
  record = results.load_record(job_log_dir, experiment_cls)
  scores = evaluate.load_scores(os.path.join(job_log_dir, results.scores_file('test')))
  code = scores[tasks.CODE]
  assert len(code.tokens) == record['examples']['code'] > 1
  assert 100.0 * code.correct.sum() / code.tokens.sum() == pytest.approx(metrics['code'])
  assert np.all(code.correct <= code.tokens)
  routing = np.array(record['routing']['code'])  # [blocks, backbone + 2 experts]
  assert routing.shape == (experiment_cls.NUM_BLOCKS, 3)
  np.testing.assert_allclose(routing.sum(axis=-1), 1.0, atol=1e-5)
  # Cached for the same checkpoint and evaluation: no second eval run.
  monkeypatch.setattr(subprocess, 'run', None)  # a second evaluation would fail here
  assert pipeline.evaluate_stage(MODULE, 'ComposeMathCode') == metrics
  monkeypatch.undo()
  # A changed evaluation setting (or data build) does not reuse the cache.
  assert results.load_test_metrics(job_log_dir, experiment_cls) == metrics
  monkeypatch.setattr(experiment_cls, 'EVAL_TOKEN_FRACTION', 0.5)
  assert results.load_test_metrics(job_log_dir, experiment_cls) is None
  monkeypatch.undo()
  monkeypatch.setattr(experiment_cls, 'EVAL_SAMPLE_SEED', 1)
  assert results.load_test_metrics(job_log_dir, experiment_cls) is None
  monkeypatch.undo()
  monkeypatch.setattr(results, 'EVALUATION_VERSION', results.EVALUATION_VERSION + 1)
  assert results.load_test_metrics(job_log_dir, experiment_cls) is None
  monkeypatch.undo()
  monkeypatch.setattr(tasks, 'build_info', lambda *a: {'fingerprint': 'another build'})
  assert results.load_test_metrics(job_log_dir, experiment_cls) is None


def test_table1_gives_intervals_tokens_reference_rows_and_routing(runs, tmp_path):
  del runs
  names = ['Backbone', 'LoraMathCode', 'ComposeMathCode', 'MathExpert']
  for name in names:
    pipeline.evaluate_stage(MODULE, name)
  rows = [results.Row(method=registry.lookup(f'{MODULE}.{n}').LABEL or n,
                      experiment=f'{MODULE}.{n}',
                      metrics=pipeline.evaluate_stage(MODULE, n)) for n in names[:3]]
  backbone_cls = registry.lookup(f'{MODULE}.Backbone')
  references = results.reference_rows(backbone_cls, str(tmp_path / 'ngram'), orders=(1, 2))
  assert [r.method for r in references] == ['Unigram count model', 'Bigram count model']
  md = results.write_table1(rows, str(tmp_path), scale='tiny', references=references)
  with open(tmp_path / 'table1_tiny.csv') as f:
    table = list(csv.DictReader(f))
  assert [r['method'] for r in table] == [r.method for r in rows + references]
  record = results.load_record(_dir('Backbone'), backbone_cls)
  for r in table:
    for key in ('math', 'code', 'english', 'average'):
      low, value, high = (float(r[f'{key}{s}']) for s in ('_low', '', '_high'))
      assert low < value < high, (r['method'], key)
    for key in ('math', 'code', 'english'):  # every row scored on the same tokens
      assert int(r[f'{key}_tokens']) == record['tokens'][key] > 0
  # The reference rows are the count models' accuracies on those tokens.
  unigram = ngram.NgramModel.fit(
      [row for t in (recipes.Backbone.TRAIN_DATA, tasks.MATH, tasks.CODE)
       for row in evaluate.task_rows(t, 'train', backbone_cls.SEQUENCE_LENGTH,
                                     tasks.resolve_data_dir())], 1, backbone_cls.VOCAB_SIZE)
  code_rows = evaluate.task_rows(tasks.CODE, 'test', backbone_cls.SEQUENCE_LENGTH,
                                 tasks.resolve_data_dir())
  assert float(table[-2]['code']) == pytest.approx(
      100 * ngram.accuracy(unigram, code_rows)[0], abs=1e-4)
  text = open(md).read()
  assert 'vs. LoRA' in text and 'Scored: Math' in text and '95% bootstrap interval' in text
  # Routing: one line per MoDE run, block and domain; each block's weights sum to 1.
  routing_md = results.write_routing([f'{MODULE}.ComposeMathCode', f'{MODULE}.MathExpert'],
                                     str(tmp_path), scale='tiny')
  assert os.path.getsize(tmp_path / 'routing_tiny.png') > 10_000
  with open(tmp_path / 'routing_tiny.csv') as f:
    weights = list(csv.DictReader(f))
  sums = collections.defaultdict(float)
  for w in weights:
    sums[(w['run'], w['block'], w['domain'])] += float(w['mean_gate_weight'])
  assert len(sums) == 2 * 2 * 3  # runs x blocks x domains
  np.testing.assert_allclose(list(sums.values()), 1.0, atol=1e-5)
  assert {w['branch'] for w in weights if w['run'].endswith('ComposeMathCode')} == {
      'backbone', 'MathExpert', 'CodeExpert'}
  assert 'ComposeMathCode | 1 | English' in open(routing_md).read()


def test_count_models_learn_from_the_backbones_own_data_and_recount_when_it_changes(runs,
                                                                                   tmp_path):
  """The reference rows' training data is the scale's Backbone's (a stage override of TRAIN_DATA
  counts), and their cache is keyed by it: the same folder with other data counts again."""
  del runs
  backbone = registry.lookup(f'{MODULE}.Backbone')
  english_only = type('Backbone', (backbone,), dict(TRAIN_DATA=tasks.ENGLISH,
                                                    __module__=backbone.__module__))
  assert ngram.training_tasks(backbone) == [tasks.ENGLISH_PRETRAIN, tasks.MATH, tasks.CODE]
  assert ngram.training_tasks(english_only) == [tasks.ENGLISH, tasks.MATH, tasks.CODE]
  assert ngram.training_tasks(registry.lookup(f'{MODULE}.CodeExpert')) == [
      tasks.ENGLISH_PRETRAIN, tasks.MATH, tasks.CODE]
  folder = str(tmp_path / 'ngram_references')
  with_sotu = results.reference_rows(backbone, folder, orders=(2,))[0].metrics['english']
  without = results.reference_rows(english_only, folder, orders=(2,))[0].metrics['english']
  # Reference: a bigram model counted here on the English-only data.
  data_dir = tasks.resolve_data_dir()
  seq_len = backbone.SEQUENCE_LENGTH
  bigram = ngram.NgramModel.fit(
      [row for t in (tasks.ENGLISH, tasks.MATH, tasks.CODE)
       for row in evaluate.task_rows(t, 'train', seq_len, data_dir)], 2, backbone.VOCAB_SIZE)
  rows = [r for ex in evaluate.eval_examples(english_only(), tasks.ENGLISH, 'test')[1] for r in ex]
  assert without == pytest.approx(100 * ngram.accuracy(bigram, rows)[0], abs=1e-4)
  assert without != pytest.approx(with_sotu, abs=1e-4)


def test_missing_upstream_runs_are_all_named_and_no_folder_is_claimed(runs, tmp_path,
                                                                      monkeypatch):
  del runs
  monkeypatch.setenv('MODE_PAX_RUNS', str(tmp_path))
  with pytest.raises(FileNotFoundError) as error:
    registry.lookup(f'{MODULE}.ComposeMathCode')().validate()
  for stage in ('Backbone', 'MathExpert', 'CodeExpert'):
    assert re.search(rf'{MODULE}\.{stage}: no checkpoint in .*run it first: python -m '
                     rf'paxml\.main --exp={MODULE}\.{stage} ', str(error.value)), str(error.value)
  # Through paxml.main: refused before the job_log_dir is claimed, so it stays usable.
  job_log_dir = tmp_path / 'mine'
  with pytest.raises(RuntimeError, match=rf'{MODULE}\.Backbone: no checkpoint'):
    pipeline.run_paxml(f'{MODULE}.CodeExpert', str(job_log_dir), 'train', 'train_log.txt')
  assert not (job_log_dir / 'mode_experiment.txt').exists()


def test_job_log_dir_of_another_experiment_is_refused(runs):
  del runs
  with pytest.raises(RuntimeError, match='holds a run of tests.tiny_experiments.CodeExpert'):
    pipeline.run_paxml(f'{MODULE}.MathExpert', _dir('CodeExpert'), 'train', 'refused_log.txt')


def test_accuracy_on_a_users_own_text_file(runs):
  del runs
  from mode_pax import evaluate  # pylint: disable=g-import-not-at-top
  text = 'def add(a, b):\n    return a + b\n\nIt is a truth universally acknowledged.\n' * 20
  accuracy, num_tokens = evaluate.evaluate_text(f'{MODULE}.ComposeMathCode', text, batch_size=4)
  assert 0.0 < accuracy < 1.0
  token_ids = tasks.vocabulary().encode(text)
  assert num_tokens == len(token_ids) + 1  # every token and the EOS
  # The named run's checkpoint is what is scored: against argmax of the model's own logits,
  # for two runs whose weights differ.
  reference = {}
  for name in ('ComposeMathCode', 'Backbone'):
    reference[name] = _argmax_accuracy(name, token_ids)
    if name != 'ComposeMathCode':
      assert evaluate.evaluate_text(f'{MODULE}.{name}', text, batch_size=4)[0] == pytest.approx(
          reference[name], abs=1e-6)
  assert accuracy == pytest.approx(reference['ComposeMathCode'], abs=1e-6)
  assert reference['ComposeMathCode'] != reference['Backbone']


def _argmax_accuracy(name, token_ids):
  """Next-token accuracy from the logits of Pax's model of a run (not Pax's accuracy metric)."""
  exp = registry.lookup(f'{MODULE}.{name}')()
  model = base_layer.instantiate(exp.task().model)
  variables = trees.unflatten(_vars(name))
  stream = list(token_ids) + [1]  # EOS
  correct = total = 0
  length = exp.SEQUENCE_LENGTH
  for start in range(0, len(stream), length):
    labels = np.array(stream[start:start + length], np.int32)[None]
    ids = np.concatenate([[[0]], labels[:, :-1]], axis=1)  # BOS 0, then the previous tokens
    batch = lm_batch.lm_batch(ids, labels)
    predictions = model.apply(variables, batch, method=model.compute_predictions,
                              rngs={base_layer.RANDOM: jax.random.PRNGKey(0)})
    correct += int((np.argmax(predictions.logits, -1) == labels).sum())
    total += labels.size
  return correct / total


def test_figure3_examples_counts_each_runs_training_examples(runs):
  """Figure 3 (right)'s x: 10 examples for the N10 runs, the whole Code train split otherwise
  (of the fixture's data build)."""
  del runs
  from mode_pax import studies  # pylint: disable=g-import-not-at-top
  assert studies.study_runs('figure3_examples', MODULE) == [
      'CodeExpert', 'CodeExpertN10', 'LoraCode', 'LoraCodeN10']
  from mode import studies as specs  # pylint: disable=g-import-not-at-top
  study = specs.BY_NAME['figure3_examples']
  whole = tasks.num_train_examples(tasks.CODE)
  assert whole > 10
  for name, x in (('CodeExpertN10', 10), ('LoraCodeN10', 10), ('CodeExpert', whole),
                  ('LoraCode', whole)):
    exp = registry.lookup(f'{MODULE}.{name}')
    assert study.x(exp, None) == x, name


def test_a_study_trains_evaluates_and_writes_table_and_figure(runs, tmp_path):
  """backbone_steps: the fixture's Backbone (4 steps) is reused, BackboneSteps2 trains; both are
  scored on the validation splits and tabled by their steps."""
  del runs
  from mode_pax import studies  # pylint: disable=g-import-not-at-top
  assert studies.study_runs('backbone_steps', MODULE) == ['Backbone', 'BackboneSteps2']
  assert not os.path.exists(_dir('BackboneSteps2'))
  out = studies.run_study('backbone_steps', 'tiny', str(tmp_path), module=MODULE, jobs=2)
  assert paths.latest_checkpoint_step(paths.checkpoint_dir(_dir('BackboneSteps2'))) == 2
  table = open(out).read()
  for name, steps in (('Backbone', 4), ('BackboneSteps2', 2)):
    assert re.search(rf'\| {name} \| {steps} \|', table), (name, table)
  rows = list(csv.DictReader(open(str(tmp_path / 'backbone_steps_tiny.csv'))))
  assert [r['experiment'] for r in rows] == ['BackboneSteps2', 'Backbone']
  # Two runs, two trainings: different validation accuracies.
  assert rows[0]['english'] != rows[1]['english'], rows
  assert os.path.getsize(str(tmp_path / 'backbone_steps_tiny.png')) > 1000
