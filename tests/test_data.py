"""Tests for mode_pax.data on the fixture corpus (tests/fixtures/data); no registry access."""

import builtins
import collections
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import tarfile

from absl import flags
from etils.epath import gpath
from etils.epath import register as epath_register
import numpy as np
import pytest
import seqio
import sentencepiece as spm
import tensorflow as tf
import tensorflow_datasets as tfds
from praxis import base_hyperparams

from mode_pax import paths
from mode_pax.data import build as build_lib
from mode_pax.data import errors
from mode_pax.data import inputs
from mode_pax.data import mode_corpus
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


def _as_dict(example):
  return {'text': example.text, 'doc_id': example.doc_id, 'num_tokens': example.num_tokens}


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """(data_dir, build_info, the examples the build handed to TFDS per (dataset, split))."""
  data_dir = tmp_path_factory.mktemp('build_a')
  written = {}

  def recording_prepare(config, examples, metadata, tfds_data_dir):
    for split, split_examples in examples.items():
      written[config, split] = [_as_dict(e) for e in split_examples]
    return real_prepare(config, examples, metadata, tfds_data_dir)

  real_prepare = mode_corpus.prepare
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(mode_corpus, 'prepare', recording_prepare)
    info = build_lib.build(_config(data_dir))
  return str(data_dir), info, written


def _from_numpy(example):
  return {'text': example['text'].decode(), 'doc_id': example['doc_id'].decode(),
          'num_tokens': int(example['num_tokens'])}


def _sorted(examples):
  return sorted(examples, key=lambda e: (e['doc_id'], e['text']))


def _records(data_dir, dataset, split):
  """The examples of one split (or TFDS slice) of a built dataset, read with tfds.load."""
  ds = tfds.load(f'mode_corpus/{dataset}', data_dir=str(data_dir), split=split, download=False)
  return [_from_numpy(ex) for ex in tfds.as_numpy(ds)]


def _all_files(root):
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(pathlib.Path(root).rglob('*'))
          if p.is_file()}


def test_splits_are_disjoint_by_content_and_unit(built):
  data_dir, info, _ = built
  hashes, train_units = {}, {}
  for split in build_lib.SPLITS:
    hashes[split] = collections.Counter()
    for dataset in build_lib.DATASETS:
      records = _records(data_dir, dataset, split)
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
  data_dir, info, _ = built
  for dataset in build_lib.DATASETS:
    for r in _records(data_dir, dataset, 'train'):
      assert 0 < r['num_tokens'] <= SEQ_LEN - 1
      assert '/tests/' not in r['doc_id'] and not r['doc_id'].endswith('_gut_f')
  k = info['mixture_balanced_per_domain']
  assert k == min(info['datasets'][d]['stats']['train']['examples'] for d in ('code', 'math'))


@pytest.mark.parametrize('task,dataset,n', [('mode_code_n10', 'code', 10),
                                            ('mode_math_n20', 'math', 20)])
def test_size_variants_train_on_a_prefix_of_the_shuffled_training_split(built, task, dataset, n):
  data_dir, info, _ = built
  tasks.register_tasks(data_dir)
  source = seqio.get_mixture_or_task(task).source
  assert source.num_input_examples('train') == n == tasks.num_train_examples(task, data_dir)
  assert source.num_input_examples('validation') == (
      info['datasets'][dataset]['stats']['validation']['examples'])
  prefix = [_from_numpy(ex) for ex in tfds.as_numpy(source.get_dataset('train', shuffle=False))]
  assert prefix == _records(data_dir, dataset, 'train')[:n]


def test_two_builds_are_byte_identical(built, tmp_path):
  data_dir, _, _ = built
  build_lib.build(_config(tmp_path))
  first, second = _all_files(data_dir), _all_files(tmp_path)
  assert sorted(first) == sorted(second)
  for name in first:
    assert first[name] == second[name], name


def test_tfds_load_reads_every_dataset_like_any_tfds_dataset(built):
  data_dir, info, written = built
  vocab = tasks.vocabulary(data_dir)
  for dataset in build_lib.DATASETS:
    splits, ds_info = tfds.load(f'mode_corpus/{dataset}', data_dir=data_dir, with_info=True)
    assert ds_info.full_name == f'mode_corpus/{dataset}/1.0.0'
    assert str(ds_info.version) in ds_info.release_notes
    assert ds_info.metadata['fingerprint'] == info['fingerprint']
    assert set(splits) == set(build_lib.SPLITS)
    for split, ds in splits.items():
      examples = [_from_numpy(ex) for ex in tfds.as_numpy(ds)]
      num = info['datasets'][dataset]['stats'][split]['examples']
      assert len(examples) == ds_info.splits[split].num_examples == num > 0
      # Every example comes back as the build wrote it (text byte for byte); TFDS stores them in
      # its own fixed order.
      assert _sorted(examples) == _sorted(written[dataset, split]), (dataset, split)
      for ex in examples[:50]:
        assert vocab.decode(vocab.encode(ex['text'])) == ex['text']
  # Without the builder class (e.g. another program): TFDS reads the files on their own.
  builder = tfds.builder_from_directory(os.path.join(data_dir, 'mode_corpus', 'code', '1.0.0'))
  assert not isinstance(builder, mode_corpus.ModeCorpus)
  first = _from_numpy(next(iter(tfds.as_numpy(builder.as_dataset(split='train[:1]')))))
  assert first == _records(data_dir, 'code', 'train[:1]')[0]
  assert first in written['code', 'train']


def test_tfds_load_without_a_build_names_the_command(tmp_path):
  with pytest.raises(errors.DataNotBuiltError, match=r'mode_corpus/code.*make data.*--data_dir='):
    tfds.load('mode_corpus/code', data_dir=str(tmp_path))


def test_interrupted_build_looks_incomplete_and_rerun_skips_finished_parts(
    built, tmp_path, monkeypatch):
  real_generate = mode_corpus.ModeCorpus._generate_examples

  def crashing_generate(self, examples):
    for i, key_example in enumerate(real_generate(self, examples)):
      if self.builder_config.name == 'math' and i == 3:
        raise KeyboardInterrupt('simulated crash while TFDS writes math')
      yield key_example

  monkeypatch.setattr(mode_corpus.ModeCorpus, '_generate_examples', crashing_generate)
  with pytest.raises(KeyboardInterrupt):
    build_lib.build(_config(tmp_path))
  assert not (tmp_path / build_lib.INFO_FILE).exists()
  assert not (tmp_path / 'mode_corpus' / 'math').exists()
  assert build_lib.part_is_complete(str(tmp_path), 'code')
  with pytest.raises(errors.DataNotBuiltError, match='make data'):
    tasks.register_tasks(str(tmp_path))
  with pytest.raises(errors.DataNotBuiltError, match=r'mode_corpus/math.*make data'):
    tfds.load('mode_corpus/math', data_dir=str(tmp_path))

  monkeypatch.setattr(mode_corpus.ModeCorpus, '_generate_examples', real_generate)
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
  records = _records(data_dir, 'code', 'train')
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
                   'mode_math_code_n40', 'mode_sotu', 'mode_math_n10', 'mode_math_n20']:
    assert expected in names
  assert len(set(names)) == len(names)


@pytest.mark.parametrize('task,seq_len', [
    ('mode_english_pretrain', SEQ_LEN), ('mode_english', SEQ_LEN), ('mode_code', SEQ_LEN),
    ('mode_math', SEQ_LEN), ('mode_math_code', SEQ_LEN), ('mode_code_n10', SEQ_LEN),
    ('mode_math_code_n20', SEQ_LEN),
    ('mode_english', 24)])  # shorter than most examples: split_to_length cuts them
def test_training_batches_through_pax_seqio_input(built, task, seq_len):
  params = inputs.seqio_input_params(task, 'train', batch_size=4, seq_len=seq_len,
                                     data_dir=built[0], input_random_seed=1)
  inp = base_hyperparams.instantiate(params)
  eos = tasks.vocabulary(built[0]).eos_id
  lengths = []
  for _ in range(3):  # also past the end of tiny variants: training repeats
    batch = inp.get_next()
    for key in ('ids', 'labels', 'weights', 'paddings', 'segment_ids', 'segment_pos'):
      assert batch[key].shape == (4, seq_len), key
    assert batch.ids.dtype == np.int32
    assert batch.labels.max() < tasks.vocab_size(built[0])
    # Every packed example ends with EOS and has no other: split_to_length cuts a long one
    # into pieces of at most seq_len - 1 tokens and each piece gets its own EOS.
    for row in range(4):
      for segment in set(batch.segment_ids[row].tolist()) - {0}:
        where = np.flatnonzero(batch.segment_ids[row] == segment)
        np.testing.assert_array_equal(batch.segment_pos[row, where], np.arange(len(where)))
        assert batch.labels[row, where[-1]] == eos, (task, row, segment)
        assert (batch.labels[row, where[:-1]] != eos).all(), (task, row, segment)
        lengths.append(len(where))
    assert (batch.weights[batch.segment_ids == 0] == 0).all()
  assert len(lengths) >= 3 * 4
  if seq_len < SEQ_LEN:
    assert lengths.count(seq_len) >= 4  # full pieces of longer examples: cut, not truncated


def test_mixtures_read_both_parts_every_example_once_per_epoch(built):
  data_dir, info, _ = built
  tasks.register_tasks(data_dir)
  train_examples = {d: info['datasets'][d]['stats']['train']['examples']
                    for d in build_lib.DATASETS}
  balanced = info['mixture_balanced_per_domain']
  for mixture, n in [('mode_math_code_n20', 10), ('mode_math_code_n40', 20),
                     ('mode_math_code', balanced)]:
    mix = seqio.get_mixture_or_task(mixture)
    # Equal numbers of Math and Code training examples, mixed at equal rates.
    assert {t.name: mix.get_rate(t) for t in mix.tasks} == {f'mode_math_n{n}': n,
                                                             f'mode_code_n{n}': n}
    assert [t.source.num_input_examples('train') for t in mix.tasks] == [n, n]
    assert tasks.num_train_examples(mixture, data_dir) == 2 * n
    ds = mix.get_dataset(None, split='train', shuffle=False, num_epochs=1)
    assert sum(1 for _ in ds) == 2 * n
  # English pre-training: literature and State of the Union at rates equal to their sizes,
  # and one evaluation pass reads both validation splits whole.
  mix = seqio.get_mixture_or_task('mode_english_pretrain')
  assert {t.name: mix.get_rate(t) for t in mix.tasks} == {
      'mode_english': train_examples['english'], 'mode_sotu': train_examples['sotu']}
  ds = mix.get_dataset(None, split='validation', shuffle=False, num_epochs=1)
  assert sum(1 for _ in ds) == sum(info['datasets'][d]['stats']['validation']['examples']
                                   for d in ('english', 'sotu'))


@pytest.mark.parametrize('task,seq_len', [('mode_code', SEQ_LEN), ('mode_english', 24)])
def test_eval_covers_split_exactly_once_without_padding(built, task, seq_len):
  data_dir, info, _ = built
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


def test_input_params_touch_no_files_and_instantiation_names_the_missing_build(
    tmp_path, monkeypatch):
  missing = tmp_path / 'not_built'

  def touched(*args, **kwargs):
    raise AssertionError(f'building input params touched the file system: {args} {kwargs}')

  with monkeypatch.context() as patch:
    for name in ('exists', 'GFile', 'stat', 'listdir', 'glob', 'isdir', 'makedirs', 'walk'):
      patch.setattr(tf.io.gfile, name, touched)
    for module, name in ((builtins, 'open'), (io, 'open'), (os, 'stat'), (os, 'listdir'),
                         (os, 'scandir')):
      patch.setattr(module, name, touched)
    train = inputs.seqio_input_params('mode_code', 'train', batch_size=4,
                                      data_dir=str(missing))
    patch.setenv('MODE_PAX_DATA_DIR', str(missing))
    evaluation = inputs.seqio_input_params('mode_math', 'validation', batch_size=4)
  assert train.data_dir == evaluation.data_dir == str(missing)
  assert issubclass(train.cls, inputs.MoDESeqIOInput)
  assert not missing.exists()
  with pytest.raises(errors.DataNotBuiltError,
                     match=re.escape(str(missing)) + r'.*make data'):
    base_hyperparams.instantiate(train)


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
  # A build of the format before TFDS (plain TFRecords) is not read as if it were current.
  (tmp_path / build_lib.INFO_FILE).write_text(json.dumps({'format_version': 1}))
  with pytest.raises(errors.DataNotBuiltError, match=r'older build \(format 1.*make data'):
    tasks.register_tasks(str(tmp_path))


# A damaged build stops at the check that runs before training (tasks.build_info: paxml.main's
# validate() and the pipeline's ensure_data()), naming the file and the command that repairs it.

CODE_SHARD = 'mode_corpus/code/1.0.0/mode_corpus-train.tfrecord-00000-of-00001'


def _damaged_copy(built, tmp_path, name, damage):
  data_dir = tmp_path / 'build'
  shutil.copytree(built[0], data_dir)
  path = data_dir / name
  if damage == 'truncate':
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  elif damage == 'delete':
    path.unlink()
  else:  # same size, one byte changed
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
  return data_dir, path


@pytest.mark.parametrize('name,damage,rebuilt', [
    ('vocab/spm.model', 'truncate', {'vocab'}),
    (build_lib.INFO_FILE, 'truncate', set()),
    (CODE_SHARD, 'truncate', {'code'}),
    (CODE_SHARD, 'delete', {'code'}),  # the parts' completion markers are all there
], ids=['truncated_vocabulary', 'truncated_build_info', 'truncated_shard', 'missing_shard'])
def test_damaged_build_names_the_file_and_make_data_repairs_it(
    built, tmp_path, name, damage, rebuilt):
  data_dir, path = _damaged_copy(built, tmp_path, name, damage)
  with pytest.raises(errors.DataDamagedError) as raised:
    tasks.build_info(str(data_dir))
  assert re.match(rf'\[{re.escape(str(path))}\] .* To fix: run `make data DATA_DIR={data_dir}` '
                  rf'\(python -m mode_pax.data.build --data_dir={data_dir}\)', str(raised.value))
  with pytest.raises(errors.DataDamagedError, match=re.escape(str(path))):
    tasks.register_tasks(str(data_dir))  # what instantiating a Pax input runs
  # The named fix rebuilds the damaged part only, byte for byte as before.
  info = build_lib.build(_config(data_dir))
  assert set(build_lib.PARTS) - set(info['skipped_parts']) == rebuilt
  assert _all_files(data_dir) == _all_files(built[0])
  assert tasks.build_info(str(data_dir))['fingerprint'] == built[1]['fingerprint']


def test_a_changed_file_of_the_same_size_is_caught_by_its_sha256(built, tmp_path):
  data_dir, path = _damaged_copy(built, tmp_path, CODE_SHARD, 'flip a byte')
  with pytest.raises(errors.DataDamagedError, match=re.escape(str(path)) + r'.*sha256.*make data'):
    tasks.build_info(str(data_dir))
  assert set(build_lib.build(_config(data_dir))['skipped_parts']) == set(build_lib.PARTS) - {'code'}


def test_the_check_hashes_each_file_once_per_process(built, tmp_path, monkeypatch):
  data_dir = tmp_path / 'build'
  shutil.copytree(built[0], data_dir)
  hashed = []
  real_sha256 = build_lib.sha256_file
  monkeypatch.setattr(build_lib, 'sha256_file', lambda p: hashed.append(p) or real_sha256(p))
  tasks.build_info(str(data_dir))
  recorded = sum(len(build_lib.read_json(os.path.join(build_lib.part_dir(str(data_dir), part),
                                                      build_lib.MARKER))['files'])
                 for part in build_lib.PARTS)
  assert len(hashed) == len(set(hashed)) == recorded
  tasks.vocab_size(str(data_dir))
  assert len(hashed) == recorded  # sizes only, from now on
  os.utime(data_dir / CODE_SHARD, ns=(0, 0))  # a new version of the file: hashed again
  tasks.build_info(str(data_dir))
  assert hashed[recorded:] == [str(data_dir / CODE_SHARD)]


def test_the_build_command_writes_nothing_outside_its_data_dir(tmp_path, monkeypatch):
  repo_data = paths.REPO_ROOT / 'data'

  def repo_data_files():  # data/build aside: others may be building it
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in repo_data.rglob('*')
            if p.is_file() and repo_data / 'build' not in p.parents}

  before = repo_data_files()
  # `make data` with its defaults, the fixture manifest standing in for data/sources.json.
  monkeypatch.setattr(sources, 'DEFAULT_MANIFEST', FIXTURES / 'sources.json')
  flag_values = flags.FlagValues()
  build_lib._define_flags(flag_values)  # pylint: disable=protected-access
  data_dir = tmp_path / 'build'
  flag_values(['build', f'--data_dir={data_dir}', '--vocab_size=600', '--example_length=64',
               '--code_sizes=10,30', '--mixture_sizes=20,40'])
  build_lib.main([])
  assert repo_data_files() == before
  card = (data_dir / build_lib.CARD_FILE).read_text().split('\n')
  assert card[2].startswith('Generated by `python -m mode_pax.data.build` (`make data`) beside')
  # A copy elsewhere (e.g. the committed data/DATA_CARD.md) only when asked, saying how it was
  # made; a finished build writes it without rebuilding.
  copy = tmp_path / 'docs' / 'DATA_CARD.md'
  copy.parent.mkdir()
  flag_values.card_out = str(copy)
  build_lib.main([])
  copied = copy.read_text().split('\n')
  assert copied[2].startswith(f'Written by `python -m mode_pax.data.build --card_out={copy}`')
  assert copied[:2] + copied[3:] == card[:2] + card[3:]
  assert repo_data_files() == before


def test_make_data_passes_data_dir_only_when_given_on_its_command_line():
  assert shutil.which('make'), 'make is needed: README runs everything through it'

  def dry_run(*args, **env):
    return subprocess.run(['make', '-n', '-C', str(paths.REPO_ROOT), 'data', *args],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          check=True).stdout

  assert '-m mode_pax.data.build\n' in dry_run()
  assert '-m mode_pax.data.build --data_dir=/tmp/x\n' in dry_run('DATA_DIR=/tmp/x')
  # An environment variable of that common name is not taken for it.
  assert '-m mode_pax.data.build\n' in dry_run(DATA_DIR='/elsewhere')


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


def _epath_reads_ram_like_gs(monkeypatch):
  """TFDS's file layer (etils.epath) sends gs:// to tf.io.gfile; let it do so for ram:// too."""
  monkeypatch.setattr(gpath, '_URI_PREFIXES', gpath._URI_PREFIXES + ('ram://',))
  monkeypatch.setattr(gpath, '_URI_SCHEMES', gpath._URI_SCHEMES | {'ram'})
  monkeypatch.setitem(gpath._URI_MAP_ROOT, 'ram://', '/ram/')
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, 'ram', gpath.backend_lib.tf_backend)
  monkeypatch.setitem(epath_register._URI_PREFIXES_TO_CLS, 'ram://', gpath.PosixGPath)


def test_object_store_paths_work_like_local_folders(built, monkeypatch):
  """gs:// goes through tf.io.gfile; TF's in-memory ram:// file system stands in for it."""
  data_dir = 'ram://mode_pax_test/build'
  info = build_lib.build(_config(data_dir))
  local = _all_files(built[0])
  for name, data in local.items():
    with tf.io.gfile.GFile(f'{data_dir}/{name}', 'rb') as f:
      assert f.read() == data, name
  assert tasks.vocab_size(data_dir) == info['vocab']['size']
  _epath_reads_ram_like_gs(monkeypatch)
  tasks.register_tasks(data_dir)
  ds = seqio.get_mixture_or_task('mode_code').get_dataset(
      {'targets': SEQ_LEN}, split='validation', shuffle=False)
  assert sum(1 for _ in ds) == info['datasets']['code']['stats']['validation']['examples']
  assert build_lib.build(_config(data_dir))['skipped_parts'] == ['all']
  tasks.register_tasks(built[0])  # leave the registry pointing at the local build
