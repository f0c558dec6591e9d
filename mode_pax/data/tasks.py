"""seqio tasks and mixtures for MoDE, read from the TFDS dataset `mode_corpus`.

Names (splits `train`, `validation`, `test`):
  mode_english_pretrain  literature training works + State of the Union (backbone pre-training)
  mode_english           literature; validation/test are held-out works (retention eval)
  mode_code, mode_math   the target domains
  mode_math_code         the Math+Code mixture: equal numbers of training examples from each
  mode_code_n{N}         Code with N training examples (Figure 3)
  mode_math_code_n{N}    Math+Code with N training examples, N/2 from each (Figure 5)
  mode_sotu, mode_math_n{N}  the parts of the mixtures (State of the Union; Math, N examples)
Size variants train on the first N examples of the (shuffled) training split, the TFDS slice
`train[:N]`, and share the full validation and test splits.

Tasks read one `mode_corpus` config each (seqio.TfdsDataSource); mode_english_pretrain and the
Math+Code mixtures are seqio Mixtures of two tasks with rates equal to their training examples,
so every training example is equally likely, as if the two were one dataset; an evaluation pass
(one epoch) reads every example of both once.

Every task yields `targets` (int32 token ids, EOS appended) under the build's vocabulary: its
SentencePiece model (seqio.SentencePieceVocabulary), or, for a build made with --tokenizer, the
pre-trained LM's byte-level BPE tokenizer (vocabularies.BpeVocabulary). Examples longer than the
requested `targets` length are cut into several examples, never silently truncated.
"""

import functools
import os
from typing import Any

import seqio
import tensorflow as tf

from mode_pax.data import build as build_lib
from mode_pax.data import errors
from mode_pax.data import mode_corpus
from mode_pax.data import vocabularies

ENGLISH_PRETRAIN = 'mode_english_pretrain'
ENGLISH = 'mode_english'
SOTU = 'mode_sotu'
CODE = 'mode_code'
MATH = 'mode_math'
MATH_CODE = 'mode_math_code'
SPLITS = build_lib.SPLITS
_DATASET_TASKS = {'english': ENGLISH, 'sotu': SOTU, 'code': CODE, 'math': MATH}
_join = build_lib._join  # pylint: disable=protected-access  # local paths and gs:// alike

# Name -> (data_dir, build fingerprint) it was registered for.
_registered: dict[str, tuple[str, str]] = {}


def resolve_data_dir(data_dir: str | None = None) -> str:
  """data_dir, else $MODE_PAX_DATA_DIR or data/build; made absolute (no file system access)."""
  return build_lib.absolute_data_dir(data_dir or build_lib.default_data_dir())


def _not_built(data_dir: str, what: str) -> errors.DataNotBuiltError:
  return errors.DataNotBuiltError(
      data_dir, f'{what}: the MoDE data is not built (or a build did not finish) here.',
      errors.build_fix(data_dir))


def _check_error(data_dir: str, problems: list[build_lib.Problem]) -> errors.DataNotBuiltError:
  """The error for a build's problems: the first file in the message's head, then the rest."""
  first, rest = problems[0], problems[1:]
  more = ''.join(f' Also: {p.path} {p.problem}' for p in rest[:5])
  more += f' (and {len(rest) - 5} more)' if len(rest) > 5 else ''
  if not any(p.damaged for p in problems):
    return errors.DataNotBuiltError(
        first.path, f'{first.problem}{more} The MoDE data in {data_dir} is not completely '
        'built.', errors.build_fix(data_dir))
  return errors.DataDamagedError(
      first.path, f'{first.problem}{more} The MoDE data build in {data_dir} is damaged.',
      errors.build_fix(data_dir, ', which rebuilds the damaged parts'))


@functools.lru_cache(maxsize=None)
def _load_info(data_dir: str, mtime_key: Any) -> dict[str, Any]:
  del mtime_key
  return build_lib.read_json(_join(data_dir, build_lib.INFO_FILE))


def build_info(data_dir: str | None = None) -> dict[str, Any]:
  """The build's build_info.json, once the build is checked complete and intact.

  Every call checks that each file the build recorded (the vocabulary, every file of each
  mode_corpus config) is there with the size the build wrote; its sha256 is compared once per
  file version and process (the whole default build hashes in well under a second).
  paxml.main runs this through the experiment's validate(), before anything trains.

  Raises:
    DataNotBuiltError: the build is missing, unfinished or of an older format;
      DataDamagedError (a subclass) when a file of it is truncated, missing or changed. The
      message names the file and the command that fixes it.
  """
  data_dir = resolve_data_dir(data_dir)
  path = _join(data_dir, build_lib.INFO_FILE)
  if not tf.io.gfile.exists(path):
    raise _not_built(data_dir, f'{path} is missing')
  stat = tf.io.gfile.stat(path)
  try:
    info = _load_info(data_dir, (stat.mtime_nsec, stat.length))
  except ValueError as e:  # e.g. truncated
    raise _check_error(data_dir, [build_lib.Problem(path, f'is not valid JSON ({e}).')]) from e
  if not isinstance(info, dict):
    raise _check_error(data_dir, [build_lib.Problem(path, 'does not hold a build record.')])
  if info.get('format_version') != build_lib.BUILD_FORMAT_VERSION:
    raise _not_built(data_dir, f"{path} is from an older build (format "
                     f"{info.get('format_version')}; this code reads format "
                     f'{build_lib.BUILD_FORMAT_VERSION})')
  problems = [p for part in build_lib.PARTS
              for p in build_lib.check_part(data_dir, part, info.get('fingerprint'))]
  if problems:
    raise _check_error(data_dir, problems)
  return info


def vocabulary(data_dir: str | None = None) -> seqio.Vocabulary:
  """The build's vocabulary: BpeVocabulary for a --tokenizer build, else SentencePiece."""
  data_dir = resolve_data_dir(data_dir)
  vocab = build_info(data_dir)['vocab']
  path = _join(data_dir, vocab['file'])
  if build_lib.vocab_kind(vocab) == 'bpe':
    return vocabularies.BpeVocabulary(path, eos_id=vocab['eos_id'], unk_id=vocab['unk_id'])
  return seqio.SentencePieceVocabulary(path)


def vocab_size(data_dir: str | None = None) -> int:
  """Number of tokens of the build's vocabulary (the model's vocabulary size)."""
  return int(build_info(data_dir)['vocab']['size'])


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


def _train_slice(train_examples: int | None) -> str:
  return 'train' if train_examples is None else f'train[:{train_examples}]'


def _task(name: str, dataset: str, train_examples: int | None, data_dir: str,
          vocab: seqio.Vocabulary) -> seqio.Task:
  splits = {split: split for split in SPLITS}
  splits['train'] = _train_slice(train_examples)
  return seqio.Task(
      name,
      # read_only: a missing config is an error, never something seqio tries to generate.
      source=seqio.TfdsDataSource(tfds_name=mode_corpus.tfds_name(dataset),
                                  tfds_data_dir=data_dir, splits=splits, read_only=True),
      preprocessors=[functools.partial(seqio.preprocessors.rekey, key_map={'targets': 'text'}),
                     seqio.preprocessors.tokenize, split_to_length,
                     seqio.preprocessors.append_eos_after_trim],
      output_features={'targets': seqio.Feature(vocab, add_eos=True, dtype=tf.int32)},
      metric_fns=[])


def task_specs(info: dict[str, Any]) -> dict[str, tuple[str, int | None]]:
  """Task name -> (mode_corpus config, training examples or None for the whole split)."""
  specs = {name: (dataset, None) for dataset, name in _DATASET_TASKS.items()}
  halves = {m // 2 for m in info['mixture_sizes']} | {info['mixture_balanced_per_domain']}
  for n in sorted(set(info['code_sizes']) | halves):
    specs[f'{CODE}_n{n}'] = ('code', n)
  for n in sorted(halves):
    specs[f'{MATH}_n{n}'] = ('math', n)
  return specs


def mixture_specs(info: dict[str, Any]) -> dict[str, tuple[str, ...]]:
  """Mixture name -> its tasks (see task_specs)."""
  k = info['mixture_balanced_per_domain']
  specs = {ENGLISH_PRETRAIN: (ENGLISH, SOTU), MATH_CODE: (f'{MATH}_n{k}', f'{CODE}_n{k}')}
  for n in info['mixture_sizes']:
    specs[f'{MATH_CODE}_n{n}'] = (f'{MATH}_n{n // 2}', f'{CODE}_n{n // 2}')
  return specs


def _task_train_examples(info: dict[str, Any], task_name: str) -> int:
  dataset, n = task_specs(info)[task_name]
  return info['datasets'][dataset]['stats']['train']['examples'] if n is None else n


def num_train_examples(task_name: str, data_dir: str | None = None) -> int:
  """Training examples (documents, before cutting to length) of a registered task's build."""
  data_dir = resolve_data_dir(data_dir)
  info = build_info(data_dir)
  mixtures = mixture_specs(info)
  if task_name in mixtures:
    return sum(_task_train_examples(info, t) for t in mixtures[task_name])
  if task_name not in task_specs(info):
    raise ValueError(f'{task_name!r} is not a MoDE task of the build in {data_dir}; use one '
                     f'of {sorted(task_specs(info)) + sorted(mixtures)}.')
  return _task_train_examples(info, task_name)


def _forget(name: str) -> None:
  seqio.TaskRegistry.remove(name)
  seqio.MixtureRegistry.remove(name)


def register_tasks(data_dir: str | None = None) -> list[str]:
  """Registers all MoDE tasks and mixtures for the build in data_dir (idempotent).

  Returns their names (tasks, then mixtures). Raises DataNotBuiltError (naming the command
  that builds the data) when the build is missing or incomplete.
  """
  data_dir = resolve_data_dir(data_dir)
  info = build_info(data_dir)
  key = (data_dir, info['fingerprint'])
  tasks, mixtures = task_specs(info), mixture_specs(info)
  names = list(tasks) + list(mixtures)
  if all(_registered.get(n) == key for n in names) and all(
      n in seqio.TaskRegistry.names() for n in tasks) and all(
          n in seqio.MixtureRegistry.names() for n in mixtures):
    return names
  # seqio memoizes TFDS builders per (name, data_dir): drop those of an earlier build here.
  memo = seqio.utils.LazyTfdsLoader._MEMOIZED_BUILDERS  # pylint: disable=protected-access
  for builder_key in [k for k in memo if k[1] == data_dir]:
    del memo[builder_key]
  vocab = vocabulary(data_dir)
  for name, (dataset, n) in tasks.items():
    _forget(name)
    seqio.TaskRegistry.add_provider(name, _task(name, dataset, n, data_dir, vocab))
    _registered[name] = key
  for name, parts in mixtures.items():
    _forget(name)
    seqio.MixtureRegistry.add(
        name, [(part, _task_train_examples(info, part)) for part in parts],
        # Not the default (stop at the first empty task): one epoch reads every example once.
        sample_fn=functools.partial(tf.data.Dataset.sample_from_datasets,
                                    stop_on_empty_dataset=False))
    _registered[name] = key
  return names
