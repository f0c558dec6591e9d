"""Building an experiment's config is pure: it reads no file and writes none.

What needs the file system (upstream checkpoints, the data build, claiming the job_log_dir) is
checked by `validate()`, which paxml.main calls before it runs anything.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from mode_pax import paths
from mode_pax import registry

# Runs in a fresh interpreter: audit hooks cannot be removed once added.
_PROBE = textwrap.dedent('''
    import os, sys
    from mode import small  # imports done before watching
    from mode_pax import registry
    import praxis.base_layer

    touched = []
    # Lazy imports read code (the environment, the repository's packages): not data.
    code = (sys.prefix, sys.base_prefix) + tuple(
        os.path.join(os.getcwd(), d) for d in ('mode_pax', 'experiments', 'tests'))
    def _record(path):
      path = os.fspath(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
      path = os.path.abspath(path.decode() if isinstance(path, bytes) else path)
      if not path.startswith(code):
        touched.append(path)

    def hook(event, args):
      if event in ('open', 'os.listdir', 'os.scandir', 'os.mkdir', 'os.rename', 'os.remove',
                   'os.rmdir', 'shutil.rmtree', 'glob.glob'):
        if args and isinstance(args[0], (str, bytes, os.PathLike)):
          _record(args[0])
    real_stat = os.stat
    def stat(path, *a, **k):
      _record(path)
      return real_stat(path, *a, **k)

    sys.addaudithook(hook)
    os.stat = stat
    for name in sys.argv[1:]:
      exp = registry.lookup(name)()
      task_p = exp.task()
      exp.datasets()
      assert task_p.train.init_from_checkpoint_rules or name.endswith('Backbone'), name
    os.stat = real_stat
    print('TOUCHED', touched)
''')


def test_building_configs_touches_no_file(tmp_path):
  runs, data = tmp_path / 'runs', tmp_path / 'data'
  names = ['mode.small.Backbone', 'mode.small.CodeExpert', 'mode.small.ComposeMathCode',
           'mode.small.LoraMathCode', 'mode.small.FullFinetuneMathCode', 'mode.CodeExpert']
  env = {**os.environ, 'MODE_PAX_RUNS': str(runs), 'MODE_PAX_DATA_DIR': str(data)}
  proc = subprocess.run([sys.executable, '-c', _PROBE] + names, capture_output=True, text=True,
                        env=env, cwd=paths.REPO_ROOT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  touched = proc.stdout.split('TOUCHED', 1)[1].strip()
  assert touched == '[]', touched
  assert not runs.exists() and not data.exists()


def test_paper_scale_missing_backbone_asks_for_an_existing_checkpoint(tmp_path, monkeypatch):
  monkeypatch.setenv('MODE_PAX_RUNS', str(tmp_path))
  monkeypatch.delenv('MODE_PAX_BACKBONE_CKPT', raising=False)
  with pytest.raises(FileNotFoundError) as error:
    registry.lookup('mode.CodeExpert')().check_upstream_runs()
  assert 'set MODE_PAX_BACKBONE_CKPT' in str(error.value)
  assert 'paxml.main --exp=mode.Backbone' not in str(error.value)
  # At CPU scale the backbone is pre-trained here: the command that does it is named.
  with pytest.raises(FileNotFoundError, match=r'paxml\.main --exp=mode\.small\.Backbone'):
    registry.lookup('mode.small.CodeExpert')().check_upstream_runs()
  assert not list(tmp_path.iterdir())  # nothing created


def test_a_seed_changes_initialisation_and_data_order_and_nothing_else():
  from mode import small  # pylint: disable=g-import-not-at-top
  base, seeded = small.ComposeMathCode(), small.ComposeMathCodeSeed2()
  assert seeded.SEED == 2
  base_task, seeded_task = base.task(), seeded.task()
  assert seeded_task.train.random_seed == base_task.train.random_seed + 2
  base_train, seeded_train = base.datasets()[0], seeded.datasets()[0]
  assert seeded_train.input_random_seed == base_train.input_random_seed + 2
  # Everything else is the recipe's: the same model, learner and warm-start sources.
  assert seeded_task.model == base_task.model
  assert seeded_task.train.learner == base_task.train.learner
  assert seeded_task.train.init_from_checkpoint_rules.keys() == (
      base_task.train.init_from_checkpoint_rules.keys())


def test_a_converted_backbone_is_never_trained_by_paxml_main():
  """PRETRAINED runs are conversions: paxml.main would save random weights as the backbone."""
  from mode import small  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r'BackboneB2 is not trained: .* python -m mode_pax.convert '
                     r'--run=mode.small.Backbone --exp=mode.small.BackboneB2 --out='):
    small.BackboneB2().validate()
