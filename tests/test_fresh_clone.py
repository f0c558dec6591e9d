"""A fresh clone stays clean: a run writes only where .gitignore expects it (runs/, data/build);
and a rerun there reproduces the run bit for bit.

The data build and a training stage run in a clone of this repository (its working tree as it is,
committed in the clone) with the default locations (no MODE_PAX_* variables); then `git status`
of the clone must show nothing, and the stage's variables must equal those of the same stage
trained elsewhere (conftest's tiny_table1_runs: another data build and runs folder).
"""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np

from mode_pax import checkpoints
from mode_pax import paths
from tests import run_env

_RUN = textwrap.dedent('''
    import sys
    sys.path.insert(0, '.')  # the clone's mode_pax and tests, not the installed checkout's
    from mode_pax import paths
    assert str(paths.REPO_ROOT) == sys.argv[1], (paths.REPO_ROOT, sys.argv[1])
    from mode_pax import pipeline
    from mode_pax.data import build
    from tests import test_data
    config = test_data._config(paths.data_dir())
    build.build(config)
    pipeline.train_stage('tests.tiny_experiments', 'Backbone')
''')


def _git(cwd, *args) -> str:
  return subprocess.run(['git', *args], cwd=cwd, capture_output=True, text=True,
                        check=True).stdout


def _clone_of_the_working_tree(clone) -> None:
  """A clone whose HEAD is this checkout's working tree: uncommitted edits, deletions and new
  files (not ignored ones) copied over and committed there."""
  _git(paths.REPO_ROOT.parent, 'clone', '--quiet', str(paths.REPO_ROOT), str(clone))
  changed = _git(paths.REPO_ROOT, 'ls-files', '-z', '--modified', '--others',
                 '--exclude-standard').split('\0')
  deleted = set(_git(paths.REPO_ROOT, 'ls-files', '-z', '--deleted').split('\0'))
  for name in filter(None, changed):
    if name not in deleted:
      (clone / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(paths.REPO_ROOT / name, clone / name)
  for name in filter(None, deleted):
    (clone / name).unlink(missing_ok=True)
  _git(clone, 'add', '-A')
  if _git(clone, 'status', '--porcelain'):
    _git(clone, '-c', 'user.name=tests', '-c', 'user.email=tests@localhost', 'commit', '-q',
         '-m', 'the working tree under test')


def test_a_run_in_a_fresh_clone_leaves_git_status_clean_and_reproduces_the_run(
    tmp_path, tiny_table1_runs):
  if not (paths.REPO_ROOT / '.git').exists():
    raise AssertionError(f'{paths.REPO_ROOT} is not a git checkout')
  clone = tmp_path / 'clone'
  _clone_of_the_working_tree(clone)
  env = {k: v for k, v in os.environ.items() if not k.startswith('MODE_PAX_')}
  env['XLA_FLAGS'] = run_env.TEST_XLA_FLAGS
  proc = subprocess.run([sys.executable, '-c', _RUN, str(clone)], cwd=clone, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  clone_run = clone / 'runs' / 'tests.tiny_experiments.Backbone'  # the default location
  assert (clone_run / 'checkpoints').is_dir()
  assert (clone / 'data' / 'build' / 'build_info.json').is_file()
  status = _git(clone, 'status', '--porcelain', '--untracked-files=all')
  assert status == '', status
  # Same experiment, another data build and job_log_dir: the seeded data order and initialisation
  # give the same variables, bit for bit.
  with run_env.pointed_at(*tiny_table1_runs):
    first = checkpoints.read_variables(
        paths.checkpoint_dir(paths.run_dir('tests.tiny_experiments.Backbone')))
  again = checkpoints.read_variables(paths.checkpoint_dir(str(clone_run)))
  assert again.keys() == first.keys() and len(first) > 10
  for path, value in first.items():
    np.testing.assert_array_equal(again[path], value, err_msg=path)
