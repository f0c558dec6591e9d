"""Tests for mode_pax.data on the fixture corpus (tests/fixtures/data); no registry access."""

import collections
import hashlib
import io
import json
import os
import pathlib
import shutil
import tarfile

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf
from praxis import base_hyperparams

from mode_pax.data import build as build_lib
from mode_pax.data import errors
from mode_pax.data import inputs
from mode_pax.data import sources
from mode_pax.data import tasks

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'data'
SEQ_LEN = 64


def _config(data_dir, **overrides):
  kwargs = dict(data_dir=str(data_dir), manifest=str(FIXTURES / 'sources.json'),
                vocab_size=600, spm_hard_vocab_limit=False, example_length=SEQ_LEN,
                code_sizes=(10, 30), mixture_sizes=(20, 40))
  kwargs.update(overrides)
  return build_lib.BuildConfig(**kwargs)


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('build_a')
  info = build_lib.build(_config(data_dir))
  return str(data_dir), info


def _records(path):
  out = []
  for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
    ex = tf.train.Example.FromString(raw).features.feature
    out.append({'text': ex['text'].bytes_list.value[0].decode(),
                'doc_id': ex['doc_id'].bytes_list.value[0].decode(),
                'num_tokens': ex['num_tokens'].int64_list.value[0]})
  return out


def _all_files(root):
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(pathlib.Path(root).rglob('*'))
          if p.is_file()}


def test_splits_are_disjoint_by_content_and_unit(built):
  data_dir, info = built
  hashes, train_units = {}, {}
  for split in build_lib.SPLITS:
    hashes[split] = collections.Counter()
    for dataset in build_lib.DATASETS:
      records = _records(os.path.join(data_dir, dataset, f'{split}.tfrecord'))
      assert records, (dataset, split)
      assert len(records) == info['datasets'][dataset]['stats'][split]['examples']
      hashes[split].update(hashlib.sha256(r['text'].encode()).hexdigest() for r in records)
      # Split units: a work or address (the doc id), a code package folder, a math template.
      units = {r['doc_id'] if dataset in ('english', 'sotu') else r['doc_id'].rsplit('/', 1)[0]
               for r in records}
      if dataset == 'english' and split != 'train':
        assert units == set(info['english_holdout'][split])
      if split == 'train':
        train_units[dataset] = units
      else:
        assert not units & train_units[dataset], (dataset, split)
  for split, counter in hashes.items():
    assert max(counter.values()) == 1, f'duplicate examples within {split}'
  assert not set(hashes['train']) & set(hashes['validation'])
  assert not set(hashes['train']) & set(hashes['test'])
  assert not set(hashes['validation']) & set(hashes['test'])


def test_examples_fit_and_tests_excluded(built):
  data_dir, info = built
  for dataset in build_lib.DATASETS:
    for r in _records(os.path.join(data_dir, dataset, 'train.tfrecord')):
      assert 0 < r['num_tokens'] <= SEQ_LEN - 1
      assert '/tests/' not in r['doc_id'] and not r['doc_id'].endswith('_gut_f')
  # Size variants are prefixes of the shuffled training split.
  train = _records(os.path.join(data_dir, 'code', 'train.tfrecord'))
  assert _records(os.path.join(data_dir, 'code', 'train_n10.tfrecord')) == train[:10]
  k = info['mixture_balanced_per_domain']
  assert k == min(info['datasets'][d]['stats']['train']['examples'] for d in ('code', 'math'))


def test_two_builds_are_byte_identical(built, tmp_path):
  data_dir, _ = built
  build_lib.build(_config(tmp_path))
  first, second = _all_files(data_dir), _all_files(tmp_path)
  assert sorted(first) == sorted(second)
  for name in first:
    assert first[name] == second[name], name


def test_interrupted_build_looks_incomplete_and_rerun_skips_finished_parts(
    built, tmp_path, monkeypatch):
  real_write = build_lib._write_tfrecord

  def failing_write(path, examples):
    if os.sep + 'math.' in path:
      raise KeyboardInterrupt('simulated crash')
    real_write(path, examples)

  monkeypatch.setattr(build_lib, '_write_tfrecord', failing_write)
  with pytest.raises(KeyboardInterrupt):
    build_lib.build(_config(tmp_path))
  assert not (tmp_path / build_lib.INFO_FILE).exists()
  assert not (tmp_path / 'math').exists()
  assert (tmp_path / 'code' / build_lib.MARKER).exists()
  with pytest.raises(errors.DataNotBuiltError, match='make data'):
    tasks.register_tasks(str(tmp_path))

  monkeypatch.setattr(build_lib, '_write_tfrecord', real_write)
  info = build_lib.build(_config(tmp_path))
  assert set(info['skipped_parts']) == {'vocab', 'english', 'sotu', 'code'}
  assert not (tmp_path / '.staging').exists()
  assert _all_files(built[0]) == _all_files(tmp_path)
  assert build_lib.build(_config(tmp_path))['skipped_parts'] == ['all']


CODE_SNIPPET = '''class Graph:
\tdef __init__(self, edges=None):
        self._adj = {}   # trailing spaces here:   
        for u, v in edges or ():

            self._adj.setdefault(u, set()).add(v)  # λ → unicode
    def __len__(self):\r
        return len(self._adj)
'''.replace('\r', '')
MATH_SNIPPET = ('Question: Ava buys 3 boxes of 12 pencils at $1.25 each. How much does she pay?\n'
                'Answer: 3 * 12 = 36 pencils\n36 * 1.25 = 45.00\n#### 45')


@pytest.mark.parametrize('text', [CODE_SNIPPET, MATH_SNIPPET, '    \n\n\t\t  x', 'ﬁ Ω ½ 😀'])
def test_tokenizer_round_trips_whitespace_code_and_math(built, text):
  vocab = tasks.vocabulary(built[0])
  ids = vocab.encode(text)
  assert 2 not in ids  # no unk: byte fallback covers everything
  assert vocab.decode(ids) == text
  tf_ids = vocab.encode_tf(tf.constant(text))
  assert tf_ids.numpy().tolist() == ids
  assert vocab.decode_tf(tf_ids).numpy().decode() == text
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
  assert vocab.vocab_size == tasks.vocab_size(built[0])


def _plm_tokenizer(path, eos_id):
  """A SentencePiece model numbered like many PLMs' (unk=0, bos=1, eos=2, no pad), not like ours."""
  lines = [l for text in (CODE_SNIPPET, MATH_SNIPPET) for l in text.split('\n') if l.strip()]
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines * 20), model_prefix=str(path.with_suffix('')),
      vocab_size=400, hard_vocab_limit=False, byte_fallback=True, unk_id=0, bos_id=1,
      eos_id=eos_id, pad_id=-1, minloglevel=2)
  return path


def test_a_given_tokenizer_is_used_instead_of_training_one(tmp_path):
  model = _plm_tokenizer(tmp_path / 'plm.model', eos_id=2)
  data_dir = tmp_path / 'data'
  info = build_lib.build(_config(data_dir, spm_model=str(model)))
  assert (data_dir / 'vocab' / 'spm.model').read_bytes() == model.read_bytes()
  assert info['vocab']['eos_id'] == 2 and info['vocab']['given'] == str(model)
  vocab = tasks.vocabulary(str(data_dir))
  assert vocab.eos_id == 2 and vocab.vocab_size == info['vocab']['size']
  # Examples were cut to length with the given model's token counts.
  records = _records(str(data_dir / 'code' / 'train.tfrecord'))
  assert records and all(r['num_tokens'] == len(vocab.encode(r['text'])) for r in records)
  assert all(r['num_tokens'] <= SEQ_LEN - 1 for r in records)
  assert f'given SentencePiece model `{model}`' in (data_dir / 'DATA_CARD.md').read_text()


def test_a_bad_given_tokenizer_is_refused_before_anything_is_written(tmp_path):
  (tmp_path / 'not_spm.model').write_text('hello')
  no_eos = _plm_tokenizer(tmp_path / 'no_eos.model', eos_id=-1)
  for path, message in ((tmp_path / 'missing.model', 'file does not exist'),
                        (tmp_path / 'not_spm.model', 'is not a SentencePiece model'),
                        (no_eos, 'no EOS piece')):
    with pytest.raises(errors.DataError, match=rf'{path}.*{message}'):
      build_lib.build(_config(tmp_path / 'out', spm_model=str(path)))
    assert not (tmp_path / 'out' / 'vocab').exists()


def test_register_tasks_is_idempotent_and_names_are_complete(built):
  names = tasks.register_tasks(built[0])
  assert tasks.register_tasks(built[0]) == names
  for expected in ['mode_english_pretrain', 'mode_english', 'mode_code', 'mode_math',
                   'mode_math_code', 'mode_code_n10', 'mode_code_n30', 'mode_math_code_n20',
                   'mode_math_code_n40']:
    assert expected in names


@pytest.mark.parametrize('task', ['mode_english_pretrain', 'mode_english', 'mode_code',
                                  'mode_math', 'mode_math_code', 'mode_code_n10',
                                  'mode_math_code_n20'])
def test_training_batches_through_pax_seqio_input(built, task):
  params = inputs.seqio_input_params(task, 'train', batch_size=4, seq_len=SEQ_LEN,
                                     data_dir=built[0], input_random_seed=1)
  inp = base_hyperparams.instantiate(params)
  for _ in range(3):  # also past the end of tiny variants: training repeats
    batch = inp.get_next()
  for key in ('ids', 'labels', 'weights', 'paddings', 'segment_ids', 'segment_pos'):
    assert batch[key].shape == (4, SEQ_LEN), key
  assert batch.ids.dtype == np.int32
  assert batch.labels.max() < tasks.vocab_size(built[0])
  assert (batch.labels == 1).sum() >= 4  # every example ends with EOS


def test_mixture_has_equal_examples_from_each_domain(built):
  data_dir, _ = built
  tasks.register_tasks(data_dir)
  for task, n in [('mode_math_code_n20', 10), ('mode_math_code_n40', 20)]:
    ds = tasks.seqio.get_mixture_or_task(task).get_dataset(None, split='train', shuffle=False)
    assert sum(1 for _ in ds) == 2 * n
    source = tasks.seqio.get_mixture_or_task(task).source
    files = source._split_to_filepattern['train']  # pylint: disable=protected-access
    assert [len(_records(f)) for f in files] == [n, n]


@pytest.mark.parametrize('task,seq_len', [('mode_code', SEQ_LEN), ('mode_english', 24)])
def test_eval_covers_split_exactly_once_without_padding(built, task, seq_len):
  data_dir, info = built
  dataset = 'code' if task == 'mode_code' else 'english'
  stats = info['datasets'][dataset]['stats']['validation']
  params = inputs.seqio_input_params(task, 'validation', batch_size=8, seq_len=seq_len,
                                     data_dir=data_dir)
  assert params.eval_loop_num_batches == -1 and params.reset_for_eval
  assert params.annotate_padding_fields and not params.feature_converter.pack
  inp = base_hyperparams.instantiate(params)
  rows = weight = 0
  for _ in range(2):  # two passes: reset_for_eval restarts from the beginning
    rows = weight = 0
    while True:
      try:
        batch = inp.get_next()
      except (StopIteration, tf.errors.OutOfRangeError):
        inp.reset()
        break
      real = batch.eval_sample_weights > 0
      assert (batch.weights[~real] == 0).all()
      rows += int(real.sum())
      weight += float(batch.weights.sum())
  if seq_len == SEQ_LEN:
    assert rows == stats['examples']
  else:  # longer examples are cut, never truncated: every token is still scored once
    assert rows > stats['examples']
  assert weight == stats['tokens'] + rows  # tokens + one EOS per row


# --- Bad input --------------------------------------------------------------------------


def _manifest_with(tmp_path, **source_overrides):
  spec = json.loads((FIXTURES / 'sources.json').read_text())
  src = dict(spec['sources'][0], path=str(FIXTURES / spec['sources'][0]['path']))
  src.update(source_overrides)
  spec['sources'][0] = src
  path = tmp_path / 'sources.json'
  path.write_text(json.dumps(spec))
  return str(path)


def test_missing_build_names_fix(tmp_path):
  with pytest.raises(errors.DataNotBuiltError, match=r'make data.*--data_dir='):
    tasks.register_tasks(str(tmp_path / 'nothing_here'))
  with pytest.raises(errors.DataNotBuiltError):
    tasks.vocab_size(str(tmp_path))


def test_checksum_mismatch_names_source_and_fix(tmp_path):
  manifest = _manifest_with(tmp_path, sha256='0' * 64)
  with pytest.raises(errors.ChecksumMismatchError, match=r'\[janeaustenr\].*make data'):
    build_lib.build(_config(tmp_path / 'out', manifest=manifest))
  assert not (tmp_path / 'out' / build_lib.INFO_FILE).exists()


def test_corrupt_cached_download_is_reported(tmp_path):
  src = sources.Source(name='networkx', domain='code', registry='pypi', package='networkx',
                       version='3.6.1', filename='networkx-3.6.1-py3-none-any.whl',
                       sha256='a' * 64, licence='BSD-3-Clause', extractor='python_wheel')
  (tmp_path / src.filename).write_bytes(b'truncated download')
  with pytest.raises(errors.ChecksumMismatchError, match='delete .*networkx-3.6.1'):
    sources.fetch(src, str(tmp_path), str(tmp_path))


def test_unreachable_registry_names_source_and_fix(tmp_path):
  src = sources.Source(name='sympy', domain='code', registry='pypi', package='sympy',
                       version='1.14.0', filename='sympy-1.14.0-py3-none-any.whl',
                       sha256='a' * 64, licence='BSD-3-Clause', extractor='python_wheel')
  with pytest.raises(errors.SourceUnreachableError, match=r'\[sympy\].*sympy==1.14.0.*make data'):
    sources.fetch(src, str(tmp_path), str(tmp_path), pip_index_url='http://127.0.0.1:9/simple')
  assert not list(tmp_path.glob('*.whl'))


def _tar_source(tmp_path, files):
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode='w:gz') as tar:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  path = tmp_path / 'bad.tar.gz'
  path.write_bytes(buf.getvalue())
  return dict(name='badtexts', registry='local', path=str(path), filename='bad.tar.gz',
              sha256=hashlib.sha256(buf.getvalue()).hexdigest(), extractor='gutenberg_texts',
              options={'collections': {'shakespeare': 'x/texts'}})


def test_non_utf8_source_names_file(tmp_path):
  src = _tar_source(tmp_path, {'x/texts/hamlet_gut.txt': 'Ophelia\xa0r\xe9plique'.encode('latin-1')})
  with pytest.raises(errors.BadSourceTextError, match=r'\[badtexts\].*hamlet_gut.txt.*UTF-8'):
    build_lib.build(_config(tmp_path / 'out', manifest=_manifest_with(tmp_path, **src)))


def test_empty_source_is_reported(tmp_path):
  src = _tar_source(tmp_path, {'x/texts/hamlet_gut.txt': b'  \n\n'})
  with pytest.raises(errors.BadSourceTextError, match=r'\[badtexts\].*no text'):
    build_lib.build(_config(tmp_path / 'out', manifest=_manifest_with(tmp_path, **src)))


def test_object_store_paths_work_like_local_folders(built):
  """gs:// goes through tf.io.gfile; TF's in-memory ram:// file system stands in for it."""
  data_dir = 'ram://mode_pax_test/build'
  info = build_lib.build(_config(data_dir))
  local = _all_files(built[0])
  for name, data in local.items():
    with tf.io.gfile.GFile(f'{data_dir}/{name}', 'rb') as f:
      assert f.read() == data, name
  assert tasks.vocab_size(data_dir) == info['vocab']['size']
  tasks.register_tasks(data_dir)
  ds = tasks.seqio.get_mixture_or_task('mode_code').get_dataset(
      {'targets': SEQ_LEN}, split='validation', shuffle=False)
  assert sum(1 for _ in ds) == info['datasets']['code']['stats']['validation']['examples']
  assert build_lib.build(_config(data_dir))['skipped_parts'] == ['all']
  tasks.register_tasks(built[0])  # leave the registry pointing at the local build
