"""n-gram reference models against a direct count over the same tokens (collections.Counter)."""

import collections

import numpy as np
import pytest

from mode_pax import ngram


def _counter_predictions(train_rows, row, order):
  """The explicit definition: most frequent follower of the longest seen context (BOS = 0
  before each row), ties to the smallest token, unigram last."""
  follow = collections.defaultdict(collections.Counter)
  unigram = collections.Counter()
  for r in train_rows:
    inputs = [0] * (order - 1) + list(r)
    for i, tok in enumerate(r):
      unigram[tok] += 1
      for k in range(1, order):
        follow[tuple(inputs[order - 1 + i - k:order - 1 + i])][tok] += 1
  best = lambda c: min(c, key=lambda t: (-c[t], t))
  out = []
  inputs = [0] * (order - 1) + list(row)
  for i in range(len(row)):
    for k in range(order - 1, 0, -1):
      ctx = tuple(inputs[order - 1 + i - k:order - 1 + i])
      if ctx in follow:
        out.append(best(follow[ctx]))
        break
    else:
      out.append(best(unigram))
  return out


@pytest.mark.parametrize('order', [1, 2, 3, 4])
def test_predictions_equal_a_direct_count_with_back_off(order):
  rng = np.random.default_rng(order)
  # A skewed vocabulary of 12 tokens, so that counts and ties both happen.
  train = [rng.choice(12, size=rng.integers(3, 40), p=np.r_[[0.3, 0.2], [0.05] * 10])
           for _ in range(30)]
  test = [rng.integers(0, 14, size=25) for _ in range(5)]  # 12, 13: never seen in training
  model = ngram.NgramModel.fit(train, order, vocab_size=14)
  for row in test:
    assert list(model.predict(row)) == _counter_predictions(train, row, order)


def test_a_deterministic_sequence_is_learned_exactly_by_the_right_order():
  # After (a, b) always comes c, after (x, b) always d: bigram contexts cannot tell them apart.
  train = [np.array([1, 2, 3, 5, 2, 4, 1, 2, 3, 5, 2, 4])] * 3
  test = [np.array([1, 2, 3, 5, 2, 4])]
  trigram = ngram.NgramModel.fit(train, 3, vocab_size=6)
  bigram = ngram.NgramModel.fit(train, 2, vocab_size=6)
  acc3, n3 = ngram.accuracy(trigram, test)
  acc2, _ = ngram.accuracy(bigram, test)
  assert n3 == 6
  assert acc3 == 1.0 and acc2 < 1.0
