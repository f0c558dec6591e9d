r"""Builds the MoDE datasets: `python -m mode_pax.data.build [--data_dir=DIR]` (or `make data`).

Steps: fetch the pinned sources (sha256-checked) -> normalize text -> split deterministically
(English: held-out works; Code: by package folder; Math: by template; general English: by
address) -> drop exact duplicate documents -> train one SentencePiece vocabulary on the
training splits (or take a given one: `--spm_model`, or a pre-trained LM's byte-level BPE
tokenizer: `--tokenizer`, mode_pax/data/vocabularies.py) -> cut documents into examples of at
most `example_length - 1` tokens (room for EOS) at line boundaries -> drop exact duplicate
examples (a copy in an evaluation split of anything earlier, e.g. in train, is removed) ->
write each dataset as a config of the TFDS dataset `mode_corpus` (mode_pax/data/mode_corpus.py),
then `DATA_CARD.md` and `build_info.json`.

Layout of data_dir (a TFDS data_dir: `tfds.load('mode_corpus/code', data_dir=data_dir)`):
  mode_corpus/<dataset>/<version>/  TFDS files of english, sotu, code, math
  vocab/spm.model                   the SentencePiece vocabulary, or
  vocab/tokenizer.json              the --tokenizer's (Hugging Face `tokenizers` format)
  downloads/                        the fetched sources
  DATA_CARD.md                      what the build holds (`--card_out` writes a copy elsewhere)
  build_info.json                   written last: the whole build is complete

Every part (vocab, each dataset) is written to a local staging folder and moved into place
with its marker `_COMPLETE.json` last, so a half-finished build never looks complete. The
marker holds the build fingerprint and the size and sha256 of every file of its part:
`check_part` compares the files with it (the seqio tasks run it before anything reads the
data), and a rerun skips only parts whose marker carries the same fingerprint and whose files
still match it, so it also repairs a damaged build (a truncated or deleted file).
Writes nothing outside data_dir unless asked (`--card_out`).
"""

import collections
import dataclasses
import hashlib
import io
import json
import os
import posixpath
import random
import shutil
import sys
import tempfile
import time
import uuid
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import sentencepiece as spm
import tensorflow as tf
import tokenizers

from mode_pax import paths
from mode_pax.data import errors
from mode_pax.data import mode_corpus
from mode_pax.data import sources as sources_lib
from mode_pax.data import vocabularies

# 3: every part's marker records its files (size, sha256); 2: datasets are TFDS configs of
# mode_corpus; 1: plain TFRecords.
BUILD_FORMAT_VERSION = 3
SPLITS = mode_corpus.SPLITS
DATASETS = ('english', 'sotu', 'code', 'math')
PARTS = ('vocab',) + DATASETS
# Which manifest domain feeds which dataset.
DOMAIN_TO_DATASET = {'english': 'english', 'english_general': 'sotu', 'code': 'code',
                     'math': 'math'}
INFO_FILE = 'build_info.json'
MARKER = '_COMPLETE.json'  # in every part's folder, written last
CARD_FILE = 'DATA_CARD.md'
# build_info's vocab kind -> its file in vocab/ (builds before 'kind' was recorded: sentencepiece).
VOCAB_FILES = {'sentencepiece': 'spm.model', 'bpe': vocabularies.TOKENIZER_FILE}
DEFAULT_CODE_SIZES = (100, 300, 1000, 3000, 10000)
DEFAULT_MIXTURE_SIZES = (100, 300, 1000, 3000, 10000)


def absolute_data_dir(data_dir: str) -> str:
  """data_dir made absolute when it is local (gs:// and other URLs as they are)."""
  return data_dir if '://' in data_dir else os.path.abspath(data_dir)


def default_data_dir() -> str:
  """$MODE_PAX_DATA_DIR, else <repo>/data/build."""
  return paths.data_dir()


@dataclasses.dataclass(frozen=True)
class BuildConfig:
  """Everything that decides the bytes of a build."""
  data_dir: str = dataclasses.field(default_factory=default_data_dir)
  manifest: str = str(sources_lib.DEFAULT_MANIFEST)
  vocab_size: int = 8192
  example_length: int = 256  # targets length incl. EOS; examples hold <= this - 1 tokens
  seed: int = 0
  code_sizes: tuple[int, ...] = DEFAULT_CODE_SIZES
  mixture_sizes: tuple[int, ...] = DEFAULT_MIXTURE_SIZES
  spm_sample_bytes: int = 2_000_000  # per dataset, for vocabulary training
  spm_hard_vocab_limit: bool = True
  # An existing SentencePiece model (e.g. the paper-scale backbone's own) used instead of
  # training one; vocab_size and the spm_* settings are then unused.
  spm_model: str | None = None
  # A pre-trained LM's own byte-level BPE tokenizer (vocabularies.load_tokenizer: a .gguf, a
  # Hugging Face tokenizer folder or tokenizer.json, or 'smollm2') used instead of training a
  # SentencePiece one; excludes spm_model, and vocab_size and the spm_* settings are unused.
  tokenizer: str | None = None
  pip_index_url: str | None = None  # not part of the fingerprint
  # A copy of the data card outside data_dir (data/DATA_CARD.md documents the default build);
  # the build always writes <data_dir>/DATA_CARD.md. Not part of the fingerprint.
  card_out: str | None = None

  def fingerprint(self, manifest_sha256: str, given_vocab: bytes | None = None,
                  tokenizer_sha256: str | None = None) -> str:
    """given_vocab: the bytes of `spm_model` (read once, by load_vocabulary); tokenizer_sha256:
    that of the serialized `tokenizer` (load_tokenizer), so another tokenizer rebuilds."""
    keys = dict(version=BUILD_FORMAT_VERSION, manifest=manifest_sha256,
                vocab_size=self.vocab_size, example_length=self.example_length,
                seed=self.seed, code_sizes=list(self.code_sizes),
                mixture_sizes=list(self.mixture_sizes), spm_sample_bytes=self.spm_sample_bytes,
                spm_hard_vocab_limit=self.spm_hard_vocab_limit, code=_code_digest(),
                spm_model=hashlib.sha256(given_vocab).hexdigest() if given_vocab else None,
                tokenizer=tokenizer_sha256)
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def _code_digest() -> str:
  """Digest of the build code, so a changed build never reuses stale parts."""
  digest = hashlib.sha256()
  for module in (__file__, sources_lib.__file__, mode_corpus.__file__, vocabularies.__file__):
    with open(module, 'rb') as f:
      digest.update(f.read())
  return digest.hexdigest()


def _hash(text: str) -> str:
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


# ---------------------------------------------------------------------------------------
# Files (tf.io.gfile, so gs:// works like a local folder).


def _join(*parts: str) -> str:
  return posixpath.join(*parts) if '://' in parts[0] else os.path.join(*parts)


def _write_bytes(path: str, data: bytes) -> None:
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(data)


def _write_json(path: str, obj: Any) -> None:
  _write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + '\n').encode())


def read_json(path: str) -> Any:
  with tf.io.gfile.GFile(path, 'rb') as f:
    return json.loads(f.read())


def sha256_file(path: str) -> str:
  """Hex sha256 of a file (local or gs://), read in 4 MiB pieces."""
  digest = hashlib.sha256()
  with tf.io.gfile.GFile(path, 'rb') as f:
    while chunk := f.read(1 << 22):
      digest.update(chunk)
  return digest.hexdigest()


def _record_files(folder: str) -> dict[str, dict[str, Any]]:
  """Size and sha256 of every file under a local (staging) folder, by relative path."""
  records = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      records[os.path.relpath(path, folder).replace(os.sep, '/')] = {
          'bytes': os.path.getsize(path), 'sha256': sha256_file(path)}
  return records


def part_dir(data_dir: str, part: str) -> str:
  """Folder of a part: 'vocab', or a dataset (its TFDS dataset dir)."""
  return _join(data_dir, 'vocab') if part == 'vocab' else mode_corpus.dataset_dir(data_dir, part)


@dataclasses.dataclass(frozen=True)
class Problem:
  """What is wrong with one file of a part (`damaged`), or that the part is not built."""
  path: str
  problem: str
  damaged: bool = True


# Files whose sha256 this process has checked, as (path, bytes, mtime, sha256): each version of
# a file is hashed once per process, however often the build is checked.
_HASHED: set[tuple[str, int, int, str]] = set()


def check_part(data_dir: str, part: str, fingerprint: str | None = None,
               sha256: bool = True) -> list[Problem]:
  """What is wrong with a built part; [] when it is complete and intact.

  Complete: its marker exists and carries `fingerprint` (any, if None). Intact: every file the
  marker records is there with the size the build wrote and, with `sha256`, the same sha256.

  Args:
    data_dir: the build folder.
    part: 'vocab' or a dataset.
    fingerprint: the build's fingerprint (build_info.json's).
    sha256: also compare sha256 (once per file version and process); sizes are always compared.
  """
  folder = part_dir(data_dir, part)
  marker = _join(folder, MARKER)
  if not tf.io.gfile.exists(marker):
    return [Problem(marker, f'is missing: part {part!r} is not built (or its build did not '
                    'finish).', damaged=False)]
  try:
    record = read_json(marker)
    files = dict(record['files'])
  except (ValueError, KeyError, TypeError) as e:  # truncated, or from an older build format
    return [Problem(marker, f'is not a complete marker of a built part ({type(e).__name__}: '
                    f'{e}).')]
  if fingerprint is not None and record.get('fingerprint') != fingerprint:
    return [Problem(marker, f"is from another build (fingerprint {record.get('fingerprint')}; "
                    f'{INFO_FILE} says {fingerprint}).', damaged=False)]
  problems = []
  for name, want in sorted(files.items()):
    path = _join(folder, *name.split('/'))
    try:
      stat = tf.io.gfile.stat(path)
    except tf.errors.NotFoundError:
      problems.append(Problem(path, f'is missing, though {marker} records it.'))
      continue
    if stat.length != want['bytes']:
      problems.append(Problem(path, f"has {stat.length:,} bytes, but the build wrote "
                              f"{want['bytes']:,} (truncated?)."))
      continue
    key = (path, stat.length, stat.mtime_nsec, want['sha256'])
    if sha256 and key not in _HASHED:
      if sha256_file(path) != want['sha256']:
        problems.append(Problem(path, 'has changed since the build wrote it: its sha256 is not '
                                f'the one in {marker}.'))
        continue
      _HASHED.add(key)
  return problems


def part_is_complete(data_dir: str, part: str, fingerprint: str | None = None) -> bool:
  """The part is built (by the build `fingerprint`, if given) and its files are intact."""
  return not check_part(data_dir, part, fingerprint)


def _read_info(path: str) -> dict[str, Any] | None:
  """A build's build_info.json, or None when it is missing or unreadable (e.g. truncated)."""
  if not tf.io.gfile.exists(path):
    return None
  try:
    info = read_json(path)
  except ValueError as e:
    logging.warning('%s is unreadable (%s); rebuilding it.', path, e)
    return None
  return info if isinstance(info, dict) else None


def _publish(staging: str, final: str, marker: str) -> None:
  """Moves a finished local staging folder into place; its `marker` file appears last."""
  if tf.io.gfile.exists(final):
    tf.io.gfile.rmtree(final)
  if '://' not in final:
    os.makedirs(os.path.dirname(final), exist_ok=True)
    os.replace(staging, final)  # atomic: staging is on the same local file system
    return
  # Object stores have no folder rename: copy files one by one, marker last.
  names = sorted(os.path.relpath(os.path.join(root, f), staging)
                 for root, _, files in os.walk(staging) for f in files)
  for name in sorted(names, key=lambda n: n == marker):
    target = _join(final, *name.split(os.sep))
    tf.io.gfile.makedirs(posixpath.dirname(target))
    tf.io.gfile.copy(os.path.join(staging, name), target, overwrite=True)
  shutil.rmtree(staging)


# ---------------------------------------------------------------------------------------
# Splitting.


def _ordered_units(units: Sequence[str], seed: int) -> list[str]:
  return sorted(set(units), key=lambda u: _hash(f'{seed}:{u}'))


def assign_splits(docs: Sequence[sources_lib.Document], dataset: str, config: dict[str, Any],
                  seed: int) -> dict[str, list[sources_lib.Document]]:
  """Deterministic split by whole unit (work, package folder, template, address)."""
  if dataset == 'english':
    holdout = config['english_holdout']
    unit_split = {u: s for s in ('validation', 'test') for u in holdout[s]}
    missing = set(unit_split) - {d.split_unit for d in docs}
    if missing:
      raise errors.BadSourceTextError(
          'english', f'held-out works {sorted(missing)} are not in the sources.',
          'fix config.english_holdout in the manifest (data/sources.json)')
  else:
    # Whole units in hash order fill test, then validation, up to their share of the bytes.
    fractions = config.get('holdout_fraction', {'validation': 0.05, 'test': 0.05})
    unit_bytes = collections.Counter()
    for d in docs:
      unit_bytes[d.split_unit] += len(d.text.encode('utf-8'))
    units = _ordered_units(list(unit_bytes), seed)
    if len(units) < 3:
      raise errors.BadSourceTextError(dataset, f'only {len(units)} split units; need at least '
                                      '3 for train/validation/test.')
    total = sum(unit_bytes.values())
    unit_split, i = {}, 0
    for split in ('test', 'validation'):
      used = 0
      while i < len(units) - 1 and (used == 0 or used < fractions[split] * total):
        if used and used + unit_bytes[units[i]] > 2 * fractions[split] * total:
          break  # keep a huge unit for train rather than overshoot
        unit_split[units[i]] = split
        used += unit_bytes[units[i]]
        i += 1
  out = {s: [] for s in SPLITS}
  for d in docs:
    out[unit_split.get(d.split_unit, 'train')].append(d)
  return out


# ---------------------------------------------------------------------------------------
# Vocabulary.


def _split_at_spaces(line: str, max_chars: int) -> list[str]:
  pieces = []
  while len(line) > max_chars:
    cut = line.rfind(' ', max_chars // 2, max_chars)
    cut = max_chars if cut < 0 else cut + 1
    pieces.append(line[:cut])
    line = line[cut:]
  return pieces + [line] if line else pieces


def _spm_sentences(train_docs: dict[str, list[sources_lib.Document]], sample_bytes: int,
                   seed: int) -> list[str]:
  """An equal byte budget of training lines from each dataset (whole documents)."""
  sentences = []
  for dataset in DATASETS:
    docs = sorted(train_docs.get(dataset, []), key=lambda d: _hash(f'{seed}:{d.doc_id}'))
    used = 0
    for d in docs:
      if used >= sample_bytes:
        break
      for line in d.text.split('\n'):
        if line.strip():
          sentences.extend(_split_at_spaces(line, 1000))
          used += len(line.encode()) + 1
  return sentences


def load_vocabulary(path: str) -> bytes:
  """A given SentencePiece model, checked to load and to have the EOS seqio appends.

  seqio pads with id 0 whatever piece that is; Pax masks padding out of the loss and metrics.
  """
  fix = 'pass --spm_model the .model file of a SentencePiece tokenizer, or leave it unset'
  if not tf.io.gfile.exists(path):
    raise errors.DataError(path, 'The --spm_model file does not exist.', fix)
  with tf.io.gfile.GFile(path, 'rb') as f:
    model_proto = f.read()
  try:
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
  except RuntimeError as e:
    raise errors.DataError(path, f'The --spm_model file is not a SentencePiece model ({e}).',
                           fix) from e
  if sp.eos_id() < 0:
    raise errors.DataError(path, 'The --spm_model tokenizer has no EOS piece; seqio appends EOS '
                           'to every example.', 'use a model trained with eos_id >= 0')
  return model_proto


def load_tokenizer(spec: str) -> tuple[tokenizers.Tokenizer, dict[str, int | None]]:
  """The given --tokenizer (vocabularies.load_tokenizer), checked; errors are DataErrors.

  seqio pads with id 0 whatever token that is; Pax masks padding out of the loss and metrics.
  """
  try:
    return vocabularies.load_tokenizer(spec)
  except ValueError as e:
    raise errors.DataError(
        spec, f'The --tokenizer cannot be used: {e}',
        "pass --tokenizer a byte-level BPE tokenizer (a .gguf file, a Hugging Face tokenizer "
        "folder or tokenizer.json, or 'smollm2'), or leave it unset") from e


def train_vocabulary(sentences: list[str], vocab_size: int, hard_limit: bool) -> bytes:
  """A whitespace-preserving SentencePiece model (ids: pad=0, eos=1, unk=2, no bos)."""
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
      model_type='unigram', character_coverage=0.9995, byte_fallback=True,
      normalization_rule_name='identity', remove_extra_whitespaces=False,
      add_dummy_prefix=False, split_by_whitespace=True, allow_whitespace_only_pieces=True,
      split_digits=True, user_defined_symbols=['\n', '\t'], pad_id=0, eos_id=1, unk_id=2,
      bos_id=-1, num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
      hard_vocab_limit=hard_limit, max_sentence_length=8192, minloglevel=2)
  return model.getvalue()


# ---------------------------------------------------------------------------------------
# Examples.


class Chunker:
  """Cuts documents into examples of at most `budget` tokens, preferring line breaks.

  Args:
    vocab: a SentencePiece model's bytes, or a `tokenizers.Tokenizer` (--tokenizer; encoded
      without special tokens, as BpeVocabulary does).
    budget: tokens per example.
  """

  def __init__(self, vocab: bytes | tokenizers.Tokenizer, budget: int):
    if isinstance(vocab, bytes):
      sp = spm.SentencePieceProcessor(model_proto=vocab)
      self._encode_batch, self._decode = sp.encode, sp.decode
    else:
      self._encode_batch = lambda texts: [
          e.ids for e in vocab.encode_batch(texts, add_special_tokens=False)]
      self._decode = lambda ids: vocab.decode(ids, skip_special_tokens=False)
    self.budget = budget

  def count(self, texts: list[str]) -> list[int]:
    return [len(ids) for ids in self._encode_batch(texts)] if texts else []

  def _split_long(self, text: str) -> list[str]:
    """Splits one over-long line, at spaces where possible."""
    pieces = []
    while text:
      window = text[:self.budget * 16]
      ids = self._encode_batch([window])[0]
      if len(ids) <= self.budget:
        cut = len(window)
      else:
        prefix = self._decode(ids[:self.budget])
        cut = len(os.path.commonprefix([prefix, window]))
        space = text.rfind(' ', 0, cut)
        if space > cut // 2:
          cut = space + 1
        cut = max(cut, 1)
      pieces.append(text[:cut])
      text = text[cut:]
    return pieces

  def chunk(self, text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    counts = self.count(lines)
    chunks: list[str] = []
    cur: list[tuple[str, int]] = []
    blank_at = 0  # index in cur just after the last blank line
    total = 0
    for line, n in zip(lines, counts):
      if n > self.budget:
        if cur:
          chunks.append(''.join(l for l, _ in cur))
        chunks.extend(self._split_long(line))
        cur, total, blank_at = [], 0, 0
        continue
      if total + n > self.budget:
        head = sum(c for _, c in cur[:blank_at])
        cut = blank_at if head >= self.budget // 2 else len(cur)
        chunks.append(''.join(l for l, _ in cur[:cut]))
        cur = cur[cut:]
        total = sum(c for _, c in cur)
        blank_at = 0
      cur.append((line, n))
      total += n
      if not line.strip():
        blank_at = len(cur)
    if cur:
      chunks.append(''.join(l for l, _ in cur))
    # Token counts of lines need not add up exactly: re-check whole examples.
    out = []
    for chunk, n in zip(chunks, self.count(chunks)):
      out.extend([chunk] if n <= self.budget else self._split_long(chunk))
    return [c for c in out if c.strip()]


@dataclasses.dataclass
class Example:
  text: str
  doc_id: str
  num_tokens: int = 0


def size_variants(config: BuildConfig, n_code: int, n_math: int) -> dict[str, list[int]]:
  """The size variants the data allows: Code sizes, Math+Code sizes, balanced mixture size.

  A variant trains on a prefix (TFDS slice `train[:N]`) of the shuffled training split.
  """
  balanced = min(n_code, n_math)
  return {
      'code_variants': sorted(n for n in config.code_sizes if n <= n_code),
      'mixture_variants': sorted(m for m in config.mixture_sizes if m // 2 <= balanced),
      'balanced': [balanced],
  }


# ---------------------------------------------------------------------------------------
# The build.


def _stats(examples: Sequence[Example], num_docs: int) -> dict[str, int]:
  return {'documents': num_docs, 'examples': len(examples),
          'tokens': sum(e.num_tokens for e in examples),
          'bytes': sum(len(e.text.encode('utf-8')) for e in examples)}


def build(config: BuildConfig) -> dict[str, Any]:
  """Runs the build; returns build_info (also written to <data_dir>/build_info.json)."""
  start = time.time()
  # A given tokenizer is checked before anything is fetched or written.
  if config.spm_model and config.tokenizer:
    raise errors.DataError(
        '--tokenizer/--spm_model', f'Both are given (--tokenizer={config.tokenizer}, '
        f'--spm_model={config.spm_model}); the build tokenizes with one tokenizer.',
        'pass only one of them: --tokenizer for a byte-level BPE tokenizer, --spm_model for a '
        'SentencePiece model')
  given_vocab = load_vocabulary(config.spm_model) if config.spm_model else None
  bpe, bpe_json, bpe_ids = None, None, {}
  if config.tokenizer:
    bpe, bpe_ids = load_tokenizer(config.tokenizer)
    bpe_json = vocabularies.serialize(bpe)
  manifest = sources_lib.load_manifest(config.manifest)
  fingerprint = config.fingerprint(
      manifest.sha256, given_vocab, hashlib.sha256(bpe_json).hexdigest() if bpe else None)
  if config.card_out and not tf.io.gfile.isdir(os.path.dirname(config.card_out) or '.'):
    raise errors.DataError(config.card_out, 'The folder of --card_out does not exist.',
                           'create it, or pass another --card_out')
  data_dir = config.data_dir
  info_path = _join(data_dir, INFO_FILE)
  tf.io.gfile.makedirs(data_dir)
  info = _read_info(info_path)
  if info is not None and info.get('fingerprint') == fingerprint:
    problems = [p for part in PARTS for p in check_part(data_dir, part, fingerprint)]
    if not problems:
      logging.info('Data in %s is complete (fingerprint %s): nothing to do.', data_dir,
                   fingerprint)
      if config.card_out:
        _write_bytes(config.card_out, data_card(info, config.card_out).encode())
      info['skipped_parts'] = ['all']
      return info
    logging.warning('The build in %s is damaged; rebuilding the parts of: %s', data_dir,
                    '; '.join(f'{p.path} {p.problem}' for p in problems))
  if tf.io.gfile.exists(info_path):
    tf.io.gfile.remove(info_path)  # the parts are about to change
  # Parts are made in a local staging folder (TFDS writes there): inside data_dir when it is
  # local, so moving a part into place is a rename; else in the temporary folder.
  staging_root = _join(data_dir, '.staging') if '://' not in data_dir else os.path.join(
      tempfile.gettempdir(), f'mode_pax_staging.{_hash(data_dir)[:16]}')
  if os.path.exists(staging_root):
    shutil.rmtree(staging_root)  # left by an interrupted build

  # 1. Fetch, verify, extract.
  downloads = _join(data_dir, 'downloads')
  manifest_dir = os.path.dirname(os.path.abspath(manifest.path))
  docs_by_dataset: dict[str, list[sources_lib.Document]] = collections.defaultdict(list)
  for source in manifest.sources:
    path = sources_lib.fetch(source, downloads, manifest_dir, config.pip_index_url)
    docs = sources_lib.extract(source, path)
    logging.info('%s: %d documents', source.name, len(docs))
    docs_by_dataset[DOMAIN_TO_DATASET[source.domain]].extend(docs)
  for dataset in DATASETS:
    if not docs_by_dataset.get(dataset):
      raise errors.BadSourceTextError(dataset, 'no source in the manifest provides this '
                                      'dataset.', 'add one to data/sources.json')

  # 2. Split by unit; drop exact duplicate documents (train copies win).
  splits: dict[str, dict[str, list[sources_lib.Document]]] = {}
  removed = collections.Counter()
  seen_docs: set[str] = set()
  for dataset in DATASETS:
    by_split = assign_splits(docs_by_dataset[dataset], dataset, manifest.config, config.seed)
    for split in SPLITS:
      kept = []
      for d in by_split[split]:
        h = _hash(d.text)
        if h in seen_docs:
          removed[f'{dataset}/{split}/documents'] += 1
        else:
          seen_docs.add(h)
          kept.append(d)
      by_split[split] = kept
    splits[dataset] = by_split

  # 3. Vocabulary: vocab/spm.model, or vocab/tokenizer.json for a --tokenizer.
  skipped = []
  vocab_dir = part_dir(data_dir, 'vocab')
  vocab_file = VOCAB_FILES['bpe' if bpe else 'sentencepiece']
  if part_is_complete(data_dir, 'vocab', fingerprint):
    skipped.append('vocab')
    with tf.io.gfile.GFile(_join(vocab_dir, vocab_file), 'rb') as f:
      model_proto = f.read()
  else:
    if bpe:
      model_proto, made = bpe_json, {'given': config.tokenizer}
    elif given_vocab:
      model_proto, made = given_vocab, {'given': config.spm_model}
    else:
      sentences = _spm_sentences({d: splits[d]['train'] for d in DATASETS},
                                 config.spm_sample_bytes, config.seed)
      model_proto = train_vocabulary(sentences, config.vocab_size, config.spm_hard_vocab_limit)
      made = {'sentences': len(sentences)}
    staging = os.path.join(staging_root, f'vocab.{uuid.uuid4().hex[:8]}')
    os.makedirs(staging)
    _write_bytes(os.path.join(staging, vocab_file), model_proto)
    _write_json(os.path.join(staging, MARKER),
                {'fingerprint': fingerprint, 'files': _record_files(staging), **made})
    _publish(staging, vocab_dir, MARKER)
  if bpe:
    vocab_info = {'kind': 'bpe', 'size': bpe.get_vocab_size(with_added_tokens=True), 'pad_id': 0,
                  **{k: bpe_ids[k] for k in ('eos_id', 'unk_id', 'bos_id')}}
  else:
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    vocab_info = {'kind': 'sentencepiece', 'size': sp.get_piece_size(), 'pad_id': 0,
                  'eos_id': sp.eos_id(), 'unk_id': sp.unk_id(), 'bos_id': sp.bos_id()}
  vocab_info.update({'file': f'vocab/{vocab_file}',
                     'sha256': hashlib.sha256(model_proto).hexdigest()})
  if config.tokenizer or config.spm_model:
    vocab_info['given'] = config.tokenizer or config.spm_model

  # 4. Examples, deduplicated across all datasets and splits (train first).
  chunker = Chunker(bpe or model_proto, config.example_length - 1)
  examples: dict[str, dict[str, list[Example]]] = {}
  seen_examples: set[str] = set()
  for split in SPLITS:
    for dataset in DATASETS:
      kept = []
      for d in splits[dataset][split]:
        for text in chunker.chunk(d.text):
          h = _hash(text)
          if h in seen_examples:
            removed[f'{dataset}/{split}/examples'] += 1
            continue
          seen_examples.add(h)
          kept.append(Example(text, d.doc_id))
      for ex, n in zip(kept, chunker.count([e.text for e in kept])):
        ex.num_tokens = n
      if split == 'train':
        random.Random(f'{config.seed}:{dataset}').shuffle(kept)
      examples.setdefault(dataset, {})[split] = kept

  # 5. Write each dataset as a config of the TFDS dataset mode_corpus.
  sizes = size_variants(config, len(examples['code']['train']), len(examples['math']['train']))
  datasets_info = {}
  for dataset in DATASETS:
    stats = {s: _stats(examples[dataset][s], len(splits[dataset][s])) for s in SPLITS}
    datasets_info[dataset] = {
        'tfds_name': mode_corpus.tfds_name(dataset),
        'dir': mode_corpus.relative_dir(dataset),
        'stats': stats}
    if part_is_complete(data_dir, dataset, fingerprint):
      skipped.append(dataset)
      continue
    metadata = {'fingerprint': fingerprint, 'example_length': config.example_length,
                'vocab': vocab_info, 'stats': stats}
    tfds_root = os.path.join(staging_root, f'{dataset}.{uuid.uuid4().hex[:8]}')
    staged = mode_corpus.prepare(dataset, examples[dataset], metadata, tfds_root)
    _write_json(os.path.join(staged, MARKER),
                {'fingerprint': fingerprint, 'files': _record_files(staged)})
    # TFDS's marker of which config `tfds.load('mode_corpus')` reads; the same in every build.
    default_config = os.path.join(tfds_root, mode_corpus.NAME, '.config', 'metadata.json')
    if os.path.exists(default_config):
      _publish(os.path.dirname(default_config), _join(data_dir, mode_corpus.NAME, '.config'),
               'metadata.json')
    _publish(staged, part_dir(data_dir, dataset), MARKER)
  if os.path.exists(staging_root):  # none when every part was already there
    shutil.rmtree(staging_root)

  info = {
      'fingerprint': fingerprint,
      'format_version': BUILD_FORMAT_VERSION,
      'vocab': vocab_info,
      'example_length': config.example_length,
      'seed': config.seed,
      'datasets': datasets_info,
      'code_sizes': sizes['code_variants'],
      'mixture_sizes': sizes['mixture_variants'],
      'mixture_balanced_per_domain': sizes['balanced'][0],
      'removed_duplicates': dict(sorted(removed.items())),
      'sources': [{'name': s.name, 'domain': s.domain, 'registry': s.registry,
                   'package': s.package, 'version': s.version, 'filename': s.filename,
                   'sha256': s.sha256, 'licence': s.licence,
                   'options': s.options} for s in manifest.sources],
      'english_holdout': manifest.config.get('english_holdout'),
  }
  _write_bytes(_join(data_dir, CARD_FILE), data_card(info).encode())
  if config.card_out:
    _write_bytes(config.card_out, data_card(info, config.card_out).encode())
  _write_json(info_path, info)  # last: marks the whole build complete
  info['skipped_parts'] = skipped
  logging.info('Built %s in %.1f s (skipped: %s)', data_dir, time.time() - start, skipped)
  return info


# ---------------------------------------------------------------------------------------
# Data card.


def vocab_kind(vocab: dict[str, Any]) -> str:
  """build_info's vocab kind: 'bpe' or 'sentencepiece' (older builds record none)."""
  return vocab.get('kind', 'sentencepiece')


def _vocab_card(vocab: dict[str, Any]) -> str:
  if vocab_kind(vocab) == 'bpe':
    ids = ', '.join(f"{k}={vocab[f'{k}_id']}" for k in ('eos', 'unk', 'bos')
                    if vocab.get(f'{k}_id') is not None)
    return (f"Vocabulary: the given byte-level BPE tokenizer `{vocab['given']}` (stored as "
            f"`{vocab['file']}`), {vocab['size']} tokens ({ids}; no BOS added; seqio pads with "
            'id 0, which Pax masks).')
  if 'given' in vocab:
    return (f"Vocabulary: the given SentencePiece model `{vocab['given']}`, {vocab['size']} "
            f"pieces (eos={vocab['eos_id']}, unk={vocab['unk_id']}).")
  return (f"Vocabulary: SentencePiece unigram, {vocab['size']} pieces (pad=0, eos=1, unk=2, no "
          'bos; identity normalization, whitespace kept, byte fallback), trained on the '
          'training splits only.')


def _shown_path(path: str) -> str:
  """A path as the card shows it: relative to the repository when inside it."""
  if '://' in path:
    return path
  path = os.path.abspath(path)
  inside = os.path.commonpath([path, str(paths.REPO_ROOT)]) == str(paths.REPO_ROOT)
  return os.path.relpath(path, paths.REPO_ROOT) if inside else path


def data_card(info: dict[str, Any], card_out: str | None = None) -> str:
  """Markdown data card: per dataset and split, documents/examples/tokens/bytes; sources.

  Args:
    info: the build's build_info.
    card_out: where this copy goes, when not beside the build (its header says how it is made).
  """
  if card_out:
    made = (f'Written by `python -m mode_pax.data.build --card_out={_shown_path(card_out)}`, '
            'a copy of the card that every build (`make data`) writes beside its data, as '
            f'{CARD_FILE} in its data_dir; do not edit by hand.')
  else:
    made = ('Generated by `python -m mode_pax.data.build` (`make data`) beside the data it '
            'describes; do not edit by hand.')
  lines = [
      '# MoDE data card', '', made,
      f"Build fingerprint `{info['fingerprint']}`. " + _vocab_card(info['vocab']) +
      f" Examples hold at most {info['example_length'] - 1} tokens (+EOS = "
      f"{info['example_length']}); tokens below exclude EOS.", '',
      'Each dataset is a config of the TensorFlow Datasets dataset `mode_corpus` '
      f"(version {mode_corpus.VERSION}; features text, doc_id, num_tokens), e.g. "
      "`tfds.load('mode_corpus/code', data_dir=DATA_DIR, split='train[:100]')` with DATA_DIR "
      'the build folder (data/build by default).', '',
      '| dataset | split | documents | examples | tokens | bytes |',
      '|---|---|---:|---:|---:|---:|']
  for dataset in DATASETS:  # not the order of info's keys: build_info.json's are sorted
    d = info['datasets'][dataset]
    for split in SPLITS:
      s = d['stats'][split]
      lines.append(f"| {dataset} | {split} | {s['documents']:,} | {s['examples']:,} | "
                   f"{s['tokens']:,} | {s['bytes']:,} |")
  holdout = info.get('english_holdout') or {}
  lines += [
      '', '## Splits', '',
      '- english (Austen, Shakespeare, Milton): whole works held out; validation = '
      f"{', '.join(holdout.get('validation', []))}; test = {', '.join(holdout.get('test', []))}.",
      '- sotu (State of the Union, general English for pre-training): split by address.',
      '- code (django, networkx, sympy; tests, migrations and locale excluded): split by '
      'package folder, so no module is in two splits.',
      '- math (reasoning-gym gsm_symbolic): split by template; test templates are unseen in '
      'training.',
      '- Exact duplicates are removed: documents first, then examples, across all datasets '
      '(a copy in validation/test of anything in train is dropped). Removed: '
      + (', '.join(f'{k} {v}' for k, v in info['removed_duplicates'].items()) or 'none') + '.',
      '- Size variants train on a prefix of the training split (stored in a fixed '
      'pseudo-random order), the TFDS slice '
      f"`train[:N]`: code n = {info['code_sizes']}; Math+Code mixture sizes "
      f"{info['mixture_sizes']} (`train[:N/2]` of math and of code); full mixture "
      f"{info['mixture_balanced_per_domain']:,} examples from each domain.",
      '', '## Sources and caps', '',
      '| source | dataset domain | registry | version | sha256 | licence | options (caps) |',
      '|---|---|---|---|---|---|---|']
  for s in info['sources']:
    opts = {k: v for k, v in s['options'].items() if k not in ('works', 'member')}
    lines.append(f"| {s['package']} | {s['domain']} | {s['registry']} | {s['version']} | "
                 f"`{s['sha256'][:16]}...` | {s['licence']} | "
                 f"`{json.dumps(opts, sort_keys=True)}` |")
  return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------------------------------
# Command line.

def _define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Command-line flags (defined only when run as a program, to avoid clashes).

  Args:
    flag_values: where to define them (a test parses a command line of its own).
  """
  global _DATA_DIR, _MANIFEST, _VOCAB_SIZE, _EXAMPLE_LENGTH, _SEED, _CODE_SIZES
  global _MIXTURE_SIZES, _PIP_INDEX_URL, _CARD_OUT, _SPM_MODEL, _TOKENIZER
  fv = dict(flag_values=flag_values)
  _DATA_DIR = flags.DEFINE_string('data_dir', None, 'Output folder (local or gs://); default '
                                  '$MODE_PAX_DATA_DIR or <repo>/data/build.', **fv)
  _MANIFEST = flags.DEFINE_string('manifest', str(sources_lib.DEFAULT_MANIFEST),
                                  'Pinned source manifest.', **fv)
  _VOCAB_SIZE = flags.DEFINE_integer('vocab_size', 8192, 'SentencePiece vocabulary size.', **fv)
  _SPM_MODEL = flags.DEFINE_string(
      'spm_model', None, "Use this SentencePiece model (e.g. the paper-scale backbone's own "
      'tokenizer) instead of training one; --vocab_size is then unused.', **fv)
  _TOKENIZER = flags.DEFINE_string(
      'tokenizer', None, "Tokenize with this pre-trained LM's byte-level BPE tokenizer instead "
      "of training a SentencePiece one: a .gguf, a Hugging Face tokenizer folder or "
      "tokenizer.json, or 'smollm2' (SmolLM2-135M's, from the pinned package); stored as "
      'vocab/tokenizer.json. Not with --spm_model; --vocab_size is then unused.', **fv)
  _EXAMPLE_LENGTH = flags.DEFINE_integer('example_length', 256,
                                         'Max example length in tokens, EOS included.', **fv)
  _SEED = flags.DEFINE_integer('seed', 0, 'Split/shuffle seed.', **fv)
  _CODE_SIZES = flags.DEFINE_list('code_sizes', [str(n) for n in DEFAULT_CODE_SIZES],
                                  'Training-example counts for the Code size variants.', **fv)
  _MIXTURE_SIZES = flags.DEFINE_list('mixture_sizes', [str(n) for n in DEFAULT_MIXTURE_SIZES],
                                     'Total example counts for the Math+Code size variants.',
                                     **fv)
  _PIP_INDEX_URL = flags.DEFINE_string('pip_index_url', None,
                                       'PyPI index URL for pip download.', **fv)
  _CARD_OUT = flags.DEFINE_string(
      'card_out', None, 'Also write the data card here, e.g. data/DATA_CARD.md (the committed '
      'card of the default build); the build always writes <data_dir>/DATA_CARD.md.', **fv)


def main(argv: Sequence[str]) -> None:
  del argv
  config = BuildConfig(
      # Absolute: the fetch step runs pip in other folders (a relative --data_dir broke it).
      data_dir=absolute_data_dir(_DATA_DIR.value or default_data_dir()),
      manifest=os.path.abspath(_MANIFEST.value),
      vocab_size=_VOCAB_SIZE.value, example_length=_EXAMPLE_LENGTH.value, seed=_SEED.value,
      code_sizes=tuple(int(n) for n in _CODE_SIZES.value),
      mixture_sizes=tuple(int(n) for n in _MIXTURE_SIZES.value),
      pip_index_url=_PIP_INDEX_URL.value, card_out=_CARD_OUT.value or None,
      spm_model=_SPM_MODEL.value, tokenizer=_TOKENIZER.value)
  try:
    info = build(config)
  except errors.DataError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(f"Data ready in {config.data_dir}: vocab {info['vocab']['size']}, "
        f"skipped parts {info['skipped_parts']}; read it with e.g. "
        f"tfds.load('{mode_corpus.NAME}/code', data_dir='{config.data_dir}')")


if __name__ == '__main__':
  _define_flags()
  app.run(main)
