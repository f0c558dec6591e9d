"""The multi-controller launcher: local CPU processes match one process; failures do not hang;
runs on the experiment's data write Pax checkpoints that Pax evaluates and that a killed run
resumes from."""

import ast
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import optax
import pytest

from launch import mpmd_launch
from mode_pax import checkpoints
from mode_pax import evaluate
from mode_pax import paths
from mode_pax.data import build as build_lib
from mode_pax.mpmd import build
from mode_pax.mpmd import model as model_lib
from tests import test_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP = 'mode_pax.mpmd.testing.TinyMoDE2'  # backbone on devices 0,1; both experts on device 2
ON_DATA = 'tests.tiny_mpmd_experiments.TinyMoDEOnData'  # backbone on 0, experts on 1
STEPS = 2


SGD = ('--optimizer', 'sgd', '--learning_rate', '0.1')  # as optax.sgd(0.1, momentum=0.9)


def _launch(out, *extra, timeout=150, exp=EXP, processes=3, steps=STEPS, optimizer=SGD):
  cmd = [sys.executable, '-m', 'launch.mpmd_launch', '--exp', exp, '--local_processes',
         str(processes), '--steps', str(steps), *optimizer, '--out', str(out), '--timeout',
         str(timeout), *extra]
  t0 = time.monotonic()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 30,
                        check=False)
  pids = ast.literal_eval(re.search(r'pids (\[[\d, ]+\])', proc.stdout).group(1))
  for pid in pids:  # every worker this run started is gone
    try:
      os.kill(pid, 0)
      alive = os.waitpid(pid, os.WNOHANG) == (0, 0)
    except (ProcessLookupError, ChildProcessError):
      alive = False
    assert not alive, f'worker {pid} still running'
  return proc, time.monotonic() - t0


def _state(job_log_dir, step) -> dict[str, np.ndarray]:
  """Every array of a Pax checkpoint (mdl_vars and opt_states), read with tensorstore."""
  folder = os.path.join(paths.checkpoint_dir(str(job_log_dir)), f'checkpoint_{step:08d}', 'state')
  return {name: checkpoints.read_array(os.path.join(folder, name))
          for name in sorted(os.listdir(folder))}


def test_three_processes_match_one_process(tmp_path):
  proc, _ = _launch(tmp_path, '--data', 'synthetic', '--job_log_dir', str(tmp_path / 'run'))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  # The same plan, seed, batches and optimizer in this one process (8 virtual devices).
  trainer = build.mpmd_trainer(EXP, optimizer=optax.sgd(0.1, momentum=0.9))
  exp = build.experiment_instance(EXP)
  state = trainer.init_state(trainer.pieces.init(trainer.batch_specs, seed=1234))
  losses = []
  for step in range(STEPS):
    batch = model_lib.synthetic_batch(exp.TRAIN_BATCH_SIZE, exp.SEQUENCE_LENGTH,
                                      exp.VOCAB_SIZE, seed=step)
    trainer.transport.reset_counters()
    state, loss, _, _ = trainer.step(state, batch)
    losses.append(float(loss))
  for i in range(3):
    with open(tmp_path / f'process_{i}.json') as f:
      result = json.load(f)
    assert result['bytes_moved_per_step'] == trainer.transport.bytes_moved > 0
    if i < 2:  # processes of the home mesh report the loss
      np.testing.assert_allclose(result['losses'], losses, rtol=1e-5)
  # The Pax checkpoint the three processes wrote together holds this process's variables.
  saved = _state(tmp_path / 'run', STEPS)
  reference = trainer.host_params(state)
  for path, value in reference.items():
    np.testing.assert_allclose(saved['mdl_vars.' + path.replace('/', '.')], value, rtol=1e-5,
                               atol=1e-6, err_msg=path)
  assert len([k for k in saved if k.startswith('mdl_vars.')]) == len(reference)
  # The training the processes did (equal to this one's) lowered the loss of the batch of step 0:
  # 4.79 -> 4.30 here, far beyond fp32 noise; a skipped update leaves it equal. (The loss of step
  # 1 is that of another random batch, so it says nothing about progress.)
  batch = model_lib.synthetic_batch(exp.TRAIN_BATCH_SIZE, exp.SEQUENCE_LENGTH, exp.VOCAB_SIZE,
                                    seed=0)
  _, loss_after, _, _ = trainer.step(state, batch)
  assert float(loss_after) < losses[0] - 0.1, (losses, float(loss_after))


def test_dry_run_maps_meshes_onto_tpu_hosts(capsys):
  assert mpmd_launch.main(['--exp', 'mode.sharding.ShardingMesh5', '--tpu', 'v5litepod-16',
                           '--tpu_name', 'tpu1', '--zone', 'z', '--dry-run']) == 0
  out = capsys.readouterr().out
  assert '4 host(s) x 4 chips' in out
  assert 'mesh 0: devices [0, 1, 2, 3] chips [(0, 0), (1, 0), (0, 1), (1, 1)] host(s) [0]' in out
  assert 'mesh 4: devices [7]' in out and 'expert 3' in out
  # Ship the code, set up every worker, then start all of them together; each checks that the
  # plan's devices are on the hosts and chips of --tpu before it runs.
  assert 'gcloud compute tpus tpu-vm scp /tmp/mode_pax.tgz tpu1:~/ --zone=z --worker=all' in out
  assert f'tar czf /tmp/mode_pax.tgz -C {ROOT} ' in out
  assert "tools/setup_env.sh && .venv/bin/pip install -e '.[tpu]' -f " in out
  run = [line for line in out.splitlines() if 'launch.mpmd_launch' in line]
  assert len(run) == 1 and 'ssh tpu1 --zone=z --worker=all' in run[0], out
  assert '--worker --tpu=v5litepod-16' in run[0] and '--process_id' not in run[0]
  # The study is written for 8 chips (NUM_DEVICES): the dry run says the other 8 idle.
  assert 'idle: chips 8-15 get no work (host(s) 2-3 hold no mesh' in out
  # One host: one process. (A tiny model: the plan check's abstract init is ~10 s at paper scale.)
  assert mpmd_launch.main(['--exp', 'mode_pax.mpmd.testing.TinyMoDE', '--tpu', 'v5litepod-8',
                           '--dry-run']) == 0
  out = capsys.readouterr().out
  assert 'single controller' in out and 'idle' not in out


# ---- real data, Pax checkpoints, resume -----------------------------------------------------------
@pytest.fixture(scope='module')
def fixture_data(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('data')
  build_lib.build(test_data._config(data_dir))  # pylint: disable=protected-access
  return data_dir


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_result(fixture_data, tmp_path,
                                                                      monkeypatch):
  """Two workers train TinyMoDEOnData on the fixture corpus (its seqio task, as paxml.main reads
  it) and checkpoint at step 2; worker 1 dies at step 3, which stops worker 0 (no hang until the
  timeout); the relaunch resumes from step 2. The final checkpoint equals that of an
  uninterrupted single-controller run (this process), variables and optimizer state, and
  mode_pax.evaluate scores it (reading it as a Pax checkpoint of the experiment's Pax model)."""
  job = tmp_path / 'run'
  # The data build (run_env.pointed_at would also drop the virtual devices: this process's
  # reference run needs conftest's 8; the supervisor gives each worker its one device).
  monkeypatch.setenv('MODE_PAX_DATA_DIR', str(fixture_data))
  monkeypatch.setenv('MODE_PAX_RUNS', str(tmp_path / 'runs'))
  # The experiment's own learner (Adafactor, schedule, clipping across the two processes).
  common = ('--exp', ON_DATA, '--steps', '4', '--checkpoint_every', '2')
  run_flags = ('--job_log_dir', str(job), '--checkpoint_every', '2')
  # Worker 1 (the experts' mesh) dies at step 3: worker 0 would wait for it in that step's
  # activation move forever. Its failure, not the supervisor's timeout, must stop the run.
  killed, seconds = _launch(tmp_path / 'killed', *run_flags, '--fail_at_step', '3',
                            '--fail_process', '1', exp=ON_DATA, processes=2, steps=4,
                            optimizer=(), timeout=200)
  assert killed.returncode == 1, killed.stderr
  assert 'worker 1' in killed.stderr and 'exited with code 17' in killed.stderr, killed.stderr
  assert 'stopping the other workers' in killed.stderr, killed.stderr
  assert 'timeout' not in killed.stderr and seconds < 200, killed.stderr
  assert paths.latest_checkpoint_step(paths.checkpoint_dir(str(job))) == 2
  resumed, _ = _launch(tmp_path / 'resumed', *run_flags, exp=ON_DATA, processes=2, steps=4,
                       optimizer=())
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  log = (tmp_path / 'resumed' / 'worker_0.log').read_text()
  assert 'resumed from step 2' in log and 'step 1:' not in log, log
  reference = tmp_path / 'reference'
  assert mpmd_launch.main([*common, '--job_log_dir', str(reference), '--out',
                           str(tmp_path / 'reference_out')]) == 0
  accuracy, num_tokens = evaluate.evaluate_text(ON_DATA, 'def f(x):\n    return x + 1\n',
                                                job_log_dir=str(job), batch_size=4)
  assert 0.0 <= accuracy <= 1.0 and num_tokens > 5
  with open(tmp_path / 'resumed' / 'process_0.json') as f:
    resumed_losses = json.load(f)['losses']
  with open(tmp_path / 'reference_out' / 'process_0.json') as f:
    reference_losses = json.load(f)['losses']
  np.testing.assert_allclose(resumed_losses, reference_losses[2:], rtol=1e-6)
  final, uninterrupted = _state(job, 4), _state(reference, 4)
  assert sorted(final) == sorted(uninterrupted)
  opt = [k for k in final if k.startswith('opt_states')]
  assert any('mesh_0' in k for k in opt) and any('mesh_1' in k for k in opt)
  for name, value in uninterrupted.items():
    np.testing.assert_allclose(final[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
  # Steps 2-3 trained (after the resume): an expert moved, the frozen backbone did not.
  before = _state(job, 2)
  layer = 'x_layers_0.ff_layer.ffn_layer1.linear.w'
  expert = f'mdl_vars.params.lm.transformer.blocks_0.experts_1.{layer}'
  backbone = f'mdl_vars.params.lm.transformer.blocks_0.backbone.{layer}'
  assert np.abs(final[expert] - before[expert]).max() > 1e-4
  np.testing.assert_array_equal(final[backbone], before[backbone])
