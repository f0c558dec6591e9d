"""Intervals: bootstrap over examples (against normal approximations) and Student t over seeds
(against the tabulated t quantile), and the seeds table built from them."""

import csv

import numpy as np
import pytest

from mode_pax import bootstrap
from mode_pax import results


def test_interval_of_one_token_examples_matches_the_binomial_normal_approximation():
  rng = np.random.default_rng(0)
  n, p = 4000, 0.3
  correct = (rng.random(n) < p).astype(np.int64)
  tokens = np.ones(n, np.int64)
  low, high = bootstrap.interval(bootstrap.resampled_accuracy('mode_code', tokens, correct))
  p_hat = correct.mean()
  half = 1.96 * np.sqrt(p_hat * (1 - p_hat) / n)  # Wald interval, close for n this large
  assert low == pytest.approx(p_hat - half, abs=0.003)
  assert high == pytest.approx(p_hat + half, abs=0.003)


def test_examples_are_resampled_whole_not_their_tokens():
  """Long examples that are all right or all wrong: the interval is as wide as that of a few
  examples, far wider than a token-level interval would be."""
  n = 200
  tokens = np.full(n, 100, np.int64)
  correct = np.where(np.arange(n) % 2 == 0, 100, 0)
  low, high = bootstrap.interval(bootstrap.resampled_accuracy('mode_math', tokens, correct))
  half = 1.96 * np.sqrt(0.25 / n)  # n examples of p = 0.5, not 100 n tokens
  assert (high - low) / 2 == pytest.approx(half, rel=0.1)


def test_paired_differences_use_the_same_examples():
  rng = np.random.default_rng(1)
  n = 3000
  tokens = rng.integers(1, 50, size=n)
  a = rng.binomial(tokens, 0.4)
  b = np.minimum(tokens, a + rng.binomial(1, 0.5, size=n))  # b = a plus about 0.5 per example
  diff = (bootstrap.resampled_accuracy('mode_english', tokens, b)
          - bootstrap.resampled_accuracy('mode_english', tokens, a))
  low, high = bootstrap.interval(diff)
  # Ratio-estimator delta method for sum(b - a) / sum(tokens) over examples.
  d = (b - a).astype(float)
  r = d.sum() / tokens.sum()
  se = np.sqrt(np.sum((d - r * tokens) ** 2)) / tokens.sum()
  assert low == pytest.approx(r - 1.96 * se, abs=0.15 * se)
  assert high == pytest.approx(r + 1.96 * se, abs=0.15 * se)
  # Same run twice: no difference at all in any resample.
  same = (bootstrap.resampled_accuracy('mode_english', tokens, a)
          - bootstrap.resampled_accuracy('mode_english', tokens, a))
  assert bootstrap.interval(same) == (0.0, 0.0)


def test_seed_interval_is_students_t_over_seeds():
  values = [14.2, 15.1, 13.6]
  mean, low, high = results.seed_interval(values)
  t_975_2 = 4.302652729911275  # t quantile, 2 degrees of freedom (statistical tables)
  half = t_975_2 * np.std(values, ddof=1) / np.sqrt(3)
  assert mean == pytest.approx(np.mean(values))
  assert (low, high) == pytest.approx((mean - half, mean + half))


def test_seeds_table_pairs_differences_by_seed(tmp_path):
  keys = ('math', 'code', 'english', 'average')
  runs = {'MoDE': {0: dict(zip(keys, (20, 15, 8, 14.33))), 1: dict(zip(keys, (22, 14, 8, 14.67))),
                   2: dict(zip(keys, (21, 16, 9, 15.33)))},
          'Full FT': {0: dict(zip(keys, (21, 16, 7, 14.67))), 1: dict(zip(keys, (22, 16, 7, 15))),
                      2: dict(zip(keys, (20, 15, 8, 14.33)))}}
  md = results.write_seeds(runs, [('MoDE', 'Full FT')], str(tmp_path), scale='x', command='cmd')
  with open(tmp_path / 'seeds_x.csv') as f:
    rows = {r['row']: r for r in csv.DictReader(f)}
  paired = rows['MoDE - Full FT (paired by seed)']
  diffs = [-1, 0, 1]  # Math, seed by seed
  mean, low, high = results.seed_interval(diffs)
  assert float(paired['math_mean']) == pytest.approx(0.0)
  assert (float(paired['math_low']), float(paired['math_high'])) == pytest.approx((low, high),
                                                                                  abs=1e-4)
  assert [float(paired[f'math_seed{s}']) for s in range(3)] == diffs
  assert float(rows['MoDE']['english_mean']) == pytest.approx(25 / 3, abs=1e-4)
  text = open(md).read()
  assert 'seed 0: Math -1.00, Code -1.00, English +1.00' in text
