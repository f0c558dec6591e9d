"""Count-based n-gram reference models, scored like the Pax runs: what "knowing" a domain means.

  python -m mode_pax.ngram --exp=mode.small.Backbone [--orders=1,2,3] [--out=REPORT.md]

(`make main` puts the same models into Table 1 as reference rows: results.reference_rows.)

An order-n model predicts each next token as the most frequent follower of the previous n - 1
tokens in the training data, backing off to shorter contexts for contexts never seen (a unigram
model always predicts the most frequent token). It trains on the training splits of the
experiment's evaluation domains plus its backbone's pre-training data, and is scored on exactly
the examples the experiment's evaluation scores (`mode_pax.evaluate.eval_examples`): the same
seqio tasks, split, preprocessing, sequence length and sample, with Pax's language-model features (the input at position i
is the target at i - 1, and 0 at the start of a row), counting the same non-padding targets.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np

BOS = 0  # the input of a row's first position (seqio's LanguageModelFeatures shift in 0)


@dataclasses.dataclass
class NgramModel:
  """The most frequent next token after each context of `order - 1` tokens, with back-off.

  Attributes:
    order: n (1 = unigram).
    vocab_size: token ids are below this.
    tables: for each context length k = order - 1 ... 1: (sorted context keys, their next token).
    unigram: the most frequent token.
  """
  order: int
  vocab_size: int
  tables: dict[int, tuple[np.ndarray, np.ndarray]]
  unigram: int

  @classmethod
  def fit(cls, rows: Iterable[np.ndarray], order: int, vocab_size: int) -> 'NgramModel':
    """Counts over token rows (each a target sequence; its inputs start with BOS)."""
    if order < 1:
      raise ValueError(f'order={order}: an n-gram model needs n >= 1.')
    targets = [np.asarray(r, np.int64) for r in rows]
    if not targets or not sum(len(t) for t in targets):
      raise ValueError('No training tokens to count.')
    counts = np.bincount(np.concatenate(targets), minlength=vocab_size)
    tables = {}
    for k in range(1, order):
      keys, nexts = [], []
      for t in targets:
        keys.append(context_keys(t, k, vocab_size))
        nexts.append(t)
      tables[k] = _most_frequent_follower(np.concatenate(keys), np.concatenate(nexts),
                                          vocab_size)
    return cls(order=order, vocab_size=vocab_size, tables=tables,
               unigram=int(np.argmax(counts)))

  def predict(self, targets: np.ndarray) -> np.ndarray:
    """The predicted token at every position of one row of targets."""
    targets = np.asarray(targets, np.int64)
    predicted = np.full(targets.shape, self.unigram, np.int64)
    known = np.zeros(targets.shape, bool)
    for k in range(self.order - 1, 0, -1):  # longest context first
      keys, followers = self.tables[k]
      query = context_keys(targets, k, self.vocab_size)
      at = np.searchsorted(keys, query)
      found = (at < len(keys)) & (keys[np.minimum(at, len(keys) - 1)] == query) & ~known
      predicted[found] = followers[at[found]]
      known |= found
    return predicted


def context_keys(targets: np.ndarray, k: int, vocab_size: int) -> np.ndarray:
  """For each position i of a row, the key of its k previous inputs (BOS-padded), as an int."""
  inputs = np.concatenate([np.full(k, BOS, np.int64), np.asarray(targets, np.int64)])
  key = np.zeros(len(targets), np.int64)
  for j in range(k):  # inputs[i + j] for j < k are the k tokens before target i
    key = key * vocab_size + inputs[j:j + len(targets)]
  return key


def _most_frequent_follower(keys: np.ndarray, nexts: np.ndarray,
                            vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(sorted unique context keys, the most frequent next token of each; ties: the smallest)."""
  pairs, counts = np.unique(keys * vocab_size + nexts, return_counts=True)
  contexts, followers = pairs // vocab_size, pairs % vocab_size
  # Sort by context, then count descending, then token ascending; keep each context's first.
  order = np.lexsort((followers, -counts, contexts))
  contexts, followers = contexts[order], followers[order]
  first = np.ones(len(contexts), bool)
  first[1:] = contexts[1:] != contexts[:-1]
  return contexts[first], followers[first]


def accuracy(model: NgramModel, rows: Sequence[np.ndarray]) -> tuple[float, int]:
  """(next-token accuracy, tokens scored) over target rows (padding already removed)."""
  correct = total = 0
  for row in rows:
    row = np.asarray(row, np.int64)
    correct += int(np.sum(model.predict(row) == row))
    total += len(row)
  return (correct / total if total else float('nan')), total


def reference_scores(experiment_cls, split: str | None = None,
                     orders: Sequence[int] = (1, 2, 3)):
  """order -> eval task -> per-example scores (evaluate.TaskScores) of n-gram models on the
  examples the experiment's evaluation scores (`evaluate.eval_examples`).

  Training data: `training_tasks(experiment_cls)`.
  """
  from mode_pax import evaluate  # pylint: disable=g-import-not-at-top
  from mode_pax import paths  # pylint: disable=g-import-not-at-top
  exp = experiment_cls()
  data_dir = exp.data_dir()
  seq_len = exp.SEQUENCE_LENGTH
  train = [r for t in training_tasks(experiment_cls)
           for r in evaluate.task_rows(t, 'train', seq_len, data_dir)]
  evals = {t: evaluate.eval_examples(exp, t, split or paths.eval_split())
           for t in exp.EVAL_DATA}
  out = {}
  for n in orders:
    model = NgramModel.fit(train, n, exp.VOCAB_SIZE)
    out[n] = {}
    for t, (index, examples) in evals.items():
      tokens = np.array([sum(len(r) for r in ex) for ex in examples], np.int64)
      correct = np.array([sum(int(np.sum(model.predict(r) == r)) for r in ex)
                          for ex in examples], np.int64)
      out[n][t] = evaluate.TaskScores(index, tokens, correct, None)
  return out


def training_tasks(experiment_cls) -> list[str]:
  """The tasks whose training splits the count models learn from: the pre-training data of the
  experiment's backbone (the experiment's own for a backbone run) and its EVAL_DATA tasks, i.e.
  everything the runs of Table 1 train on; a task the pre-training mixture holds counts once."""
  exp = experiment_cls()
  backbone = exp.resolve_stage(exp.BACKBONE) if exp.BACKBONE else experiment_cls
  pretrain = backbone.TRAIN_DATA
  return [pretrain] + [t for t in exp.EVAL_DATA
                       if t not in mixture_tasks(pretrain, exp.data_dir())]


def mixture_tasks(name: str, data_dir: str) -> list[str]:
  """The tasks of a seqio mixture (a task: itself)."""
  import seqio  # pylint: disable=g-import-not-at-top
  from mode_pax.data import tasks  # pylint: disable=g-import-not-at-top
  tasks.register_tasks(data_dir)
  found = seqio.get_mixture_or_task(name)
  return [t.name for t in found.tasks] if isinstance(found, seqio.Mixture) else [name]


NAMES = {1: 'Unigram', 2: 'Bigram', 3: 'Trigram'}


def label(order: int) -> str:
  return f'{NAMES.get(order, f"{order}-gram")} count model'


def main(argv) -> None:
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from mode_pax import paths  # pylint: disable=g-import-not-at-top
  from mode_pax import registry  # pylint: disable=g-import-not-at-top
  name = flags.FLAGS.exp
  experiment_cls = registry.lookup(name)
  orders = [int(n) for n in flags.FLAGS.orders]
  result = reference_scores(experiment_cls, orders=orders)
  tasks_ = list(experiment_cls.EVAL_DATA)
  lines = [f'# n-gram reference models on the evaluation examples of `{name}`', '',
           f'Command: `python -m mode_pax.ngram --exp={name} '
           f'--orders={",".join(map(str, orders))}` (split: {paths.eval_split()}).', '',
           '| model | ' + ' | '.join(t.removeprefix('mode_') for t in tasks_) + ' | average |',
           '|---|' + '---:|' * (len(tasks_) + 1)]
  for n in orders:
    accs = [100 * result[n][t].accuracy for t in tasks_]
    lines.append(f'| {label(n)} | ' + ' | '.join(f'{a:.2f}' for a in accs)
                 + f' | {np.mean(accs):.2f} |')
  tokens = ', '.join(f'{t.removeprefix("mode_")} {int(result[orders[0]][t].tokens.sum()):,}'
                     for t in tasks_)
  lines += ['', f'Next-token accuracy (%); tokens scored per domain: {tokens}.', '']
  report = '\n'.join(lines)
  print(report)
  if flags.FLAGS.out:
    with open(flags.FLAGS.out, 'w') as f:
      f.write(report)


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top,reimported
  flags.DEFINE_string('exp', 'mode.small.Backbone', 'Experiment whose evaluation rows to score.')
  flags.DEFINE_list('orders', ['1', '2', '3'], 'n-gram orders.')
  flags.DEFINE_string('out', None, 'Markdown report (default: only print).')
  app.run(main)
