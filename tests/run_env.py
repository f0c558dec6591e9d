"""The environment a test's Pax runs read: its own data build and runs folder."""

import contextlib
import os

_KEYS = ('MODE_PAX_DATA_DIR', 'MODE_PAX_RUNS', 'XLA_FLAGS')

# XLA flags of every test computation, in this process and in the paxml.main, evaluation and
# launcher processes tests start. The tests train tiny models for a few steps, where compiling is
# nearly all the time: XLA:CPU's LLVM optimisation took 27 of a tiny stage's 59 s, and at level 0
# (no LLVM optimisation) compiling is about 10x faster while a step is about 10x slower (the small
# Backbone's train step: 34 s -> 2.7 s to compile, 0.27 -> 2.5 s a step). Results do not depend
# on it beyond float rounding; real runs (make main) keep XLA's default.
TEST_XLA_FLAGS = '--xla_backend_optimization_level=0'


@contextlib.contextmanager
def pointed_at(data_dir, runs_dir):
  """MODE_PAX_DATA_DIR and MODE_PAX_RUNS set to a test's folders, XLA_FLAGS the tests' own without
  the virtual devices (paxml.main subprocesses run on one CPU device); the previous values are
  restored afterwards."""
  saved = {k: os.environ.get(k) for k in _KEYS}
  os.environ.update(MODE_PAX_DATA_DIR=str(data_dir), MODE_PAX_RUNS=str(runs_dir),
                    XLA_FLAGS=TEST_XLA_FLAGS)
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
