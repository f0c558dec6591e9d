"""Bootstrap intervals of next-token accuracy, resampling evaluation examples (not tokens).

Tokens of one example are not independent draws, so the unit resampled is the example (a
document's chunk of at most the build's example length; mode_pax.evaluate). Every run scored on
the same examples is resampled with the same indices (`resample_indices` depends only on the
task and its number of examples), so the difference of two runs' resampled accuracies is a paired
bootstrap of their difference.
"""

from __future__ import annotations

import zlib

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def resample_indices(task_name: str, num_examples: int, resamples: int = RESAMPLES
                     ) -> np.ndarray:
  """[resamples, num_examples] example indices drawn with replacement, fixed per task."""
  rng = np.random.default_rng([zlib.crc32(task_name.encode()), num_examples])
  return rng.integers(0, num_examples, size=(resamples, num_examples))


def resampled_accuracy(task_name: str, tokens: np.ndarray, correct: np.ndarray,
                       resamples: int = RESAMPLES) -> np.ndarray:
  """[resamples] accuracies (correct tokens / tokens of the resampled examples)."""
  idx = resample_indices(task_name, len(tokens), resamples)
  return correct[idx].sum(axis=1) / tokens[idx].sum(axis=1)


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
  """The percentile interval holding `level` of the resampled values."""
  tail = 100.0 * (1.0 - level) / 2.0
  low, high = np.percentile(samples, [tail, 100.0 - tail])
  return float(low), float(high)
