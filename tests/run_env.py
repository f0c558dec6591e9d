"""The environment a test's Pax runs read: its own data build and runs folder."""

import contextlib
import os

_KEYS = ('MODE_PAX_DATA_DIR', 'MODE_PAX_RUNS', 'XLA_FLAGS')


@contextlib.contextmanager
def pointed_at(data_dir, runs_dir):
  """MODE_PAX_DATA_DIR and MODE_PAX_RUNS set to a test's folders, XLA_FLAGS cleared (paxml.main
  subprocesses run on one CPU device); the previous values are restored afterwards."""
  saved = {k: os.environ.get(k) for k in _KEYS}
  os.environ.update(MODE_PAX_DATA_DIR=str(data_dir), MODE_PAX_RUNS=str(runs_dir), XLA_FLAGS='')
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
