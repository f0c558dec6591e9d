"""A fresh clone stays clean: a run writes only where .gitignore expects it (runs/, data/build).

The data build and a training stage run in a clone of this repository with the default
locations (no MODE_PAX_* variables), then `git status` of the clone must show nothing.
"""

import os
import subprocess
import sys
import textwrap

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


def test_a_run_in_a_fresh_clone_leaves_git_status_clean(tmp_path):
  if not (paths.REPO_ROOT / '.git').exists():
    raise AssertionError(f'{paths.REPO_ROOT} is not a git checkout')
  clone = tmp_path / 'clone'
  subprocess.run(['git', 'clone', '--quiet', str(paths.REPO_ROOT), str(clone)], check=True)
  env = {k: v for k, v in os.environ.items() if not k.startswith('MODE_PAX_')}
  env['XLA_FLAGS'] = run_env.TEST_XLA_FLAGS
  proc = subprocess.run([sys.executable, '-c', _RUN, str(clone)], cwd=clone, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (clone / 'runs' / 'tests.tiny_experiments.Backbone' / 'checkpoints').is_dir()
  assert (clone / 'data' / 'build' / 'build_info.json').is_file()
  status = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=all'], cwd=clone,
                          capture_output=True, text=True, check=True).stdout
  assert status == '', status
