"""The training batches of an MPMD run: the experiment's own Pax input, the same in every process.

A Pax run reads its training input through the experiment's `datasets()` (a seqio `SeqIOInput`
for the mode_pax experiments); each process of an SPMD run reads its own share
(`infeed_host_index` of `num_infeed_hosts`). An MPMD step needs the whole batch in every process
that owns a mesh (the batch is placed on every mesh; nothing is transferred), so every process
reads the whole stream as host 0 of 1, with the experiment's shuffle seed: the same batches in the
same order everywhere.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


class InputError(ValueError):
  """The experiment's training input cannot feed an MPMD run; the message says why and the fix."""


def train_input_params(exp, name: str):
  """The experiment's training input config, set to read the whole stream (host 0 of 1)."""
  datasets = exp.datasets()
  train = [p for p in datasets if getattr(p, 'is_training', False)]
  if not train:
    raise InputError(
        f'{name} has no training input (its datasets() returns '
        f'{"nothing" if not datasets else "only evaluation inputs"}); train it on random tokens '
        'with --data=synthetic (a benchmark run), or give it a training input.')
  params = train[0]
  if getattr(params, 'input_random_seed', 0) is None:
    raise InputError(
        f'{name}: its training input has no shuffle seed (input_random_seed=None, e.g. '
        'TRAIN_DATA_SEED=None): each process would shuffle differently and read other batches. '
        'Give it a seed.')
  params.num_infeed_hosts = 1
  params.infeed_host_index = 0
  return params


def batches(exp, name: str, specs, start_step: int = 0) -> Iterator[object]:
  """The batches of steps start_step, start_step + 1, ... as host arrays with the keys and shapes
  of `specs` (the model's batch specs).

  A resume skips the first `start_step` batches (reads and drops them) rather than restoring the
  input's position: the position would be per-process state in the checkpoint, and the skip is
  exact because the order is a function of the seed alone (cost: reading start_step batches).
  """
  from praxis import base_hyperparams  # pylint: disable=g-import-not-at-top
  from praxis import py_utils  # pylint: disable=g-import-not-at-top
  train = base_hyperparams.instantiate(train_input_params(exp, name))
  for _ in range(start_step):
    train.get_next()
  while True:
    batch = train.get_next()
    out = {}
    for key, spec in specs.items():
      value = np.asarray(batch[key]).astype(spec.dtype)
      if value.shape != tuple(spec.shape):
        raise InputError(f'{name}: the training input gives {key} of shape {value.shape}, the '
                         f'model expects {tuple(spec.shape)} (TRAIN_BATCH_SIZE, '
                         'SEQUENCE_LENGTH).')
      out[key] = value
    yield py_utils.NestedMap(out)
