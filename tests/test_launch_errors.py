"""The MPMD launcher refuses bad input before any work, and says which chips or workers idle.

Cheap: dry runs and plan checks only (abstract init of tiny models; nothing trains).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from launch import mpmd_checkpoint
from launch import mpmd_launch
from launch import topology
from mode_pax import convert
from mode_pax.mpmd import plan as plan_lib
from mode_pax.mpmd import testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = 'mode_pax.mpmd.testing.TinyMoDE'  # NUM_DEVICES=8, mesh5
TINY2 = 'mode_pax.mpmd.testing.TinyMoDE2'  # NUM_DEVICES=3, '0,1|2|2'
ANY = 'tests.test_launch_errors.TinyMoDEAnyDevices'


class TinyMoDEAnyDevices(testing.TinyMoDE):
  """TinyMoDE without NUM_DEVICES: its plan is written for the devices it runs on."""
  NUM_DEVICES = None
  MESH_PLAN = 'mesh3'


def _dry_run(capsys, exp, tpu, *extra):
  code = mpmd_launch.main(['--exp', exp, '--tpu', tpu, '--dry-run', *extra])
  out, err = capsys.readouterr()
  return code, out, err


# ---- flags: checked before the imports of JAX and Pax ------------------------------------------
def test_unknown_tpu_type_lists_the_choices_before_importing_jax():
  code = (
      'import atexit, runpy, sys\n'
      'atexit.register(lambda: print("imported:", [m for m in ("jax", "praxis", "paxml") '
      'if m in sys.modules], file=sys.stderr))\n'
      'sys.argv = ["mpmd_launch", "--exp", "mode.sharding.ShardingMesh5", "--tpu", "v5e-16", '
      '"--dry-run"]\n'
      'runpy.run_module("launch.mpmd_launch", run_name="__main__")\n')
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, check=False)
  assert proc.returncode == 2, proc.stderr
  assert "argument --tpu: unknown TPU type 'v5e-16'" in proc.stderr, proc.stderr
  assert 'v5litepod-N' in proc.stderr  # how Cloud TPU names v5e
  assert 'choose one of: v5litepod-1, v5litepod-4, v5litepod-8, v5litepod-16' in proc.stderr
  assert 'v4-8' in proc.stderr
  assert 'imported: []' in proc.stderr, proc.stderr


def test_tpu_with_local_processes_is_refused(capsys):
  with pytest.raises(SystemExit) as exit_:
    mpmd_launch.main(['--exp', TINY, '--tpu', 'v5litepod-8', '--local_processes', '8'])
  assert exit_.value.code == 2
  assert '--tpu=v5litepod-8 is for --dry-run' in capsys.readouterr().err


def test_checkpoint_every_needs_a_job_log_dir(capsys):
  with pytest.raises(SystemExit):
    mpmd_launch.main(['--exp', TINY, '--checkpoint_every', '2'])
  assert '--checkpoint_every=2' in capsys.readouterr().err


def test_an_experiments_unknown_tpu_type_is_named(capsys, monkeypatch):
  monkeypatch.setattr(testing.TinyMoDE, 'TPU_TYPE', 'v5e-8', raising=False)
  assert mpmd_launch.main(['--exp', TINY, '--dry-run']) == 2
  err = capsys.readouterr().err
  assert f"ERROR: {TINY}.TPU_TYPE: unknown TPU type 'v5e-8'" in err and 'Or give --tpu' in err


# ---- dry runs ----------------------------------------------------------------------------------
def test_dry_run_names_the_chips_and_hosts_left_idle(capsys):
  code, out, _ = _dry_run(capsys, TINY, 'v5litepod-16')  # an 8-chip plan on 16 chips
  assert code == 0
  assert ('idle: chips 8-15 get no work (host(s) 2-3 hold no mesh: their launcher processes '
          'only join jax.distributed); plan mesh5 uses 8 of the 16 chips. To leave none idle, '
          'run on --tpu=v5litepod-8 (8 chips), or give --plan a spec for 16 devices.') in out
  # Every host still starts a process: one command starts the launcher on all workers.
  assert out.count('launch.mpmd_launch') == 1 and out.count('--worker=all') == 3
  # A chip inside a host: no smaller slice helps.
  code, out, _ = _dry_run(capsys, TINY, 'v5litepod-8', '--plan', '0-3|4|5|6|6')
  assert code == 0
  assert 'idle: chips 7 get no work (on host(s) 0); plan custom uses 7 of the 8 chips. To leave ' \
         'none idle, give --plan a spec for 8 devices.' in out
  # A plan that uses every chip says nothing.
  code, out, _ = _dry_run(capsys, TINY, 'v5litepod-8')
  assert code == 0 and 'idle' not in out


@pytest.mark.parametrize('tpu,meshes', [
    ('v5litepod-16', ['mesh 0: devices [0, 1, 2, 3, 4, 5, 6, 7] ',
                      'mesh 1: devices [8, 9, 10, 11] ', 'mesh 2: devices [12, 13, 14, 15] ']),
    ('v5litepod-4', ['mesh 0: devices [0, 1] ', 'mesh 1: devices [2] ', 'mesh 2: devices [3] ']),
])
def test_dry_run_without_num_devices_plans_for_the_tpus_chips(capsys, tpu, meshes):
  # This process has 8 (virtual) devices: a plan written for them would be wrong on both.
  code, out, err = _dry_run(capsys, ANY, tpu)
  assert code == 0, err
  for mesh in meshes:
    assert mesh in out, out
  assert 'idle' not in out


def test_dry_run_refuses_a_plan_that_does_not_fit_the_tpu(capsys):
  code, out, err = _dry_run(capsys, TINY, 'v5litepod-4')
  assert code == 2 and 'worker commands' not in out
  assert err.startswith(f'ERROR: {TINY} on --tpu=v5litepod-4 (4 chips): '), err
  assert 'only 4 devices' in err
  assert 'written for NUM_DEVICES=8 chips: use --tpu=v5litepod-8.' in err


def test_dry_run_refuses_a_plan_whose_dimensions_do_not_divide(capsys):
  code, _, err = _dry_run(capsys, TINY, 'v5litepod-8', '--plan', '0-2|3|4|5|6')
  assert code == 2
  assert 'does not divide over the 3 devices of mesh [0,1,2]' in err, err


def test_dry_run_of_an_unknown_or_non_mode_experiment(capsys):
  code, _, err = _dry_run(capsys, 'mode.sharding.NoSuchStudy', 'v5litepod-8')
  assert code == 2 and "ERROR: No experiment 'mode.sharding.NoSuchStudy'" in err, err
  code, _, err = _dry_run(capsys, 'tests.tiny_experiments.Backbone', 'v5litepod-8')
  assert code == 2 and 'is not a MoDE experiment' in err, err


# ---- the supervisor: the plan is checked before any worker starts --------------------------------
class _Started(Exception):
  """Raised by the stand-in for subprocess.Popen: a worker would have started here."""


@pytest.fixture
def popen(monkeypatch):
  """Records the workers the supervisor starts (and starts none)."""
  started = []

  def fake(cmd, **kwargs):
    del kwargs
    started.append(cmd)
    raise _Started()

  monkeypatch.setattr(mpmd_launch.subprocess, 'Popen', fake)
  return started


@pytest.mark.parametrize('extra,words', [
    (['--local_processes', '2'],  # TinyMoDE2's plan is written for 3 devices
     ['on --local_processes=2 (one CPU device each)', 'only 2 devices',
      'written for NUM_DEVICES=3: give --local_processes=3.']),
    (['--local_processes', '4', '--plan', '0-2|3|3'],  # 8 heads over 3 devices
     ['does not divide over the 3 devices']),
    (['--local_processes', '3', '--plan', 'mesh9'], ['unknown mesh plan']),
])
def test_supervisor_checks_the_plan_before_starting_workers(capsys, popen, tmp_path, extra,
                                                            words):
  out = tmp_path / 'out'
  assert mpmd_launch.main(['--exp', TINY2, '--out', str(out), *extra]) == 2
  err = capsys.readouterr().err
  for w in words:
    assert w in err, err
  assert not popen and not out.exists()  # no worker started, nothing written


def test_supervisor_refuses_idle_workers(capsys, popen, tmp_path):
  # TinyMoDE2 is written for 3 devices: a fourth CPU worker would only wait.
  assert mpmd_launch.main(['--exp', TINY2, '--local_processes', '4', '--data', 'synthetic',
                           '--out', str(tmp_path / 'out')]) == 2
  err = capsys.readouterr().err
  assert ('--local_processes=4: plan custom (0,1|2|2) uses devices [0, 1, 2], so workers [3] '
          'would get no work (the experiment is written for NUM_DEVICES=3): give '
          '--local_processes=3.') in err, err
  assert not popen and not (tmp_path / 'out').exists()


def test_supervisor_refuses_an_experiment_without_training_input(capsys, popen):
  assert mpmd_launch.main(['--exp', TINY2, '--local_processes', '3']) == 2
  err = capsys.readouterr().err
  assert 'has no training input' in err and '--data=synthetic' in err, err
  assert not popen


def _fake_run(job, step=2, info=None):
  """A job_log_dir with a checkpoint folder (and the launcher's run info, unless None)."""
  (job / 'checkpoints' / f'checkpoint_{step:08d}').mkdir(parents=True)
  if info is not None:
    (job / mpmd_checkpoint.RUN_INFO).write_text(json.dumps(info))


@pytest.mark.parametrize('saved,extra,words', [
    # Written under another plan: the optimizer state is keyed by mesh.
    (dict(experiment=TINY2, plan='0|1|2', optimizer='sgd', learning_rate='0.1'), [],
     ["plan: checkpoint '0|1|2', this run '0,1|2|2'", 'Resume it with --plan=0|1|2, or']),
    (dict(experiment=TINY, plan='0,1|2|2', optimizer='sgd', learning_rate='0.1'), [],
     ['experiment: checkpoint', f'Resume it with --exp={TINY}, or']),
    (dict(experiment=TINY2, plan='0,1|2|2', optimizer='adam', learning_rate='0.01'), [],
     ["optimizer: checkpoint 'adam', this run 'sgd'; learning_rate: checkpoint '0.01', this run "
      "'0.1'", 'Resume it with --optimizer=adam --learning_rate=0.01, or']),
    # Checkpoints another program wrote (e.g. paxml.main).
    (None, [], ['that no MPMD launcher run wrote', '--init_from=']),
])
def test_supervisor_refuses_a_resume_that_does_not_fit(capsys, popen, tmp_path, saved, extra,
                                                       words):
  job = tmp_path / 'run'
  _fake_run(job, info=saved)
  assert mpmd_launch.main(['--exp', TINY2, '--local_processes', '3', '--data', 'synthetic',
                           '--optimizer', 'sgd', '--learning_rate', '0.1', '--job_log_dir',
                           str(job), *extra]) == 2
  err = capsys.readouterr().err
  assert f'cannot resume from {job} (step 2)' in err or 'no MPMD launcher run' in err, err
  for w in words:
    assert w in err, err
  assert not popen


def test_a_checkpoint_of_another_model_is_named(tmp_path):
  job = tmp_path / 'run'
  convert.write_pax_checkpoint({'params/lm/a': np.zeros(3, np.float32),
                                'params/lm/b': np.zeros((2, 2), np.float32)},
                               str(job / 'checkpoints'), step=2)
  with pytest.raises(mpmd_checkpoint.ResumeError) as err:
    mpmd_checkpoint.check_variables(str(job), 2, {'params/lm/a': (3,), 'params/lm/b': (2, 3),
                                                  'params/lm/c': (1,)})
  message = str(err.value)
  assert "missing ['params/lm/c']" in message
  assert 'params/lm/b: model (2, 3), checkpoint (2, 2)' in message
  mpmd_checkpoint.check_variables(str(job), 2, {'params/lm/a': (3,), 'params/lm/b': (2, 2)})


class _Device:
  def __init__(self, id_, process_index, coords=None):
    self.id, self.process_index = id_, process_index
    if coords is not None:
      self.coords = coords


def test_worker_placement_check():
  plan = plan_lib.get_plan('0,1|2|2', num_devices=3)
  # One CPU device per process, in process order: fits.
  assert topology.check_placement(plan, [_Device(i, i) for i in range(3)], lambda i: i) == []
  # Device 2 (the experts' mesh) owned by process 1: named.
  devices = [_Device(0, 0), _Device(1, 1), _Device(2, 1)]
  assert topology.check_placement(plan, devices, lambda i: i) == [
      'device 2 (id 2) belongs to process 1, the plan puts it on process 2']
  # A v5litepod-16: host and chip of each planned device (host 0 holds chips (0..1, 0..1)).
  tpu = topology.get_slice('v5litepod-16')
  plan = plan_lib.get_plan('0-3|4|5|6|7', num_devices=16)
  good = [_Device(i, tpu.host_of(i), (*tpu.chip_coords(i), 0)) for i in range(16)]
  assert topology.check_placement(plan, good, tpu.host_of, tpu.chip_coords) == []
  swapped = list(good)
  swapped[1], swapped[2] = good[2], good[1]
  problems = topology.check_placement(plan, swapped, tpu.host_of, tpu.chip_coords)
  assert problems == ['device 1 (id 2) is chip (0, 1), the plan expects chip (1, 0)',
                      'device 2 (id 1) is chip (1, 0), the plan expects chip (0, 1)']


def test_negative_local_processes_is_refused(capsys):
  with pytest.raises(SystemExit):
    mpmd_launch.main(['--exp', TINY2, '--local_processes', '-1'])
  assert '--local_processes=-1' in capsys.readouterr().err


# ---- the pieces --------------------------------------------------------------------------------
def test_idle_chips_and_hosts():
  tpu = topology.get_slice('v5litepod-16')
  plan = plan_lib.get_plan('0-3|4|5|6|7', num_devices=16)
  assert topology.idle(plan, tpu) == (list(range(8, 16)), [2, 3])
  assert plan.unused_devices(16) == list(range(8, 16))
  assert topology.idle(plan_lib.get_plan('mesh5', num_devices=16), tpu) == ([], [])
  assert topology.smallest_slice_for(8, tpu).accelerator_type == 'v5litepod-8'
  assert topology.smallest_slice_for(5, topology.get_slice('v4-8')).accelerator_type == 'v4-16'
  with pytest.raises(ValueError, match="unknown TPU type 'v6e-8'; choose one of: v5litepod-1"):
    topology.get_slice('v6e-8')


def test_tpu_extra_pins_the_cpu_sets_jax_and_stays_out_of_the_cpu_setup():
  sections, current = {}, None
  with open(os.path.join(ROOT, 'pins.txt')) as f:
    for line in f:
      line = line.strip()
      if line.startswith('['):
        current = sections.setdefault(line.strip('[]'), [])
      elif line and not line.startswith('#'):
        current.append(line)
  jax_pin = next(p for p in sections['resolved'] if p.startswith('jax=='))
  assert sections['tpu'] == [f'jax[tpu]=={jax_pin.split("==")[1]}']
  with open(os.path.join(ROOT, 'setup.py')) as f:
    assert "extras_require={'tpu': _pins('tpu')}" in f.read()
  with open(os.path.join(ROOT, 'tools', 'setup_env.sh')) as f:
    installed = [line for line in f if line.startswith('pip_install')]
  assert any('section resolved' in line for line in installed)
  assert not any('tpu' in line for line in installed)
