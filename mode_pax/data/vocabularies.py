r"""A pre-trained LM's own byte-level BPE tokenizer, and a seqio vocabulary over it.

The data build tokenizes with the backbone's tokenizer when given `--tokenizer` (see
`load_tokenizer`): a GGUF file (its `tokenizer.ggml.*` metadata, e.g. SmolLM2-135M's), a Hugging
Face tokenizer folder or tokenizer.json, or the name 'smollm2' (the pinned package's GGUF,
mode_pax.plms). The build stores the tokenizer as `vocab/tokenizer.json` (the `tokenizers`
library's serialization) and the seqio tasks read it with `BpeVocabulary`.

  tokenizer, ids = load_tokenizer('smollm2')        # tokenizers.Tokenizer, {'eos_id': 2, ...}
  vocab = BpeVocabulary('data/build/vocab/tokenizer.json', eos_id=2, unk_id=0)

Byte-level BPE keeps every byte of the text: decode(encode(text)) == text, whitespace
included. Encoding adds no special token (no BOS; seqio appends EOS). seqio pads with id 0
whatever token that is (for SmolLM2 `<|endoftext|>`, for GPT-2 '!'); Pax masks padding out of
the loss and metrics, so padding never trains the model, but decoding a padded row without
an EOS decodes its padding as that token.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers

SMOLLM2 = 'smollm2'  # load_tokenizer's name for the pinned SmolLM2-135M GGUF
TOKENIZER_FILE = 'tokenizer.json'
HF_CONFIG_FILE = 'tokenizer_config.json'
BYTE_LEVEL_MODEL = 'gpt2'  # tokenizer.ggml.model of byte-level BPE tokenizers

# GGUF tokenizer.ggml.token_type values (gguf.TokenType).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


def _byte_level() -> pre_tokenizers.PreTokenizer:
  """GPT-2's byte-level splitting (its regex), no space added in front of the text."""
  return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


# tokenizer.ggml.pre -> the pre-tokenizer llama.cpp applies for it. Only those that are exactly
# a `tokenizers` pre-tokenizer are here ('default' is llama.cpp's own mix of four regexes).
PRE_TOKENIZERS = {
    # SmolLM2: every digit on its own, then GPT-2's regex.
    'smollm': lambda: pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), _byte_level()]),
    'gpt-2': _byte_level,
}


class TokenizerError(ValueError):
  """A tokenizer cannot be used; the message names the file and field, and what to do."""


# ---------------------------------------------------------------------------------------
# GGUF.


def _gguf_fields(path: str) -> dict[str, Any]:
  import gguf  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise TokenizerError(f'{path}: no such GGUF file.')
  try:
    reader = gguf.GGUFReader(path)
  except (ValueError, OSError, IndexError) as e:
    raise TokenizerError(f'{path}: not a readable GGUF file ({type(e).__name__}: {e}).') from e
  return dict(reader.fields)


def _gguf_value(fields: dict[str, Any], key: str, kind: type, path: str, required: bool = True,
                fix: str = ''):
  """The value of a GGUF metadata field (a list for arrays); None when optional and absent."""
  field = fields.get(key)
  if field is None:
    if not required:
      return None
    raise TokenizerError(f'{path}: GGUF metadata field {key!r} is missing; a byte-level BPE '
                         'tokenizer needs it.' + (f' {fix}' if fix else ''))
  value = field.contents()
  items = value if isinstance(value, list) else [value]
  if not all(isinstance(v, kind) and not (kind is int and isinstance(v, bool)) for v in items):
    raise TokenizerError(f'{path}: GGUF metadata field {key!r} should hold {kind.__name__} '
                         f'values, not {type(items[0]).__name__ if items else "nothing"}.')
  return value


def tokenizer_from_gguf(path: str) -> tuple[tokenizers.Tokenizer, dict[str, int | None]]:
  """The byte-level BPE tokenizer stored in a GGUF file's metadata, and its special ids.

  Built from `tokenizer.ggml.tokens` (id order), `tokenizer.ggml.merges` (rank order) and
  `tokenizer.ggml.token_type`: control and unknown tokens become special tokens, user-defined
  ones added tokens (neither is ever split), all with their GGUF ids. The pre-tokenizer is
  the one `tokenizer.ggml.pre` names (PRE_TOKENIZERS), the decoder byte-level.

  Args:
    path: a local .gguf file.

  Returns:
    (tokenizer, {'eos_id', 'bos_id', 'unk_id', 'pad_id'}): eos from
    `tokenizer.ggml.eos_token_id` (required), bos and unk from their fields or None, pad_id 0
    (what seqio pads with; the GGUF's own padding id is not used).

  Raises:
    TokenizerError (a ValueError) naming the GGUF field and value: another tokenizer model
    (e.g. 'llama', SentencePiece: use --spm_model), an unsupported pre-tokenizer, a missing
    or inconsistent field.
  """
  fields = _gguf_fields(path)
  model = _gguf_value(fields, 'tokenizer.ggml.model', str, path)
  if model != BYTE_LEVEL_MODEL:
    what = {'llama': 'a SentencePiece tokenizer: build with --spm_model=<its tokenizer.model> '
                     '(the SentencePiece model file published with the checkpoint)',
            'bert': 'a WordPiece tokenizer, which is not supported',
            'gpt2': ''}.get(model, 'not supported')
    raise TokenizerError(
        f'{path}: GGUF metadata field tokenizer.ggml.model={model!r} is {what}; --tokenizer '
        f'takes byte-level BPE tokenizers (tokenizer.ggml.model={BYTE_LEVEL_MODEL!r}). Or pass '
        "the model's Hugging Face tokenizer.json as --tokenizer.")
  pre = _gguf_value(fields, 'tokenizer.ggml.pre', str, path, fix=(
      "Older GGUF files lack it; pass the model's Hugging Face tokenizer.json as --tokenizer."))
  if pre not in PRE_TOKENIZERS:
    raise TokenizerError(
        f'{path}: GGUF metadata field tokenizer.ggml.pre={pre!r} is a pre-tokenizer this code '
        f'does not reproduce (known: {sorted(PRE_TOKENIZERS)}). Pass the model\'s Hugging Face '
        'tokenizer.json (which spells its pre-tokenizer out) as --tokenizer instead.')
  tokens = _gguf_value(fields, 'tokenizer.ggml.tokens', str, path)
  merges = _gguf_value(fields, 'tokenizer.ggml.merges', str, path)
  types = _gguf_value(fields, 'tokenizer.ggml.token_type', int, path)
  if len(types) != len(tokens):
    raise TokenizerError(f'{path}: GGUF metadata field tokenizer.ggml.token_type has '
                         f'{len(types)} entries for {len(tokens)} tokenizer.ggml.tokens.')
  vocab = {}
  for i, token in enumerate(tokens):
    if token in vocab:
      raise TokenizerError(f'{path}: GGUF metadata field tokenizer.ggml.tokens holds {token!r} '
                           f'twice (ids {vocab[token]} and {i}).')
    vocab[token] = i
  pairs = []
  for rank, merge in enumerate(merges):
    pair = tuple(merge.split(' '))
    if len(pair) != 2 or pair[0] not in vocab or pair[1] not in vocab:
      raise TokenizerError(f'{path}: GGUF metadata field tokenizer.ggml.merges[{rank}]='
                           f'{merge!r} is not two tokens of tokenizer.ggml.tokens.')
    pairs.append(pair)

  def special(key: str, required: bool) -> int | None:
    value = _gguf_value(fields, key, int, path, required=required)
    if value is not None and not 0 <= value < len(tokens):
      raise TokenizerError(f'{path}: GGUF metadata field {key}={value} is not a token id '
                           f'(0..{len(tokens) - 1}).')
    return value

  ids = {'eos_id': special('tokenizer.ggml.eos_token_id', True),
         'bos_id': special('tokenizer.ggml.bos_token_id', False),
         'unk_id': special('tokenizer.ggml.unknown_token_id', False), 'pad_id': 0}
  # A byte without a token becomes UNK (SmolLM2 lacks 21: the control characters 0x04, 0x06,
  # 0x13, 0x14, 0x16, 0x1d and bytes that (almost) never occur in UTF-8); without UNK it
  # would vanish from the text unnoticed.
  missing = [c for c in pre_tokenizers.ByteLevel.alphabet() if c not in vocab]
  if missing and ids['unk_id'] is None:
    raise TokenizerError(f'{path}: GGUF metadata field tokenizer.ggml.unknown_token_id is '
                         f'missing, and tokenizer.ggml.tokens lacks {len(missing)} of the 256 '
                         f'byte-level tokens (e.g. {missing[0]!r}): text would be lost unnoticed.')
  unk = tokens[ids['unk_id']] if ids['unk_id'] is not None else None
  tokenizer = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs, unk_token=unk,
                                              fuse_unk=False, byte_fallback=False))
  tokenizer.pre_tokenizer = PRE_TOKENIZERS[pre]()
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.add_special_tokens([
      tokenizers.AddedToken(tokens[i], special=True, normalized=False)
      for i, t in enumerate(types) if t in (_CONTROL, _UNKNOWN)])
  tokenizer.add_tokens([tokenizers.AddedToken(tokens[i], special=False, normalized=False)
                        for i, t in enumerate(types) if t == _USER_DEFINED])
  return tokenizer, ids


# ---------------------------------------------------------------------------------------
# Hugging Face tokenizer.json.


def _read_text(path: str) -> str:
  with tf.io.gfile.GFile(path, 'rb') as f:
    return f.read().decode('utf-8')


def _token_of(config: dict[str, Any], key: str) -> str | None:
  """A special token of tokenizer_config.json: a string, or an AddedToken dict's content."""
  value = config.get(key)
  if isinstance(value, dict):
    value = value.get('content')
  return value if isinstance(value, str) else None


def tokenizer_from_hf(path: str) -> tuple[tokenizers.Tokenizer, dict[str, int | None]]:
  """A Hugging Face tokenizer: a folder with tokenizer.json, or a tokenizer.json file.

  The special tokens come from tokenizer_config.json beside tokenizer.json: `eos_token`
  (required), `bos_token` and `unk_token` (optional).

  Raises:
    TokenizerError naming the missing file or field.
  """
  if tf.io.gfile.isdir(path):
    folder, file = path, os.path.join(path, TOKENIZER_FILE)
    if not tf.io.gfile.exists(file):
      raise TokenizerError(f'{path}: the folder holds no {TOKENIZER_FILE}; a Hugging Face '
                           f'tokenizer folder holds {TOKENIZER_FILE} and {HF_CONFIG_FILE}.')
  else:
    folder, file = os.path.dirname(path), path
    if not tf.io.gfile.exists(file):
      raise TokenizerError(f'{path}: no such file.')
  try:
    tokenizer = tokenizers.Tokenizer.from_str(_read_text(file))
  except Exception as e:  # pylint: disable=broad-except  # tokenizers raises plain Exception
    raise TokenizerError(f'{file}: not a Hugging Face tokenizer.json ({e}).') from e
  config_file = os.path.join(folder, HF_CONFIG_FILE)
  if not tf.io.gfile.exists(config_file):
    raise TokenizerError(f'{config_file} is missing: it names the EOS token (eos_token) of '
                         f'{file}; put the model\'s {HF_CONFIG_FILE} beside it.')
  try:
    config = json.loads(_read_text(config_file))
  except ValueError as e:
    raise TokenizerError(f'{config_file}: not JSON ({e}).') from e
  if not isinstance(config, dict):
    raise TokenizerError(f'{config_file}: not a JSON object.')
  ids: dict[str, int | None] = {'pad_id': 0}
  for key in ('eos_token', 'bos_token', 'unk_token'):
    token = _token_of(config, key)
    if token is None:
      if key == 'eos_token':
        raise TokenizerError(f'{config_file}: field eos_token is missing (or null); seqio '
                             'appends EOS to every example.')
      ids[key.replace('_token', '_id')] = None
      continue
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
      raise TokenizerError(f'{config_file}: field {key}={token!r} is not a token of {file}.')
    ids[key.replace('_token', '_id')] = token_id
  return tokenizer, ids


# ---------------------------------------------------------------------------------------
# Any of them.

# Text a usable tokenizer gives back exactly (whitespace, digits, unicode, code).
_PROBE = ('Hello,  world!\n\n\tdef f(x):  # 12 345.6e-7\n    return x\r\n'
          "it's Ünïcödé ½ 中文 😀   \n ")


def load_tokenizer(spec: str) -> tuple[tokenizers.Tokenizer, dict[str, int | None]]:
  """The tokenizer `spec` names, checked to give text back exactly, and its special ids.

  Args:
    spec: a .gguf file (tokenizer_from_gguf), a Hugging Face tokenizer folder or tokenizer.json
      (tokenizer_from_hf), or 'smollm2': SmolLM2-135M's tokenizer from the pinned package's GGUF
      (mode_pax.plms.fetch_smollm2_gguf; downloaded once into build/plm).

  Returns:
    (tokenizer, {'eos_id', 'bos_id', 'unk_id', 'pad_id'}).

  Raises:
    TokenizerError (a ValueError) naming the file and field, checked before any download.
  """
  if not isinstance(spec, str) or not spec:
    raise TokenizerError(f'--tokenizer={spec!r}: give a .gguf file, a Hugging Face tokenizer '
                         f"folder or {TOKENIZER_FILE}, or {SMOLLM2!r}.")
  if spec == SMOLLM2:
    from mode_pax import plms  # pylint: disable=g-import-not-at-top
    tokenizer, ids = tokenizer_from_gguf(plms.fetch_smollm2_gguf())
  elif spec.endswith('.gguf'):
    tokenizer, ids = tokenizer_from_gguf(spec)
  elif spec.endswith('.json') or tf.io.gfile.isdir(spec):
    tokenizer, ids = tokenizer_from_hf(spec)
  elif not tf.io.gfile.exists(spec):
    raise TokenizerError(f'--tokenizer={spec!r}: no such file or folder, and not the name '
                         f'{SMOLLM2!r}.')
  else:
    raise TokenizerError(f'--tokenizer={spec!r}: not a .gguf file, a Hugging Face tokenizer '
                         f'folder or {TOKENIZER_FILE}. For a SentencePiece .model file use '
                         '--spm_model.')
  back = tokenizer.decode(tokenizer.encode(_PROBE, add_special_tokens=False).ids,
                          skip_special_tokens=False)
  if back != _PROBE:
    raise TokenizerError(f'{spec}: the tokenizer does not give text back exactly (decoding '
                         f'{_PROBE!r} gave {back!r}); the data build needs one that does '
                         '(byte-level BPE).')
  return tokenizer, ids


def serialize(tokenizer: tokenizers.Tokenizer) -> bytes:
  """The bytes of the tokenizer.json the build stores (the same for the same tokenizer)."""
  return tokenizer.to_str().encode('utf-8')


# ---------------------------------------------------------------------------------------
# seqio.


class BpeVocabulary(seqio.Vocabulary):
  """A seqio vocabulary over a `tokenizers` tokenizer.json (the build's vocab/tokenizer.json).

  Encoding adds no special token (seqio appends EOS); decoding keeps whitespace exactly,
  special tokens included, and stops at the first EOS (which, like SentencePiece's, decodes to
  nothing). seqio pads with id 0 whatever token that is; Pax masks padding out of the loss and
  metrics. The file is read when first needed (local or gs://, through tf.io.gfile).

  Attributes:
    tokenizer_file: the tokenizer.json.
  """

  def __init__(self, tokenizer_file: str, eos_id: int, unk_id: int | None = None):
    self.tokenizer_file = tokenizer_file
    self._eos_id = int(eos_id)
    self._unk_id = None if unk_id is None else int(unk_id)
    self._tokenizer: tokenizers.Tokenizer | None = None
    self._lock = threading.Lock()
    super().__init__(extra_ids=0)

  def __getstate__(self):
    state = self.__dict__.copy()
    del state['_tokenizer'], state['_lock']  # loaded again when needed
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._tokenizer = None
    self._lock = threading.Lock()

  @property
  def tokenizer(self) -> tokenizers.Tokenizer:
    with self._lock:
      if self._tokenizer is None:
        self._tokenizer = tokenizers.Tokenizer.from_str(_read_text(self.tokenizer_file))
      return self._tokenizer

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def unk_id(self) -> int | None:
    return self._unk_id

  @property
  def _base_vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def _encode(self, s: str) -> Sequence[int]:
    return self.tokenizer.encode(s, add_special_tokens=False).ids

  def _clean(self, ids) -> list[int]:
    """Ids up to the first EOS (excluded); ids out of range are UNK (dropped without one)."""
    ids = [int(i) for i in ids]
    if self._eos_id in ids:
      ids = ids[:ids.index(self._eos_id)]
    size = self._base_vocab_size
    if self._unk_id is None:
      return [i for i in ids if 0 <= i < size]
    return [i if 0 <= i < size else self._unk_id for i in ids]

  def _decode(self, ids) -> str:
    return self.tokenizer.decode(self._clean(ids), skip_special_tokens=False)

  def _encode_np(self, s) -> np.ndarray:
    s = s.item() if isinstance(s, np.ndarray) else s
    return np.asarray(self._encode(s.decode('utf-8')), np.int32)

  def _encode_batch_np(self, strings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    encoded = self.tokenizer.encode_batch([s.decode('utf-8') for s in strings.tolist()],
                                          add_special_tokens=False)
    lengths = np.asarray([len(e.ids) for e in encoded], np.int64)
    values = np.asarray([i for e in encoded for i in e.ids], np.int32)
    return values, lengths

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
    """A scalar string -> int32 ids [n]; a vector of strings -> a RaggedTensor [batch, None]."""
    s = tf.convert_to_tensor(s, tf.string)
    if s.shape.rank == 0:
      ids = tf.numpy_function(self._encode_np, [s], tf.int32, stateful=False)
      ids.set_shape([None])
      return ids
    if s.shape.rank != 1:
      raise ValueError(f'BpeVocabulary.encode_tf takes a string or a vector of strings, not '
                       f'shape {s.shape}.')
    values, lengths = tf.numpy_function(self._encode_batch_np, [s], [tf.int32, tf.int64],
                                        stateful=False)
    values.set_shape([None])
    lengths.set_shape(s.shape)
    return tf.RaggedTensor.from_row_lengths(values, lengths)

  def _decode_batch_np(self, rows: np.ndarray) -> np.ndarray:
    return np.asarray([self._decode(row).encode('utf-8') for row in rows], dtype=object)

  def _decode_tf(self, ids: tf.Tensor | tf.RaggedTensor) -> tf.Tensor:
    """int ids [..., n] -> strings [...] (a RaggedTensor [batch, None] -> strings [batch])."""
    if isinstance(ids, tf.RaggedTensor):
      # Rows padded with EOS decode as the rows themselves (decoding stops at EOS).
      ids = ids.to_tensor(default_value=self._eos_id)
    ids = tf.convert_to_tensor(ids)
    shape = tf.shape(ids)
    rows = tf.reshape(ids, [-1, shape[-1]])
    texts = tf.numpy_function(self._decode_batch_np, [rows], tf.string, stateful=False)
    texts = tf.reshape(texts, shape[:-1])
    texts.set_shape(ids.shape[:-1])
    return texts

  def __eq__(self, other) -> bool:
    if not isinstance(other, BpeVocabulary):
      return False
    return (self._eos_id, self._unk_id, self.tokenizer.to_str()) == (
        other._eos_id, other._unk_id, other.tokenizer.to_str())  # pylint: disable=protected-access

  __hash__ = None

  def __str__(self) -> str:
    return (f'BpeVocabulary(file={self.tokenizer_file}, size={self._base_vocab_size}, '
            f'eos_id={self._eos_id}, unk_id={self._unk_id})')
