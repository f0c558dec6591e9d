"""The multi-controller launcher: local CPU processes match one process; failures do not hang."""

import ast
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import optax

from launch import mpmd_launch
from mode_pax.mpmd import build
from mode_pax.mpmd import model as model_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP = 'mode_pax.mpmd.testing.TinyMoDE2'  # backbone on devices 0,1; both experts on device 2
STEPS = 2


def _launch(out, *extra, timeout=150):
  cmd = [sys.executable, '-m', 'launch.mpmd_launch', '--exp', EXP, '--local_processes', '3',
         '--steps', str(STEPS), '--optimizer', 'sgd', '--learning_rate', '0.1', '--out',
         str(out), '--timeout', str(timeout), *extra]
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


def test_three_processes_match_one_process(tmp_path):
  proc, _ = _launch(tmp_path)
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
  reference = {}
  for mesh_state in state.values():
    for path, value in mesh_state['params'].items():
      for s in value.addressable_shards:
        reference.setdefault(f'{path}|{s.index}', np.asarray(s.data))
  compared = 0
  for i in range(3):
    with np.load(tmp_path / f'process_{i}.npz') as shards:
      for key in shards.files:
        np.testing.assert_allclose(shards[key], reference[key], rtol=1e-5, atol=1e-6,
                                   err_msg=key)
        compared += 1
  assert compared >= len({k.split('|')[0] for k in reference})
  # The training the processes did (equal to this one's) lowered the loss of the batch of step 0:
  # 4.79 -> 4.30 here, far beyond fp32 noise; a skipped update leaves it equal. (The loss of step
  # 1 is that of another random batch, so it says nothing about progress.)
  batch = model_lib.synthetic_batch(exp.TRAIN_BATCH_SIZE, exp.SEQUENCE_LENGTH, exp.VOCAB_SIZE,
                                    seed=0)
  _, loss_after, _, _ = trainer.step(state, batch)
  assert float(loss_after) < losses[0] - 0.1, (losses, float(loss_after))


def test_a_dead_worker_stops_the_others(tmp_path):
  # Worker 2 (the experts' mesh) dies before its first step: workers 0 and 1 would wait for it
  # in the first activation move forever.
  # The supervisor's timeout would say 'timeout'; the failure itself must be what stops the run.
  proc, seconds = _launch(tmp_path, '--fail_at_step', '0', '--fail_process', '2', timeout=200)
  assert proc.returncode == 1
  assert 'worker 2' in proc.stderr and 'exited with code 17' in proc.stderr, proc.stderr
  assert 'stopping the other workers' in proc.stderr and 'timeout' not in proc.stderr
  assert seconds < 200


def test_dry_run_maps_meshes_onto_tpu_hosts(capsys):
  assert mpmd_launch.main(['--exp', 'mode.sharding.ShardingMesh5', '--tpu', 'v5litepod-16',
                           '--tpu_name', 'tpu1', '--zone', 'z', '--dry-run']) == 0
  out = capsys.readouterr().out
  assert '4 host(s) x 4 chips' in out
  assert 'mesh 0: devices [0, 1, 2, 3] chips [(0, 0), (1, 0), (0, 1), (1, 1)] host(s) [0]' in out
  assert 'mesh 4: devices [7]' in out and 'expert 3' in out
  assert out.count('gcloud compute tpus tpu-vm ssh tpu1 --zone=z --worker=') == 4
  assert '--process_id=3 --num_processes=4' in out
  # The study is written for 8 chips (NUM_DEVICES): the dry run says the other 8 idle.
  assert 'idle: chips 8-15 get no work (host(s) 2-3 hold no mesh' in out
  # One host: one process. (A tiny model: the plan check's abstract init is ~10 s at paper scale.)
  assert mpmd_launch.main(['--exp', 'mode_pax.mpmd.testing.TinyMoDE', '--tpu', 'v5litepod-8',
                           '--dry-run']) == 0
  out = capsys.readouterr().out
  assert 'single controller' in out and 'idle' not in out
