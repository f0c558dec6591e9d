"""Shared test set-up: 8 virtual CPU devices and the tests' XLA flags (set before JAX is imported
anywhere; run_env.TEST_XLA_FLAGS says why)."""

import os

import filelock
import pytest

from tests import run_env

os.environ['XLA_FLAGS'] = ' '.join(filter(None, (
    os.environ.get('XLA_FLAGS', ''), run_env.TEST_XLA_FLAGS,
    '--xla_force_host_platform_device_count=8')))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# Pax reads absl flags (e.g. --pmap_use_tensorstore) inside library calls; use their defaults.
from absl import flags  # pylint: disable=g-import-not-at-top

flags.FLAGS.mark_as_parsed()

def pytest_configure(config):
  """Starts JAX's CPU backend with the 8 devices now: JAX reads XLA_FLAGS once, when the backend
  starts, and a test that points XLA_FLAGS at its subprocesses' one device
  (`run_env.pointed_at`) would otherwise leave this process with one device if it came first."""
  del config
  import jax  # pylint: disable=g-import-not-at-top
  jax.devices()


# The Table 1 stages of tests.tiny_experiments that tiny_table1_runs trains.
TINY_TABLE1_STAGES = ('ComposeMathCode', 'FrozenExpertsMathCode', 'LoraMathCode',
                      'ComposeMathCodeGatesOfExperts')


@pytest.fixture(scope='session')
def tiny_table1_runs(tmp_path_factory):
  """(data folder, runs folder): the fixture data and the tiny Table 1 stages, with their
  upstream Backbone and experts, trained by paxml.main (4 steps each) once per test session. Under
  pytest-xdist the first worker to ask trains them while the others wait (a file lock in the
  folder the workers share). Tests may add runs to the folder but not change these."""
  # Imported here: conftest is imported before JAX is set up (above).
  from mode_pax import pipeline  # pylint: disable=g-import-not-at-top
  from mode_pax.data import build as build_lib  # pylint: disable=g-import-not-at-top
  from tests import test_data  # pylint: disable=g-import-not-at-top
  shared = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    shared = shared.parent  # each worker's basetemp is a folder of the session's
  data_dir, runs_dir = shared / 'tiny_table1' / 'data', shared / 'tiny_table1' / 'runs'
  with filelock.FileLock(str(shared / 'tiny_table1.lock')):
    done = shared / 'tiny_table1' / 'trained'
    if not done.exists():
      build_lib.build(test_data._config(data_dir))  # pylint: disable=protected-access
      with run_env.pointed_at(data_dir, runs_dir):
        pipeline.run_stages('tests.tiny_experiments', list(TINY_TABLE1_STAGES), jobs=2)
      done.touch()
  return data_dir, runs_dir


# Modules that take minutes (worker-seconds with --durations, 2 workers, December 2026:
# test_experiments ~830, test_mpmd_launch ~360, test_relayout ~220, test_plm_pipeline ~170,
# test_mode_layers ~150, test_mpmd_runtime ~140, test_conditional_update ~130), longest first.
# `make test` distributes whole modules (--dist loadscope) in collection order
# (--no-loadscope-reorder): started last, test_experiments alone ran on one worker for its last
# minutes while the other had nothing left.
_LONGEST_FIRST = ('test_experiments', 'test_mpmd_launch', 'test_relayout', 'test_plm_pipeline',
                  'test_mode_layers', 'test_mpmd_runtime', 'test_conditional_update')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  # A stable sort: the other modules, and the tests within each module, keep their order.
  items.sort(key=lambda item: rank.get(item.module.__name__.rsplit('.', 1)[-1], len(rank)))
