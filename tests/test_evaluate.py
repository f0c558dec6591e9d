"""`python -m mode_pax.evaluate`: bad input gets one clear message, before the work it wastes."""

import os
import subprocess
import sys

import numpy as np
import pytest

from mode_pax import checkpoints
from mode_pax import evaluate
from mode_pax import paths
from tests import run_env
from tests import tiny_experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = 'tests.tiny_experiments'
BACKBONE = f'{MODULE}.Backbone'
TEXT = 'def add(a, b):\n    return a + b\n\nIt is a truth universally acknowledged.\n' * 4


class WideBackbone(tiny_experiments.Backbone):  # pylint: disable=no-member
  """The tiny backbone with a wider FFN: the same variable names, other shapes."""
  HIDDEN_DIMS = 96


# ---- the text file: checked first, before the imports of JAX and Pax --------------------------
def _write(tmp_path, name, data: bytes):
  path = tmp_path / name
  path.write_bytes(data)
  return str(path)


@pytest.mark.parametrize('case,words', [
    ('missing', ['no such file', 'give the path of a UTF-8 text file']),
    ('folder', ['is a folder']),
    ('latin1', ['is not UTF-8 text', 'at byte 3', 'iconv']),
    ('empty', ['is empty', 'nothing to evaluate']),
])
def test_bad_text_files_are_named_with_the_fix(tmp_path, case, words):
  path = {'missing': str(tmp_path / 'notes.txt'), 'folder': str(tmp_path),
          'latin1': _write(tmp_path, 'latin1.txt', 'caf\xe9 na\xefve'.encode('latin-1')),
          'empty': _write(tmp_path, 'empty.txt', b'')}[case]
  with pytest.raises(evaluate.EvaluateError) as err:
    evaluate.read_text_file(path)
  assert f'--text_file={path}' in str(err.value)
  for w in words:
    assert w in str(err.value), str(err.value)


def test_unreadable_text_file(tmp_path, monkeypatch):
  path = _write(tmp_path, 'secret.txt', b'text')

  def no_permission(*args, **kwargs):
    raise PermissionError(13, 'Permission denied', path)

  # The tests may run as root, who reads any file: the OS's refusal is simulated.
  monkeypatch.setattr(evaluate, 'open', no_permission, raising=False)
  with pytest.raises(evaluate.EvaluateError, match='cannot be read .Permission denied.; check '
                     'its permissions'):
    evaluate.read_text_file(path)


def test_utf8_text_file_is_read_with_unix_newlines(tmp_path):
  path = _write(tmp_path, 'notes.txt', 'naïve\r\ncode\n'.encode())
  assert evaluate.read_text_file(path) == 'naïve\ncode\n'


def test_cli_reports_a_missing_file_before_importing_jax(tmp_path):
  """The command line, in a fresh process: the message, and no JAX or Pax imported for it."""
  missing = tmp_path / 'notes.txt'
  code = (
      'import atexit, runpy, sys\n'
      'atexit.register(lambda: print("imported:", [m for m in ("jax", "praxis", "paxml") '
      'if m in sys.modules], file=sys.stderr))\n'
      f'sys.argv = ["evaluate", "--exp={BACKBONE}", "--text_file={missing}"]\n'
      'runpy.run_module("mode_pax.evaluate", run_name="__main__")\n')
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, check=False)
  assert proc.returncode == 1, proc.stderr
  assert f'ERROR: --text_file={missing}: no such file' in proc.stderr, proc.stderr
  assert 'imported: []' in proc.stderr, proc.stderr
  assert 'Traceback' not in proc.stderr


# ---- the experiment and its run ----------------------------------------------------------------
def test_unknown_experiment_gets_the_registrys_message():
  with pytest.raises(evaluate.EvaluateError) as err:
    evaluate.evaluate_text('mode.small.NoSuchExperiment', TEXT)
  assert "No experiment 'mode.small.NoSuchExperiment'" in str(err.value)
  assert 'python -m mode' in str(err.value)


def test_no_checkpoint_says_where_it_looked_and_how_to_train(tmp_path, monkeypatch):
  monkeypatch.setenv('MODE_PAX_RUNS', str(tmp_path))
  # A Table 1 run (make main trains it) and a study variant (make main does not).
  for name, by_make_main in (('mode.small.ComposeMathCode', True),
                             ('mode.small.CodeExpertB6L2', False)):
    job_log_dir = os.path.join(tmp_path, name)
    with pytest.raises(evaluate.EvaluateError) as err:
      evaluate.evaluate_text(name, TEXT)
    message = str(err.value)
    assert f'No checkpoint of {name}: looked in {job_log_dir}/checkpoints (no such folder)' in (
        message)
    assert f'python -m paxml.main --exp={name} --job_log_dir={job_log_dir}' in message
    assert ('make main' in message) == by_make_main, message
  # A folder given with --job_log_dir that exists but holds no checkpoint yet.
  empty = tmp_path / 'empty_run'
  (empty / 'checkpoints').mkdir(parents=True)
  with pytest.raises(evaluate.EvaluateError, match='no checkpoint_XXXXXXXX folder there'):
    evaluate.evaluate_text(BACKBONE, TEXT, job_log_dir=str(empty))


@pytest.fixture(scope='module')
def backbone_run(tiny_table1_runs):
  """The fixture data and a run of the tiny Backbone trained by paxml.main (a real checkpoint;
  the one test_experiments reads: conftest trains it once)."""
  data_dir, runs_dir = tiny_table1_runs
  with run_env.pointed_at(data_dir, runs_dir):
    yield paths.run_dir(BACKBONE)


def test_the_runs_own_experiment_scores_it(backbone_run):
  accuracy, num_tokens = evaluate.evaluate_text(BACKBONE, TEXT, job_log_dir=backbone_run,
                                                batch_size=4)
  assert 0.0 < accuracy < 1.0 and num_tokens > 10


@pytest.mark.parametrize('exp,words', [
    # LoRA's model adds lora_a / lora_b to the backbone's variables.
    (f'{MODULE}.LoraMathCode', ['variable(s) of the model are not in it',
                                'params/lm/transformer/x_layers_0/self_attention/',
                                'lora_a']),
    # MoDE's blocks name the backbone's layers differently.
    (f'{MODULE}.CodeExpert', ['variable(s) of the model are not in it (params/lm/transformer/'
                              'blocks_0/', 'of its variables are not in the model (params/lm/'
                              'transformer/x_layers_0/']),
    # Another width: the same names, other shapes.
    ('tests.test_evaluate.WideBackbone', ['differ in shape', 'model (', 'checkpoint (']),
])
def test_another_experiments_checkpoint_is_refused_before_reading_it(backbone_run, monkeypatch,
                                                                     exp, words):
  monkeypatch.setattr(checkpoints, 'read_variables',
                      lambda *a, **k: pytest.fail('read the variables of a wrong checkpoint'))
  with pytest.raises(evaluate.EvaluateError) as err:
    evaluate.evaluate_text(exp, TEXT, job_log_dir=backbone_run)
  message = str(err.value)
  step_dir = os.path.join(backbone_run, 'checkpoints', 'checkpoint_00000004')
  assert message.startswith(f'--exp={exp} does not fit the checkpoint {step_dir}: '), message
  for w in words:
    assert w in message, message
  # The run folder's marker names the experiment that trained it.
  assert f'trained with --exp={BACKBONE}' in message
  assert f'evaluate it with --exp={BACKBONE}' in message


@pytest.mark.parametrize('marker,fix', [
    (None, 'Give the --exp the run was trained with'),
    ('tests.test_evaluate.WideBackbone', 'whose model has changed since: train it again'),
])
def test_mismatch_fix_follows_the_runs_marker(backbone_run, tmp_path, marker, fix):
  """A folder without marker, or one whose marker names the --exp given (a changed config)."""
  os.symlink(os.path.join(backbone_run, 'checkpoints'), tmp_path / 'checkpoints')
  if marker:
    (tmp_path / 'mode_experiment.txt').write_text(marker + '\n')
  with pytest.raises(evaluate.EvaluateError, match='differ in shape') as err:
    evaluate.evaluate_text('tests.test_evaluate.WideBackbone', TEXT, job_log_dir=str(tmp_path))
  assert fix in str(err.value), str(err.value)
  assert 'evaluate it with' not in str(err.value)


# ---- the evaluation examples of --split ---------------------------------------------------------
def test_split_examples_hold_every_token_of_the_split_in_file_order(backbone_run):
  """Rows per example, EOS of each row dropped, are the split's texts encoded one by one
  (tfds.load and the vocabulary, not the seqio task)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from mode_pax.data import mode_corpus, tasks  # pylint: disable=g-import-not-at-top
  del backbone_run
  data_dir = tasks.resolve_data_dir()
  vocab = tasks.vocabulary(data_dir)
  seq_len = 16  # short rows: most examples are cut into several
  examples = evaluate.split_examples(tasks.CODE, 'test', seq_len, data_dir)
  texts = [ex['text'].decode() for ex in tfds.load(mode_corpus.tfds_name('code'), split='test',
                                                   data_dir=data_dir).as_numpy_iterator()]
  assert len(examples) == len(texts) > 1
  assert any(len(rows) > 1 for rows in examples)
  for rows, text in zip(examples, texts):
    assert all(len(r) <= seq_len and r[-1] == 1 for r in rows)  # cut to length, EOS-terminated
    assert [t for r in rows for t in r[:-1]] == vocab.encode(text)


def test_sample_covers_the_token_fraction_with_the_fewest_examples_of_its_order():
  rng = np.random.default_rng(5)
  num_tokens = rng.integers(1, 200, size=300)
  chosen = evaluate.sample_examples(num_tokens, 0.5, seed=3)
  assert np.all(np.diff(chosen) > 0)
  assert num_tokens[chosen].sum() >= 0.5 * num_tokens.sum()
  # Minimal in its pseudo-random order: without the last example drawn it falls short.
  order = np.random.default_rng(3).permutation(len(num_tokens))
  assert sorted(order[:len(chosen)]) == list(chosen)
  assert num_tokens[order[:len(chosen) - 1]].sum() < 0.5 * num_tokens.sum()
  np.testing.assert_array_equal(evaluate.sample_examples(num_tokens, 0.5, seed=3), chosen)
  assert not np.array_equal(evaluate.sample_examples(num_tokens, 0.5, seed=4), chosen)
  np.testing.assert_array_equal(evaluate.sample_examples(num_tokens, 1.0, seed=3),
                                np.arange(300))
  with pytest.raises(ValueError, match=r'EVAL_TOKEN_FRACTION=0.0: .*\(0, 1\]'):
    evaluate.sample_examples(num_tokens, 0.0, seed=3)
