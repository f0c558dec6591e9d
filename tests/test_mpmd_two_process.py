"""benchmarks/mpmd_two_process.py at its CI size: two pinned processes train as one process does.

No timing is asserted (performance is measured by the benchmark, never tested).
"""

import json
import os

import numpy as np
import pytest

from benchmarks import mpmd_two_process

EXP = 'mode.sharding.ShardingTwoProcessTiny'


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason='needs 2 cores to pin 2 workers')
def test_two_processes_match_one_process(tmp_path):
  # A (MPMD: backbone in process 0, expert in process 1) and C (the whole step in process 0 on
  # one device: jax.value_and_grad of the praxis LanguageModel, SpmdTrainer) from the same
  # variables on the same 2 batches. Step 2's loss follows step 1's update of the expert (in
  # process 1) and gates, so it checks the update too.
  mpmd_two_process.main(['--exp', EXP, '--configs', 'A,C', '--rounds', '1', '--steps', '1',
                         '--warmup', '0', '--check_steps', '2', '--timeline_steps', '1',
                         '--pingpong', '1', '--timeout', '240', '--out', str(tmp_path)])
  with open(tmp_path / 'two_process.json') as f:
    summary = json.load(f)
  losses = summary['losses']
  assert len(losses['A']) == len(losses['C']) == 2
  np.testing.assert_allclose(losses['A'], losses['C'], rtol=1e-5)
  assert losses['A'][0] != losses['A'][1]
  # Only the home process computes the loss; process 1 holds the expert.
  assert summary['losses_process1']['A'] == [None, None]
  assert summary['mpmd_bytes_per_step'] > 0
  # Both processes recorded their programs and both ends of every move.
  assert summary['timeline_records']['0'] > 0 and summary['timeline_records']['1'] > 0
  assert summary['timeline']['programs0'] > 0 and summary['timeline']['programs1'] > 0
  for p in ('0', '1'):  # each worker pinned to its own single core
    assert summary['evidence'][p]['A']['thread_affinities'] == [p]
  assert (tmp_path / 'two_process_timeline.png').stat().st_size > 0
