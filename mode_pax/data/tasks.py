"""seqio tasks for MoDE: English, Code, Math, the Math+Code mixture and size variants.

Names (splits `train`, `validation`, `test`):
  mode_english_pretrain  literature training works + State of the Union (backbone pre-training)
  mode_english           literature; validation/test are held-out works (retention eval)
  mode_code, mode_math   the target domains
  mode_math_code         the Math+Code mixture: equal numbers of training examples from each
  mode_code_n{N}         Code with N training examples (Figure 3)
  mode_math_code_n{N}    Math+Code with N training examples, N/2 from each (Figure 5)
Size variants share the full validation and test splits.

Every task yields `targets` (int32 token ids, EOS appended). Examples longer than the
requested `targets` length are cut into several examples, never silently truncated.
"""

import functools
import os
from typing import Any

import seqio
import tensorflow as tf

from mode_pax.data import build as build_lib
from mode_pax.data import errors

ENGLISH_PRETRAIN = 'mode_english_pretrain'
ENGLISH = 'mode_english'
CODE = 'mode_code'
MATH = 'mode_math'
MATH_CODE = 'mode_math_code'
SPLITS = build_lib.SPLITS

FEATURE_DESCRIPTION = {
    'text': tf.io.FixedLenFeature([], tf.string),
    'doc_id': tf.io.FixedLenFeature([], tf.string),
    'num_tokens': tf.io.FixedLenFeature([], tf.int64),
}

_registered: dict[str, str] = {}  # task name -> data_dir it was registered for


def resolve_data_dir(data_dir: str | None = None) -> str:
  data_dir = data_dir or build_lib.default_data_dir()
  return data_dir if '://' in data_dir else os.path.abspath(data_dir)


def _not_built(data_dir: str, what: str) -> errors.DataNotBuiltError:
  return errors.DataNotBuiltError(
      data_dir, f'{what}: the MoDE data is not built (or a build did not finish) here.',
      f'run `{errors.BUILD_COMMAND}` (python -m mode_pax.data.build --data_dir={data_dir})')


@functools.lru_cache(maxsize=None)
def _load_info(data_dir: str, mtime_key: Any) -> dict[str, Any]:
  del mtime_key
  return build_lib.read_json(os.path.join(data_dir, build_lib.INFO_FILE) if '://' not in
                             data_dir else f'{data_dir}/{build_lib.INFO_FILE}')


def build_info(data_dir: str | None = None) -> dict[str, Any]:
  """The build's build_info.json; DataNotBuiltError if the build is missing or partial."""
  data_dir = resolve_data_dir(data_dir)
  path = build_lib._join(data_dir, build_lib.INFO_FILE)  # pylint: disable=protected-access
  if not tf.io.gfile.exists(path):
    raise _not_built(data_dir, f'{path} is missing')
  stat = tf.io.gfile.stat(path)
  info = _load_info(data_dir, (stat.mtime_nsec, stat.length))
  for part in ('vocab',) + build_lib.DATASETS:
    if not build_lib.part_is_complete(data_dir, part, info['fingerprint']):
      raise _not_built(data_dir, f'part {part!r} is missing or from another build')
  return info


def vocabulary(data_dir: str | None = None) -> seqio.SentencePieceVocabulary:
  data_dir = resolve_data_dir(data_dir)
  info = build_info(data_dir)
  return seqio.SentencePieceVocabulary(build_lib._join(data_dir, info['vocab']['file']))  # pylint: disable=protected-access


def vocab_size(data_dir: str | None = None) -> int:
  """Number of SentencePiece pieces (the model's vocabulary size)."""
  return int(build_info(data_dir)['vocab']['size'])


@seqio.map_over_dataset
def _text_to_targets(ex):
  return {'targets': ex['text']}


def split_to_length(dataset: tf.data.Dataset, sequence_length=None,
                    output_features=None) -> tf.data.Dataset:
  """Cuts token sequences into pieces that fit `targets` length (minus EOS)."""
  if not sequence_length or sequence_length.get('targets') is None:
    return dataset
  max_len = sequence_length['targets']
  if output_features is None or output_features['targets'].add_eos:
    max_len -= 1

  def _split(ex):
    targets = ex['targets']
    size = tf.size(targets)
    num = tf.maximum((size + max_len - 1) // max_len, 1)
    lengths = tf.concat([tf.fill([num - 1], max_len), [size - (num - 1) * max_len]], 0)
    pieces = tf.RaggedTensor.from_row_lengths(targets, tf.cast(lengths, tf.int64))
    return tf.data.Dataset.from_tensor_slices({'targets': pieces})

  return dataset.flat_map(_split)


def _task(name: str, split_files: dict[str, list[str]], num_examples: dict[str, int],
          vocab: seqio.Vocabulary) -> seqio.Task:
  return seqio.Task(
      name,
      source=seqio.TFExampleDataSource(split_files, FEATURE_DESCRIPTION,
                                       num_input_examples=num_examples),
      preprocessors=[_text_to_targets, seqio.preprocessors.tokenize, split_to_length,
                     seqio.preprocessors.append_eos_after_trim],
      output_features={'targets': seqio.Feature(vocab, add_eos=True, dtype=tf.int32)},
      metric_fns=[])


def task_specs(info: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
  """Task name -> split -> dataset file keys ('code/train', 'code/train_n100', ...)."""
  whole = lambda *ds: {s: [f'{d}/{s}' for d in ds] for s in SPLITS}
  specs = {
      ENGLISH_PRETRAIN: whole('english', 'sotu'),
      ENGLISH: whole('english'),
      CODE: whole('code'),
      MATH: whole('math'),
  }
  k = info['mixture_balanced_per_domain']
  specs[MATH_CODE] = {**whole('math', 'code'), 'train': [f'math/train_n{k}', f'code/train_n{k}']}
  for n in info['code_sizes']:
    specs[f'{CODE}_n{n}'] = {**whole('code'), 'train': [f'code/train_n{n}']}
  for n in info['mixture_sizes']:
    specs[f'{MATH_CODE}_n{n}'] = {**whole('math', 'code'),
                                  'train': [f'math/train_n{n // 2}', f'code/train_n{n // 2}']}
  return specs


def _num_examples(info: dict[str, Any], key: str) -> int:
  dataset, split = key.split('/')
  if split.startswith('train_n'):
    return int(split[len('train_n'):])
  return info['datasets'][dataset]['stats'][split]['examples']


def num_train_examples(task_name: str, data_dir: str | None = None) -> int:
  """Training examples (documents, before cutting to length) of a registered task's build."""
  info = build_info(resolve_data_dir(data_dir))
  return sum(_num_examples(info, k) for k in task_specs(info)[task_name]['train'])


def register_tasks(data_dir: str | None = None) -> list[str]:
  """Registers all MoDE tasks for the build in data_dir (idempotent); returns their names."""
  data_dir = resolve_data_dir(data_dir)
  info = build_info(data_dir)
  vocab = None
  names = []
  for name, spec in task_specs(info).items():
    names.append(name)
    if _registered.get(name) == data_dir and name in seqio.TaskRegistry.names():
      continue
    vocab = vocab or vocabulary(data_dir)
    files = {}
    for split, keys in spec.items():
      files[split] = [build_lib._join(data_dir, info['datasets'][k.split('/')[0]]['files'][  # pylint: disable=protected-access
          k.split('/')[1]]) for k in keys]
    counts = {s: sum(_num_examples(info, k) for k in keys) for s, keys in spec.items()}
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add_provider(name, _task(name, files, counts, vocab))
    _registered[name] = data_dir
  return names
