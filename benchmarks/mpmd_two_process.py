r"""Measured MPMD speed-up: two CPU processes pinned to one core each, against SPMD and one process.

  .venv/bin/python benchmarks/mpmd_two_process.py    # writes results/mpmd/two_process.{md,csv},
      # two_process_timeline.png, two_process_raw.json (per-process records), two_process.json
      # (summary). Wall time: mostly compilation; 23 min at load average ~10 on 2 shared cores.
  .venv/bin/python benchmarks/mpmd_two_process.py --report_from results/mpmd/two_process_raw.json
      # rewrites the report from a run's records (no run)
  .venv/bin/python benchmarks/mpmd_two_process.py --exp mode.sharding.ShardingTwoProcessTiny \
      --rounds 1 --steps 1 --warmup 0 --out /tmp/x    # the CI size (tests/test_mpmd_two_process.py)

One run starts two worker processes joined by `jax.distributed` on 127.0.0.1 (gloo CPU
collectives over TCP loopback, as `launch/mpmd_launch.py`'s workers), process i pinned to core i
(`taskset -c i`) with one XLA:CPU compute thread (Eigen's thread pool off, OMP/MKL threads 1). The
same two processes run, interleaved in rounds (A B C, B C A, C A B, ...: load changes on this
shared machine hit all of them alike):

  A  MPMD  `MpmdTrainer`, plan '0|1': backbone, embeddings, gates and softmax (home mesh) in
           process 0, the expert(s) in process 1; activations move with `PermuteTransport`.
  B  SPMD  `SpmdTrainer` over one 2-device mesh spanning both processes, praxis's model-parallel
           ('mdl') annotations over the two devices; XLA's collectives run over gloo.
  C  1 proc `SpmdTrainer` on process 0's device alone (process 1 waits at the barrier): the whole
           step in one process on one core.

Each round runs --steps steps of each configuration between two barriers; its step time is (last
step's end in either process - first step's start) / steps, both processes reading the same
system-wide monotonic clock. Reported: the median over rounds and the per-round ratios A/B and
A/C (median and quartiles: paired in time).

Before the rounds, every configuration trains --check_steps steps from the same variables on the
same batches (losses written for tests/test_mpmd_two_process.py). After them, a timing mode runs
--timeline_steps MPMD steps in which every program call (and each side of every move) is timed
from dispatch to `jax.block_until_ready`: the per-process timeline, its figure and the overlap of
the two processes' compute. A ping-pong of `PermuteTransport` moves measures loopback latency and
bandwidth. The worker checks and records that it runs on one core (affinity, CPU time / wall).
"""

from __future__ import annotations

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import argparse  # pylint: disable=g-import-not-at-top,g-bad-import-order
import csv
import json
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

from launch import mpmd_launch  # pylint: disable=g-import-not-at-top  (light: no JAX)

DEFAULT_EXP = 'mode.sharding.ShardingTwoProcess'
CONFIGS = ('A', 'B', 'C')
LABELS = {'A': 'MPMD, 2 processes (backbone; expert)',
          'B': 'SPMD model parallel, 2 processes',
          'C': 'whole step, 1 process'}
PLAN = '0|1'
# One XLA:CPU compute thread per process: Eigen's intra-op thread pool off. taskset pins every
# thread of the process (gloo's, the dispatcher's) to its core anyway.
WORKER_XLA_FLAGS = ('--xla_force_host_platform_device_count=1 '
                    '--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1')
WORKER_ENV = {'XLA_FLAGS': WORKER_XLA_FLAGS, 'JAX_PLATFORMS': 'cpu', 'OMP_NUM_THREADS': '1',
              'MKL_NUM_THREADS': '1', 'OPENBLAS_NUM_THREADS': '1', 'TF_CPP_MIN_LOG_LEVEL': '3'}


def _args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--exp', default=DEFAULT_EXP, help='a MoDE experiment with one expert mesh')
  p.add_argument('--rounds', type=int, default=9)
  p.add_argument('--steps', type=int, default=3, help='timed steps per configuration and round')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps per configuration')
  p.add_argument('--check_steps', type=int, default=2, help='steps compared across configs')
  p.add_argument('--timeline_steps', type=int, default=3)
  p.add_argument('--pingpong', type=int, default=20, help='round trips per message size')
  p.add_argument('--out', default='results/mpmd')
  p.add_argument('--timeout', type=float, default=1800.0, help='seconds for the whole run')
  p.add_argument('--report_from', default=None,
                 help='rewrite the report from a run\'s two_process_raw.json; run nothing')
  p.add_argument('--cores', default='0,1', help='the two cores the workers are pinned to')
  p.add_argument('--configs', default=','.join(CONFIGS),
                 help='which of A,B,C to run (A always: the timeline and ping-pong use it)')
  # Internal: a worker.
  p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--process_id', type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument('--coordinator', default=None, help=argparse.SUPPRESS)
  p.add_argument('--raw', default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  for name in ('rounds', 'steps', 'check_steps', 'timeline_steps'):
    if getattr(args, name) < 1:
      p.error(f'--{name}={getattr(args, name)}: give at least 1.')
  if args.warmup < 0 or args.pingpong < 1:
    p.error('--warmup must be >= 0 and --pingpong >= 1.')
  cores = args.cores.split(',')
  if len(cores) != 2 or not all(c.isdigit() for c in cores):
    p.error(f'--cores={args.cores!r}: give two core numbers, e.g. --cores=0,1.')
  args.cores = [int(c) for c in cores]
  configs = args.configs.split(',')
  if 'A' not in configs or any(c not in CONFIGS for c in configs):
    p.error(f'--configs={args.configs!r}: a comma list of {",".join(CONFIGS)} that includes A.')
  args.configs = tuple(c for c in CONFIGS if c in configs)
  return args


# ---- supervisor ---------------------------------------------------------------------------------
def _check_before_start(args) -> None:
  """Refuses what cannot run before any worker starts: cores, taskset, the experiment's plan."""
  allowed = os.sched_getaffinity(0)
  missing = [c for c in args.cores if c not in allowed]
  if missing or args.cores[0] == args.cores[1]:
    raise SystemExit(f'ERROR: --cores={args.cores}: need two distinct cores this process may use '
                     f'(allowed: {sorted(allowed)}).')
  if shutil.which('taskset') is None:
    raise SystemExit('ERROR: taskset (util-linux) not found: it pins each worker to one core.')
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()
  from mode_pax.mpmd import build  # pylint: disable=g-import-not-at-top
  from mode_pax.mpmd import plan as plan_lib  # pylint: disable=g-import-not-at-top
  try:
    exp = build.experiment_instance(args.exp)
    plan = build.checked_plan(exp, PLAN, num_devices=2)
  except (ValueError, plan_lib.PlanError) as e:
    raise SystemExit(f'ERROR: --exp={args.exp}: {e}') from e
  if len(plan.meshes()) != 2:
    raise SystemExit(f'ERROR: --exp={args.exp}: plan {PLAN} must give 2 meshes.')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def supervise(args, argv) -> dict:
  """Starts the two pinned workers, waits for both (or stops both), returns their raw results."""
  _check_before_start(args)
  raw = tempfile.mkdtemp(prefix='mpmd_two_process_')
  port = _free_port()
  env = dict(os.environ, **WORKER_ENV, PYTHONPATH=os.pathsep.join(
      filter(None, [_ROOT, os.environ.get('PYTHONPATH')])))
  procs, logs = [], []
  for i, core in enumerate(args.cores):
    cmd = ['taskset', '-c', str(core), sys.executable, os.path.abspath(__file__), *argv,
           '--worker', '--process_id', str(i), '--coordinator', f'127.0.0.1:{port}',
           '--raw', raw]
    log = open(os.path.join(raw, f'worker_{i}.log'), 'w')
    logs.append(log)
    procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=_ROOT))
  print(f'started workers (pids {[p.pid for p in procs]}) on cores {args.cores}; logs in {raw}',
        flush=True)
  failed = mpmd_launch.wait_for_workers(procs, args.timeout)
  failure = None
  if failed == 'timeout':
    failure = f'timeout after {args.timeout:.0f} s (raise --timeout)'
  elif failed is not None:
    failure = f'worker {failed[0]} exited with code {failed[1]}'
  if failure:
    mpmd_launch.stop_workers(procs)  # only the workers this run started
  for log in logs:
    log.close()
  if failure:
    tails = []
    for i in range(2):
      with open(os.path.join(raw, f'worker_{i}.log')) as f:
        tails.append(f'--- worker {i} log (last lines) ---\n' + ''.join(f.readlines()[-25:]))
    raise SystemExit(f'ERROR: {failure}; stopped both workers.\n' + '\n'.join(tails))
  out = {}
  for i in range(2):
    with open(os.path.join(raw, f'process_{i}.json')) as f:
      out[i] = json.load(f)
  shutil.rmtree(raw)
  return out


# ---- worker -------------------------------------------------------------------------------------
class Timeline:
  """Wall-clock spans (system-wide monotonic clock: comparable across the two processes)."""

  def __init__(self):
    self.enabled = False
    self.spans: list[dict] = []

  def timed(self, name: str, kind: str, fn: Callable[[], Any]):
    """Runs fn; when enabled, blocks on its result and records [dispatch, ready]."""
    if not self.enabled:
      return fn()
    import jax  # pylint: disable=g-import-not-at-top
    t0 = time.monotonic()
    out = fn()
    jax.block_until_ready(out)
    self.spans.append(dict(name=name, kind=kind, start=t0, end=time.monotonic()))
    return out


def _install_timing(trainer, timeline: Timeline) -> None:
  """Times every program of the MPMD step and each side of every activation move.

  The runtime has no timing hook: its `Recorder` is swapped for a subclass whose call is timed,
  and `transfer._pair_program` (the move's compiled collective-permute) is wrapped, since the
  sending process gets no array back from `PermuteTransport.move` to block on.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from mode_pax.mpmd import common  # pylint: disable=g-import-not-at-top
  from mode_pax.mpmd import transfer  # pylint: disable=g-import-not-at-top

  class TimedRecorder(common.Recorder):

    def __call__(self, name, num_devices, jitted, *args):
      return timeline.timed(name, 'program', lambda: super(TimedRecorder, self).__call__(
          name, num_devices, jitted, *args))

  trainer.recorder = TimedRecorder()
  pair_program = transfer._pair_program  # pylint: disable=protected-access

  def timed_pair_program(src_device, dst_device):
    mesh, program = pair_program(src_device, dst_device)
    role = 'send' if src_device.process_index == jax.process_index() else 'recv'

    def run(pair):
      return timeline.timed(f'move {role}', role, lambda: program(pair))
    return mesh, run
  transfer._pair_program = timed_pair_program  # pylint: disable=protected-access


def _thread_affinities() -> list[str]:
  """The distinct CPU affinities of all of this process's threads (XLA's, gloo's included)."""
  out = set()
  for tid in os.listdir('/proc/self/task'):
    try:
      with open(f'/proc/self/task/{tid}/status') as f:
        out.update(l.split(':')[1].strip() for l in f if l.startswith('Cpus_allowed_list'))
    except OSError:  # the thread ended meanwhile
      pass
  return sorted(out)


def _one_core_evidence(fn: Callable[[], Any]) -> dict:
  """Affinity of every thread, and CPU time / wall time of this process while fn runs."""
  c0, w0 = time.process_time(), time.monotonic()
  fn()
  c1, w1 = time.process_time(), time.monotonic()
  return dict(affinity=sorted(os.sched_getaffinity(0)), thread_affinities=_thread_affinities(),
              threads=len(os.listdir('/proc/self/task')), cpu_s=c1 - c0, wall_s=w1 - w0,
              cpu_per_wall=(c1 - c0) / max(w1 - w0, 1e-9))


def _pingpong(mpmd, n: int) -> list[dict]:
  """Round trips of `PermuteTransport` moves between the two processes' meshes: latency (a
  4-byte message) and bandwidth (an activation: what a merge moves)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax import numpy as jnp  # pylint: disable=g-import-not-at-top
  from mode_pax.mpmd import common  # pylint: disable=g-import-not-at-top
  from mode_pax.mpmd import transfer  # pylint: disable=g-import-not-at-top
  m0, m1 = mpmd.meshes
  rows = []
  for shape in ((1,), tuple(mpmd.act.shape)):
    like = jax.ShapeDtypeStruct(shape, jnp.float32)
    transport = transfer.PermuteTransport()
    x = common.place(np.ones(shape, np.float32), m0) if common.is_local(m0) else None
    times = []
    for k in range(n + 2):  # 2 warm-up trips (compile)
      t0 = time.monotonic()
      y = transport.move(x, m0, m1, like)
      x = transport.move(y, m1, m0, like)
      jax.block_until_ready((x, y))
      if k >= 2:
        times.append(time.monotonic() - t0)
    rows.append(dict(bytes=int(np.prod(shape)) * 4, one_way_s=statistics.median(times) / 2))
  return rows


def worker(args) -> None:
  phases, t_start = {}, time.monotonic()
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_cpu_enable_gloo_collectives', True)
  jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=2,
                             process_id=args.process_id)
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from mode_pax.mpmd import build  # pylint: disable=g-import-not-at-top
  from mode_pax.mpmd import model as model_lib  # pylint: disable=g-import-not-at-top
  from mode_pax.mpmd import transfer  # pylint: disable=g-import-not-at-top

  me = jax.process_index()
  phases['imports'] = time.monotonic() - t_start
  exp = build.experiment_instance(args.exp)
  # Adam through the trainers' optax override (both accept one): the same update in A, B and C,
  # with no cross-mesh gradient-norm reduction (the experiment's learner clips by the global
  # norm, which adds one per step to A).
  optimizer = optax.adam(exp.LEARNING_RATE)
  timeline = Timeline()
  mpmd = build.mpmd_trainer(exp, PLAN, optimizer=optimizer, transport=transfer.PermuteTransport())
  _install_timing(mpmd, timeline)
  trainers = {'A': mpmd}
  if 'B' in args.configs:
    trainers['B'] = build.spmd_trainer(exp, [0, 1], optimizer=optimizer)
    trainers['B'].recorder.enabled = True  # its compiled HLO's collectives (compiled once)
  if 'C' in args.configs:
    trainers['C'] = build.spmd_trainer(exp, [0], optimizer=optimizer) if me == 0 else None
  configs = args.configs
  flat = mpmd.pieces.init(mpmd.batch_specs, seed=1234)
  states = {c: None if t is None else t.init_state(flat) for c, t in trainers.items()}

  def run_step(config, batch):
    """One step of `config` in this process; returns the loss (None where not computed)."""
    if trainers[config] is None:  # process 1 in C: nothing to do
      return None
    states[config], loss, _, _ = trainers[config].step(states[config], batch)
    jax.block_until_ready(states[config])
    return loss

  phases['build'] = time.monotonic() - t_start - sum(phases.values())
  batches = [model_lib.synthetic_batch(exp.TRAIN_BATCH_SIZE, exp.SEQUENCE_LENGTH,
                                       exp.VOCAB_SIZE, seed=s) for s in range(args.check_steps)]
  result: dict[str, Any] = dict(process=me, devices=[d.id for d in jax.local_devices()],
                                losses={}, first_steps_s={}, rounds=[], evidence={})
  # Same variables, same batches: the losses every configuration reports must agree.
  for config in configs:
    multihost_utils.sync_global_devices(f'check {config}')
    t0 = time.monotonic()
    losses = []
    for batch in batches:
      loss = run_step(config, batch)
      losses.append(None if loss is None else float(loss))
    result['first_steps_s'][config] = time.monotonic() - t0
    result['losses'][config] = losses
    print(f'process {me}: {config} losses {losses}', flush=True)
  phases['check'] = time.monotonic() - t_start - sum(phases.values())
  mpmd.transport.reset_counters()
  run_step('A', batches[0])
  result['mpmd_bytes_per_step'] = mpmd.transport.bytes_moved
  result['mpmd_moves_per_step'] = mpmd.transport.moves
  if 'B' in configs:
    prog = trainers['B'].recorder.programs['spmd_step']
    result['spmd_collectives'] = dict(prog.stats, num_devices=prog.num_devices)
  for config in configs:
    for _ in range(args.warmup):
      run_step(config, batches[0])

  # Timed rounds, the configurations rotated so that none always follows the same one.
  for r in range(args.rounds):
    order = configs[r % len(configs):] + configs[:r % len(configs)]
    for config in order:
      multihost_utils.sync_global_devices(f'round {r} {config}')
      spans = []
      for _ in range(args.steps):
        t0 = time.monotonic()
        run_step(config, batches[0])
        spans.append((t0, time.monotonic()))
      result['rounds'].append(dict(round=r, config=config, spans=spans))
    print(f'process {me}: round {r} done', flush=True)

  phases['rounds'] = time.monotonic() - t_start - sum(phases.values())
  # One core per process: what the OS says and what the process used.
  for config in configs:
    multihost_utils.sync_global_devices(f'evidence {config}')
    result['evidence'][config] = _one_core_evidence(
        lambda c=config: [run_step(c, batches[0]) for _ in range(args.steps)])

  # Timing mode: every program and move blocked on and timed.
  multihost_utils.sync_global_devices('timeline')
  timeline.enabled = True
  steps = []
  for _ in range(args.timeline_steps):
    t0 = time.monotonic()
    run_step('A', batches[0])
    steps.append((t0, time.monotonic()))
  timeline.enabled = False
  result['timeline'] = timeline.spans
  result['timeline_steps'] = steps
  multihost_utils.sync_global_devices('pingpong')
  result['pingpong'] = _pingpong(mpmd, args.pingpong)
  multihost_utils.sync_global_devices('done')
  phases['timeline_pingpong'] = time.monotonic() - t_start - sum(phases.values())
  result['phase_s'] = phases
  os.makedirs(args.raw, exist_ok=True)
  with open(os.path.join(args.raw, f'process_{me}.json'), 'w') as f:
    json.dump(result, f)


# ---- analysis -----------------------------------------------------------------------------------
def step_times(raw: dict) -> dict[str, list[float]]:
  """Config -> per-round step time: (last end in either process - first start) / steps."""
  out = {}
  for k, row in enumerate(raw[0]['rounds']):
    other = raw[1]['rounds'][k]
    assert other['config'] == row['config'] and other['round'] == row['round']
    spans = row['spans'] + (other['spans'] if row['config'] != 'C' else [])
    start = min(s for s, _ in spans)
    end = max(e for _, e in spans)
    out.setdefault(row['config'], []).append((end - start) / len(row['spans']))
  return {c: out[c] for c in CONFIGS if c in out}


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
  out = []
  for s, e in sorted(intervals):
    if out and s <= out[-1][1]:
      out[-1] = (out[-1][0], max(out[-1][1], e))
    else:
      out.append((s, e))
  return out


def _length(intervals) -> float:
  return sum(e - s for s, e in intervals)


def _intersect(a, b) -> list[tuple[float, float]]:
  out, i, j = [], 0, 0
  while i < len(a) and j < len(b):
    s, e = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
    if s < e:
      out.append((s, e))
    if a[i][1] < b[j][1]:
      i += 1
    else:
      j += 1
  return out


def free_communication_schedule(spans: dict[int, list[dict]]) -> float:
  """The timed MPMD steps replayed with free, non-blocking moves: each process runs its programs
  in its own order at their measured durations; a receive waits only for its send to be reached.

  Returns the replayed span (s): the step time if communication cost nothing (the k-th move of
  process 0 and of process 1 are the two ends of the same move: both call it in the same order).
  """
  clock, pos, sent = {0: 0.0, 1: 0.0}, {0: 0, 1: 0}, {}
  moves = {0: 0, 1: 0}
  while any(pos[p] < len(spans[p]) for p in (0, 1)):
    progressed = False
    for p in (0, 1):
      while pos[p] < len(spans[p]):
        s = spans[p][pos[p]]
        if s['kind'] == 'program':
          clock[p] += s['end'] - s['start']
        elif s['kind'] == 'send':
          sent[moves[p]] = clock[p]
          moves[p] += 1
        else:  # recv: the matching send (same index) must have been reached
          if moves[p] not in sent:
            break
          clock[p] = max(clock[p], sent[moves[p]])
          moves[p] += 1
        pos[p] += 1
        progressed = True
    if not progressed:
      raise RuntimeError('timeline replay deadlocked: moves do not pair up')
  return max(clock.values())


def timeline_stats(raw: dict) -> dict:
  """Overlap of the two processes' compute in the timed MPMD steps, and what waits cost."""
  steps = raw[0]['timeline_steps']
  start = min(s for s, _ in steps + raw[1]['timeline_steps'])
  end = max(e for _, e in steps + raw[1]['timeline_steps'])
  n = len(steps)
  compute = {p: _union([(s['start'], s['end']) for s in raw[p]['timeline']
                        if s['kind'] == 'program']) for p in (0, 1)}
  moves = {p: _union([(s['start'], s['end']) for s in raw[p]['timeline']
                      if s['kind'] != 'program']) for p in (0, 1)}
  both = _length(_intersect(compute[0], compute[1]))
  either = _length(_union(compute[0] + compute[1]))
  busy = {p: _length(compute[p]) for p in (0, 1)}
  return dict(
      timed_step_s=(end - start) / n, busy0_s=busy[0] / n, busy1_s=busy[1] / n,
      moves0_s=_length(moves[0]) / n, moves1_s=_length(moves[1]) / n,
      overlap_s=both / n, overlap_of_compute=both / either,
      overlap_of_shorter=both / min(busy.values()),
      free_comm_step_s=free_communication_schedule(
          {p: raw[p]['timeline'] for p in (0, 1)}) / n,
      programs0=sum(s['kind'] == 'program' for s in raw[0]['timeline']) // n,
      programs1=sum(s['kind'] == 'program' for s in raw[1]['timeline']) // n)


_COLORS = {'embed': 'tab:gray', 'backbone': 'tab:blue', 'merge': 'tab:purple', 'head': 'tab:red',
           'experts': 'tab:green', 'update': 'tab:olive', 'move': 'tab:orange', 'inputs': 'k',
           'add': 'tab:cyan'}


_STEP_COLORS = {'A': 'slateblue', 'B': 'salmon', 'C': 'seagreen'}


def _color(name: str) -> str:
  for key, color in _COLORS.items():
    if name.startswith(key):
      return color
  return 'tab:brown'


def plot_timeline(raw: dict, times: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import patches  # pylint: disable=g-import-not-at-top
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(14, 6.5),
                                    gridspec_kw=dict(height_ratios=[1.2, 1]))
  t0 = min(s for s, _ in raw[0]['timeline_steps'] + raw[1]['timeline_steps'])
  for p in (0, 1):
    for s in raw[p]['timeline']:
      top.broken_barh([((s['start'] - t0) * 1e3, (s['end'] - s['start']) * 1e3)], (1 - p - 0.35, 0.7),
                      facecolors=_color(s['name']), edgecolor='white', linewidth=0.3)
  for s, _ in raw[0]['timeline_steps']:
    top.axvline((s - t0) * 1e3, color='k', linestyle=':', linewidth=0.8)
  top.set_yticks([1, 0], ['process 0, core 0\n(home: backbone...)', 'process 1, core 1\n(expert)'])
  top.set_xlabel('ms (timing mode: each program blocked on; dotted: step starts)')
  top.set_title('MPMD step, per-process program timeline')
  top.legend(handles=[patches.Patch(color=c, label=k) for k, c in _COLORS.items()],
             ncol=len(_COLORS), fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.28))
  # One round of each configuration, as the rounds ran (async dispatch, untouched).
  last = {row['config']: k for k, row in enumerate(raw[0]['rounds'])}
  y = 0
  labels = []
  for config in times:
    k = last[config]
    first = min(s for s, _ in raw[0]['rounds'][k]['spans'] + raw[1]['rounds'][k]['spans'])
    for p in ((0, 1) if config != 'C' else (0,)):
      for i, (s, e) in enumerate(raw[p]['rounds'][k]['spans']):
        bottom.broken_barh([((s - first) * 1e3, (e - s) * 1e3)], (y - 0.35, 0.7),
                           facecolors=_STEP_COLORS[config], alpha=0.6 + 0.4 * (i % 2),
                           edgecolor='k', linewidth=0.3)
      labels.append((y, f'{config} process {p}'))
      y -= 1
  bottom.set_yticks([a for a, _ in labels], [b for _, b in labels], fontsize=8)
  bottom.set_xlabel('ms from the round\'s start (steps alternate shade): ' + ', '.join(
      f'{c} {statistics.median(times[c]) * 1e3:.0f} ms/step' for c in times))
  bottom.set_title('Steps of the last round of each configuration (normal, asynchronous dispatch)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _quartiles(values: list[float]) -> tuple[float, float, float]:
  if len(values) < 2:
    return values[0], values[0], values[0]
  q = statistics.quantiles(values, n=4, method='inclusive')
  return q[0], statistics.median(values), q[2]


def report(args, argv, raw: dict, wall_s: float) -> str:
  """Writes two_process.{md,csv} and the timeline figure under --out; returns the markdown."""
  from mode_pax.mpmd import build  # pylint: disable=g-import-not-at-top
  from mode_pax.mpmd import cost_model  # pylint: disable=g-import-not-at-top
  exp = build.experiment_instance(args.exp)
  times = step_times(raw)
  med = {c: statistics.median(times[c]) for c in times}
  ratio = {(a, b): [x / y for x, y in zip(times[a], times[b])]
           for a, b in (('A', 'B'), ('A', 'C'), ('B', 'C')) if a in times and b in times}
  tl = timeline_stats(raw)
  ev = {p: raw[p]['evidence'] for p in (0, 1)}
  os.makedirs(args.out, exist_ok=True)
  summary = dict(median_s=med, ratios={f'{a}/{b}': med[a] / med[b] for a, b in ratio},
                 losses=raw[0]['losses'], losses_process1=raw[1]['losses'], timeline=tl,
                 mpmd_bytes_per_step=raw[0]['mpmd_bytes_per_step'], timeline_records={
                     p: len(raw[p]['timeline']) for p in (0, 1)}, evidence=ev,
                 pingpong=raw[0]['pingpong'], phase_s={p: raw[p]['phase_s'] for p in (0, 1)})
  with open(os.path.join(args.out, 'two_process.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  with open(os.path.join(args.out, 'two_process.csv'), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['config', 'label', 'round', 'step_ms'])
    for c in times:
      for r, t in enumerate(times[c]):
        w.writerow([c, LABELS[c], r, f'{t * 1e3:.2f}'])
  plot_timeline(raw, times, os.path.join(args.out, 'two_process_timeline.png'))
  if tuple(times) != CONFIGS:  # a partial run (e.g. the CI test): no comparison to write
    return json.dumps(summary, indent=1)
  ping = {row['bytes']: row['one_way_s'] for row in raw[0]['pingpong']}
  small, act_bytes = min(ping), max(ping)
  latency = ping[small]
  bandwidth = act_bytes / max(ping[act_bytes] - latency, 1e-9)
  mpmd_bytes, moves = raw[0]['mpmd_bytes_per_step'], raw[0]['mpmd_moves_per_step']
  coll = raw[0]['spmd_collectives']
  hw = cost_model.TPU_V5E
  loop_a = moves * latency + mpmd_bytes / bandwidth
  ici_a = moves * hw.latency + mpmd_bytes / hw.link_bandwidth
  # 2-device ring all-reduce: each device sends its operand's bytes once (reduce-scatter half,
  # all-gather half); over the one link between 2 chips on the TPU.
  spmd_bytes, spmd_count = coll.get('bytes', 0), coll.get('count', 0)
  loop_b = spmd_count * latency + spmd_bytes / bandwidth
  ici_b = spmd_count * hw.latency + spmd_bytes / hw.link_bandwidth
  cmd = '.venv/bin/python benchmarks/mpmd_two_process.py ' + ' '.join(
      shlex.quote(a) for a in argv)
  busy = tl['busy0_s'] + tl['busy1_s']
  lines = [
      '# Measured MPMD on two CPU processes, one core each',
      '']
  if max(raw['load']) > 2.5:
    lines += [f'**Measured on a loaded machine** (load average up to {max(raw["load"]):.1f} on '
              f'{os.cpu_count()} cores): other processes shared the two pinned cores, unevenly '
              '(CPU time / wall time below), so the times and ratios below mix load with the '
              'configurations. Rerun on a quiet machine for numbers to quote.', '']
  lines += [
      f'Written by `{cmd.strip()}` in {wall_s / 60:.1f} min on {platform.node()} '
      f'({platform.processor() or platform.machine()}, {os.cpu_count()} cores, '
      f'{platform.platform()}); 1-minute load average {raw["load"][0]:.1f} at the start, '
      f'{raw["load"][1]:.1f} at the end (2 = both cores busy). Per-round step times: '
      '`two_process.csv`; timeline: `two_process_timeline.png`; raw per-process records: '
      '`two_process_raw.json` (`--report_from` rewrites this page from it).',
      '',
      f'Experiment `{args.exp}`: {exp.NUM_LAYERS}-layer backbone (d = {exp.MODEL_DIMS}, '
      f'ff = {exp.HIDDEN_DIMS}, {exp.NUM_HEADS} heads), {exp.NUM_DOMAIN_EXPERTS} expert of '
      f'{exp.EXPERT_LAYERS} layer(s) per block, {exp.NUM_BLOCKS} blocks, batch '
      f'{exp.TRAIN_BATCH_SIZE} x {exp.SEQUENCE_LENGTH}, fp32, Adam; backbone frozen, expert and '
      'gates train. Two worker processes on 127.0.0.1 (`jax.distributed`, gloo collectives over '
      f'TCP loopback), process i pinned to core i by `taskset`, XLA_FLAGS=`{WORKER_XLA_FLAGS}`, '
      'OMP/MKL/OpenBLAS threads 1.',
      '',
      '| config | what | median step (ms) | quartiles (ms) | rounds |',
      '|---|---|---:|---:|---:|']
  for c in CONFIGS:
    q = _quartiles(times[c])
    lines.append(f'| {c} | {LABELS[c]} | {med[c] * 1e3:.0f} | {q[0] * 1e3:.0f} - '
                 f'{q[2] * 1e3:.0f} | {len(times[c])} |')
  lines += ['', '| ratio | of medians | per-round median | per-round quartiles |',
            '|---|---:|---:|---:|']
  for (a, b), values in ratio.items():
    q = _quartiles(values)
    lines.append(f'| {a}/{b} | {med[a] / med[b]:.3f} | {q[1]:.3f} | {q[0]:.3f} - {q[2]:.3f} |')
  lines += [
      '',
      f'Each round ran {args.steps} step(s) of every configuration between barriers '
      f'({args.rounds} rounds, order rotated each round, {args.warmup} untimed warm-up steps '
      'each); a round\'s step time is the span from the first step\'s start to the last step\'s '
      'end in either process, divided by the steps.',
      '',
      '**Same results.** From the same variables and batches, the losses of the first '
      f'{args.check_steps} steps: ' + '; '.join(
          f'{c}: ' + ', '.join(f'{x:.6f}' for x in raw[0]['losses'][c]) for c in CONFIGS) + '.',
      '',
      '**One core per process.** ' + '; '.join(
          f'process {p}: every thread\'s affinity {ev[p]["A"]["thread_affinities"]} '
          f'({ev[p]["A"]["threads"]} threads), CPU time / wall time in A '
          f'{ev[p]["A"]["cpu_per_wall"]:.2f}, in B {ev[p]["B"]["cpu_per_wall"]:.2f}'
          for p in (0, 1)) + f'; process 0 in C {ev[0]["C"]["cpu_per_wall"]:.2f} '
      '(at most 1.00 on one core, less when other processes share the core; process 1 waits '
      'at the barrier during C).',
      '',
      '**Bytes between the processes per step.** A (MPMD): '
      f'{mpmd_bytes / 1e6:.2f} MB in {moves} moves (`PermuteTransport.bytes_moved`: the block '
      'input to the expert, its output back, their cotangents in the backward). B (SPMD): the '
      f'compiled step has {spmd_count} collectives with {spmd_bytes / 1e6:.2f} MB of operands per '
      'device (a 2-device all-reduce sends about its operand\'s bytes).',
      '',
      '**Timeline** (timing mode, each program and each side of each move blocked on: '
      f'{tl["timed_step_s"] * 1e3:.0f} ms/step vs {med["A"] * 1e3:.0f} dispatched '
      f'asynchronously). Per step, process 0 computes for {tl["busy0_s"] * 1e3:.0f} ms '
      f'({tl["programs0"]} programs) and process 1 for {tl["busy1_s"] * 1e3:.0f} ms '
      f'({tl["programs1"]}); both compute at the same time for {tl["overlap_s"] * 1e3:.0f} ms: '
      f'**overlap {tl["overlap_of_compute"]:.0%} of the time either computes, '
      f'{tl["overlap_of_shorter"]:.0%} of the shorter one\'s compute**. Moves (including waiting '
      f'for the other process) take {tl["moves0_s"] * 1e3:.0f} / {tl["moves1_s"] * 1e3:.0f} '
      'ms per step in process 0 / 1.',
      '',
      '**Communication: loopback against TPU v5e ICI.** A ping-pong of `PermuteTransport` moves '
      f'here: {latency * 1e6:.0f} us one way for 4 bytes, {ping[act_bytes] * 1e3:.2f} ms for an '
      f'activation of {act_bytes / 1e6:.2f} MB, i.e. ~{bandwidth / 1e9:.2f} GB/s past the latency. '
      f'The TPU v5e constants of `mode_pax/mpmd/cost_model.py` ({hw.link_bandwidth / 1e9:.0f} GB/s '
      'per ICI link and direction, from Google\'s v5e page; 10 us per collective, an assumption) '
      f'put A\'s {moves} moves at {ici_a * 1e3:.2f} ms per step on ICI against '
      f'{loop_a * 1e3:.1f} ms on loopback ({loop_a / med["A"]:.0%} of A\'s step here), and B\'s '
      f'{spmd_count} all-reduces at {ici_b * 1e3:.2f} ms against {loop_b * 1e3:.1f} ms '
      f'({loop_b / med["B"]:.0%} of B\'s step; B\'s collectives also wait for the slower process '
      f'each time). Loopback gloo has ~{latency / hw.latency:.0f}x the latency and '
      f'~{hw.link_bandwidth / bandwidth:.0f}x less bandwidth than one ICI link. What transfers to '
      'TPU is therefore the compute side of A/C: how much of two programs\' work overlaps under '
      'the model\'s dependencies (below), which does not depend on the link. The communication '
      'side does not: A\'s moves are a few per merge and cheap on either link, while B pays a '
      f'latency on each of its {spmd_count} collectives, so A/B here (loopback) is far more '
      'favourable to MPMD than A/B would be on ICI. And a TPU v5e computes this toy model ~1000x '
      'faster than one CPU core, so at this size communication, not compute, would dominate '
      'there: for paper-scale projections see `projection.md` (cost_model.py).',
      '',
      f'**Ideal and gap.** Measured C/A = {med["C"] / med["A"]:.2f}. From the timed programs '
      f'(process 0 + process 1 = {busy * 1e3:.0f} ms of compute per step): (1) perfect balance '
      'and overlap with free communication would give (sum) / (larger) = '
      f'{busy / max(tl["busy0_s"], tl["busy1_s"]):.2f}x over that compute, 2 only for equal '
      f'halves (here {tl["busy0_s"] * 1e3:.0f} / {tl["busy1_s"] * 1e3:.0f} ms). (2) The model\'s '
      'dependencies: replaying each process\'s programs in its own order at their measured '
      'durations, with free, non-blocking moves, takes '
      f'{tl["free_comm_step_s"] * 1e3:.0f} ms per step, i.e. {busy / tl["free_comm_step_s"]:.2f}x '
      'over the compute: the embedding, the merges, the head (softmax, loss) and their backward '
      'run on the home process while the expert waits for them, and block 0\'s expert backward '
      '(weight gradients) and the expert\'s update run while the home process, whose frozen '
      'block 0 has no backward, has little to do. (3) Splitting the step into '
      f'{tl["programs0"] + tl["programs1"]} programs (C runs one, which XLA fuses and schedules '
      f'as a whole): their compute sums to {busy * 1e3:.0f} ms against C\'s {med["C"] * 1e3:.0f} '
      f'ms step ({busy / med["C"]:.2f}; above 1 is work the split adds, timed in a different '
      'phase, so load changes move it too). Together (2) and (3) bound C/A at '
      f'{med["C"] / tl["free_comm_step_s"]:.2f}; the rest of the measured gap is communication '
      'and waiting over loopback (the moves above, and timing noise on this shared machine).',
  ]
  text = '\n'.join(lines) + '\n'
  with open(os.path.join(args.out, 'two_process.md'), 'w') as f:
    f.write(text)
  return text


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = _args(argv)
  if args.worker:
    worker(args)
    return
  if args.report_from:  # the report of an earlier run, from its raw results
    with open(args.report_from) as f:
      saved = json.load(f)
    saved_args = _args(saved['argv'])
    saved_args.out = args.out
    raw = {int(p) if p.isdigit() else p: v for p, v in saved['raw'].items()}
    print(report(saved_args, saved['argv'], raw, saved['wall_s']))
    return
  t0, load_before = time.monotonic(), os.getloadavg()[0]
  raw = supervise(args, argv)
  wall = time.monotonic() - t0
  raw['load'] = (load_before, os.getloadavg()[0])
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'two_process_raw.json'), 'w') as f:
    json.dump(dict(argv=argv, wall_s=wall, raw=raw), f)
  print(report(args, argv, raw, wall))


if __name__ == '__main__':
  main()
