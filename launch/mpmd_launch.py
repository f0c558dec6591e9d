"""MPMD launcher for MoDE: single controller, or one process per host/device (multi-controller).

  # Single controller: every mesh in this process (a v5e-8 host, or 8 virtual CPU devices).
  python -m launch.mpmd_launch --exp=mode.sharding.ShardingMesh5Small --steps=5 \\
      --job_log_dir=/tmp/mpmd_run --checkpoint_every=100
  # Multi-controller on this machine: N CPU processes on 127.0.0.1, one device each (gloo).
  python -m launch.mpmd_launch --exp=mode.sharding.ShardingMesh5Small --local_processes=8 \\
      --job_log_dir=/tmp/mpmd_run
  # Cloud TPU: the mesh -> chip/host mapping and the commands that ship the code, set up every
  # worker and start them all, without running anything.
  python -m launch.mpmd_launch --exp=mode.sharding.ShardingMesh5 --tpu=v5litepod-16 \\
      --tpu_name=my-tpu --zone=us-west4-a --job_log_dir=/mnt/shared/run --dry-run

Data: the experiment's own training input (`datasets()`: its seqio task through Pax's
`SeqIOInput`, as paxml.main reads it), read whole by every process with the experiment's shuffle
seed, so every process sees the same batch at every step (`launch/mpmd_input.py`);
`--data=synthetic` trains on random tokens seeded by the step (benchmarks; the sharding studies).

Checkpoints: with --job_log_dir, every --checkpoint_every steps and at the end, a paxml checkpoint
`<job_log_dir>/checkpoints/checkpoint_XXXXXXXX` (variables named as the Pax experiment names them,
the step, and each mesh's optimizer state) that `paxml.main --mode=eval`, `mode_pax.evaluate` and
Pax warm-start rules read (`launch/mpmd_checkpoint.py`: the state is gathered to every process and
orbax writes it from process 0). A job_log_dir that holds checkpoints is resumed: variables,
optimizer state and step from the newest one, the training input skipping the batches already
trained. On a multi-host TPU slice --job_log_dir must be a folder every host sees at the same
path (a shared mount, e.g. gcsfuse): the resume reads it with local-file paths.

Workers (`--worker`) call `jax.distributed.initialize`, check that the plan's devices are where it
says (on worker i's process with one CPU device per worker; on the --tpu slice's hosts and chips),
run only the programs of meshes that hold one of their devices and move activations with a
collective-permute over the mesh {source device, destination device}
(`mode_pax.mpmd.transfer.PermuteTransport`). The supervisor (`--local_processes`) bounds the run
(`--timeout`), stops every worker it started (by pid) when one fails, and says which one and why.
Results (losses, bytes moved) go to --out as JSON.

Bad input is refused before any work: flags (an unknown --tpu lists the known types) before the
heavy imports; the mesh plan (fits the TPU slice or the --local_processes workers, places every
expert, model-parallel dimensions divide; local workers the plan leaves without work), an
experiment without a training input, and a job_log_dir whose checkpoints another experiment, plan
or optimizer wrote, before any worker starts or anything compiles. The plan is the experiment's
MESH_PLAN (or --plan) written for its NUM_DEVICES, or, without NUM_DEVICES, for the devices it runs
on: the --tpu slice's chips in a dry run, the workers' devices. Chips and hosts of a TPU slice that
a plan leaves without work are named (the run goes ahead: an 8-chip study on a v5litepod-16 is a
valid choice; every host still starts its launcher process, since all processes join
jax.distributed).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

# Light (no JAX): flags are checked against it before the ~15 s of JAX/Pax imports.
from launch import topology

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tpu_type(value: str) -> str:
  if value not in topology.SLICES:
    raise argparse.ArgumentTypeError(topology.unknown_type_message(value))
  return value


def _args(argv=None):
  p = argparse.ArgumentParser(prog='python -m launch.mpmd_launch', description=__doc__.split(
      '\n')[0])
  p.add_argument('--exp', required=True, help='experiment: mode.sharding.X or module.Class')
  p.add_argument('--plan', default=None, help='mesh plan preset or spec (default: MESH_PLAN)')
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--seed', type=int, default=1234, help='variable initialisation seed')
  p.add_argument('--optimizer', choices=('learner', 'adam', 'sgd'), default='learner',
                 help="'learner': the experiment's own (praxis learner: its optimizer, schedule, "
                 "weight decay and clipping, as paxml.main trains); 'adam', 'sgd': plain optax "
                 '(e.g. for benchmarks), at --learning_rate')
  p.add_argument('--learning_rate', type=float, default=None,
                 help='for --optimizer=adam|sgd (default: the experiment\'s LEARNING_RATE)')
  p.add_argument('--init_from', default=None,
                 help="a Pax checkpoint folder (holding checkpoint_XXXXXXXX) to start from")
  p.add_argument('--init_rules', choices=('same', 'backbone'), default='same',
                 help="'same': a MoDE checkpoint of this model; 'backbone': a plain "
                      'TransformerLm backbone checkpoint (experts and gates stay random)')
  p.add_argument('--transport', choices=('device_put', 'permute'), default=None,
                 help='single controller only; workers always use permute')
  p.add_argument('--data', choices=('experiment', 'synthetic'), default='experiment',
                 help="'experiment': its training input (datasets(), seqio), as paxml.main "
                      "reads it; 'synthetic': random tokens seeded by the step (benchmarks)")
  p.add_argument('--job_log_dir', default=None,
                 help='run folder: Pax checkpoints go to <it>/checkpoints (every '
                      '--checkpoint_every steps and at the end); a folder with checkpoints is '
                      'resumed')
  p.add_argument('--checkpoint_every', type=int, default=0,
                 help='steps between checkpoints (0: only at the end); needs --job_log_dir')
  p.add_argument('--out', default=None, help='folder for results (JSON: losses, bytes moved)')
  # Multi-controller.
  p.add_argument('--local_processes', type=int, default=0,
                 help='start this many local CPU worker processes (one device each)')
  p.add_argument('--timeout', type=float, default=300.0, help='seconds for the whole run')
  p.add_argument('--worker', action='store_true', help='run as one multi-controller process')
  p.add_argument('--process_id', type=int, default=0)
  p.add_argument('--num_processes', type=int, default=1)
  p.add_argument('--coordinator', default=None, help='host:port (CPU); TPU detects it')
  p.add_argument('--fail_at_step', type=int, default=-1, help='testing: a worker dies here')
  p.add_argument('--fail_process', type=int, default=-1, help='testing: which worker dies')
  # Cloud TPU.
  p.add_argument('--dry-run', '--dry_run', dest='dry_run', action='store_true',
                 help='print the mesh -> chip/host mapping and worker commands; run nothing')
  p.add_argument('--tpu', default=None, type=_tpu_type,
                 help='with --dry-run: the Cloud TPU accelerator type to plan for, one of '
                      f'{", ".join(topology.SLICES)} (default: the experiment\'s TPU_TYPE, '
                      'else v5litepod-8); in a run on TPU (the dry run\'s commands pass it): '
                      'check that the plan\'s devices are on that slice\'s hosts and chips')
  p.add_argument('--tpu_name', default='TPU_NAME')
  p.add_argument('--zone', default='ZONE')
  p.add_argument('--project', default=None)
  args = p.parse_args(argv)
  if args.tpu and args.local_processes:
    p.error(f'--tpu={args.tpu} is for --dry-run (it maps the plan onto that slice and prints the '
            'per-host commands) or for the TPU workers it starts (they check that the devices '
            'are where the plan says); drop it with --local_processes.')
  if args.checkpoint_every < 0 or (args.checkpoint_every and not args.job_log_dir):
    p.error(f'--checkpoint_every={args.checkpoint_every}: give a number of steps >= 0 and '
            '--job_log_dir, the folder the checkpoints go to.')
  if args.worker and args.local_processes:
    p.error('--worker is one process of a run; --local_processes starts the workers: give one.')
  if args.local_processes < 0:
    p.error(f'--local_processes={args.local_processes}: give the number of local CPU workers '
            '(one device each), or 0 to run in this process.')
  if args.learning_rate is not None and args.optimizer == 'learner':
    p.error('--learning_rate is for --optimizer=adam|sgd; the experiment\'s learner has its own '
            'schedule (set LEARNING_RATE in the experiment, or give --optimizer=adam|sgd).')
  return args


class _LaunchError(Exception):
  """Bad input found before anything started: main prints the message, no traceback."""


def _experiment(name: str):
  """The experiment instance; an unknown name is a _LaunchError with the registry's message."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()
  from mode_pax.mpmd import build  # pylint: disable=g-import-not-at-top
  try:
    return build.experiment_instance(name)
  except ValueError as e:
    raise _LaunchError(str(e)) from e


def _checked_plan(args, exp, num_devices: int, devices: str, more_devices):
  """The plan of `exp` for `num_devices` devices, checked as the run will check it.

  `devices` says what the devices are (e.g. '--tpu=v5litepod-16 (16 chips)') and
  `more_devices(n)` how to get n of them, for the message.
  """
  from mode_pax.mpmd import build  # pylint: disable=g-import-not-at-top
  from mode_pax.mpmd import plan as plan_lib  # pylint: disable=g-import-not-at-top
  try:
    return build.checked_plan(exp, args.plan, num_devices=num_devices)
  except plan_lib.PlanError as e:
    needed = getattr(exp, 'NUM_DEVICES', None)
    fix = f' {more_devices(needed)}' if needed and needed > num_devices else ''
    raise _LaunchError(f'{args.exp} on {devices}: {e}{fix}') from e
  except ValueError as e:  # not a MoDE experiment
    raise _LaunchError(str(e)) from e


def _passthrough(args) -> str:
  """The launcher arguments a worker repeats."""
  keep = ['--exp', args.exp, '--steps', str(args.steps), '--seed', str(args.seed),
          '--optimizer', args.optimizer, '--init_rules', args.init_rules, '--data', args.data,
          '--checkpoint_every', str(args.checkpoint_every)]
  for flag, value in (('--plan', args.plan), ('--learning_rate', args.learning_rate),
                      ('--init_from', args.init_from), ('--out', args.out),
                      ('--job_log_dir', args.job_log_dir)):
    if value is not None:
      keep += [flag, str(value)]
  return ' '.join(shlex.quote(k) for k in keep)


# ---- dry run ------------------------------------------------------------------------------------
def dry_run(args) -> int:
  exp = _experiment(args.exp)
  try:
    tpu = topology.get_slice(args.tpu or getattr(exp, 'TPU_TYPE', None) or 'v5litepod-8')
  except ValueError as e:  # the experiment's TPU_TYPE is unknown
    raise _LaunchError(f'{args.exp}.TPU_TYPE: {e} Or give --tpu.') from e

  def bigger(needed):
    fit = topology.smallest_slice_for(needed, tpu)
    return (f'The experiment is written for NUM_DEVICES={needed} chips: use '
            f'--tpu={fit.accelerator_type}.' if fit else
            f'The experiment is written for NUM_DEVICES={needed} chips.')

  # Written for the slice's chips (unless the experiment has NUM_DEVICES), not for this
  # machine's devices.
  plan = _checked_plan(args, exp, tpu.num_chips,
                       f'--tpu={tpu.accelerator_type} ({tpu.num_chips} chips)', bigger)
  print(topology.describe(plan, tpu))
  print('commands, in order, from this machine (ship the code, set up every worker, start all '
        'workers together):')
  for cmd in topology.worker_commands(tpu, _passthrough(args), tpu_name=args.tpu_name,
                                      zone=args.zone, project=args.project, source=_ROOT):
    print('  ' + cmd)
  return 0


# ---- supervisor ---------------------------------------------------------------------------------
def _worker_xla_flags(flags: str) -> str:
  """XLA_FLAGS of a local worker: the caller's (e.g. its optimisation settings) with one CPU
  device per process in place of any device count they set."""
  kept = [f for f in flags.split() if not f.startswith('--xla_force_host_platform_device_count')]
  return ' '.join(kept + ['--xla_force_host_platform_device_count=1'])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def supervise(args) -> int:
  """Starts --local_processes CPU workers and waits for all, or stops them all on a failure."""
  n = args.local_processes
  # The workers would each find a bad plan only after their imports, and the others would wait
  # for them: check it here first, before any worker starts or any output is written.
  plan = _checked_plan(
      args, _experiment(args.exp), n, f'--local_processes={n} (one CPU device each)',
      lambda needed: f'The experiment is written for NUM_DEVICES={needed}: give '
                     f'--local_processes={needed}.')
  # One CPU device per worker: a worker the plan leaves without work is a mistake here (unlike
  # a TPU slice's fixed hosts), and too few workers cannot run it (checked above).
  unused = plan.unused_devices(n)
  if unused:
    needed = getattr(_experiment(args.exp), 'NUM_DEVICES', None)
    raise _LaunchError(
        f'--local_processes={n}: plan {plan.name} ({plan.spec()}) uses devices '
        f'{plan.devices_used()}, so workers {unused} would get no work'
        + (f' (the experiment is written for NUM_DEVICES={needed})' if needed else '')
        + f': give --local_processes={max(plan.devices_used()) + 1}'
        + (', or a --plan that uses every worker.' if not needed else '.'))
  if args.data == 'experiment':
    from launch import mpmd_input  # pylint: disable=g-import-not-at-top
    try:  # configuration only: the workers open the data
      mpmd_input.train_input_params(_experiment(args.exp), args.exp)
    except mpmd_input.InputError as e:
      raise _LaunchError(str(e)) from e
  _check_resume(args, plan)
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS=_worker_xla_flags(os.environ.get('XLA_FLAGS', '')),
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
             PYTHONPATH=os.pathsep.join(filter(None, [_ROOT, os.environ.get('PYTHONPATH')])))
  out = args.out or os.path.join('results', 'mpmd', 'launch')
  os.makedirs(out, exist_ok=True)
  procs, logs = [], []
  for i in range(n):
    cmd = [sys.executable, '-m', 'launch.mpmd_launch'] + shlex.split(_passthrough(args)) + [
        '--worker', '--process_id', str(i), '--num_processes', str(n),
        '--coordinator', f'127.0.0.1:{port}', '--out', out,
        '--fail_at_step', str(args.fail_at_step), '--fail_process', str(args.fail_process)]
    log = open(os.path.join(out, f'worker_{i}.log'), 'w')
    logs.append(log)
    procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=_ROOT))
  print(f'started {n} workers (pids {[p.pid for p in procs]}), coordinator 127.0.0.1:{port}, '
        f'logs in {out}', flush=True)
  failed = wait_for_workers(procs, args.timeout)
  failure = None
  if failed == 'timeout':
    running = [i for i, p in enumerate(procs) if p.poll() is None]
    failure = (f'timeout: workers {running} still running after {args.timeout:.0f} s; '
               'stopping them. Raise --timeout or check the logs in ' + out)
  elif failed is not None:
    i, code = failed
    failure = (f'worker {i} (pid {procs[i].pid}) exited with code {code}; stopping the other '
               f'workers. Its log ({out}/worker_{i}.log) ends with:\n' + _tail(out, i))
  if failure:
    stop_workers(procs)
  for log in logs:
    log.close()
  if failure:
    print('ERROR: ' + failure, file=sys.stderr, flush=True)
    return 1
  print(f'all {n} workers finished', flush=True)
  summary = os.path.join(out, 'process_0.json')
  if os.path.exists(summary):
    with open(summary) as f:
      print(json.dumps(json.load(f)['losses']))
  return 0


def _tail(out, i, lines=15) -> str:
  try:
    with open(os.path.join(out, f'worker_{i}.log')) as f:
      return ''.join(f.readlines()[-lines:])
  except OSError:
    return '(no log)'


def wait_for_workers(procs, timeout: float) -> tuple[int, int] | str | None:
  """Waits for worker processes: None when all exited 0; (index, exit code) of the first that
  failed, the cause first (a worker that exited on its own, code > 0, before one a signal ended,
  e.g. a gloo abort, -6, because its peer had just gone); 'timeout' after `timeout` s."""
  deadline = time.monotonic() + timeout
  while True:
    codes = [p.poll() for p in procs]
    bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
    if bad:
      return min(bad, key=lambda ic: (ic[1] < 0, ic[0]))
    if all(c == 0 for c in codes):
      return None
    if time.monotonic() > deadline:
      return 'timeout'
    time.sleep(0.2)


def stop_workers(procs, grace=5.0):
  """SIGTERM, then SIGKILL after `grace` s, to the workers this supervisor started."""
  for p in procs:
    if p.poll() is None:
      p.send_signal(signal.SIGTERM)
  end = time.monotonic() + grace
  for p in procs:
    try:
      p.wait(max(0.0, end - time.monotonic()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


# ---- a worker or the single controller ----------------------------------------------------------
def _watch_parent():
  """Exits this worker if its supervisor disappears (no orphans left blocking in a collective)."""
  parent = os.getppid()

  def loop():
    while True:
      time.sleep(0.5)
      if os.getppid() != parent:
        print('supervisor is gone; exiting', file=sys.stderr, flush=True)
        os._exit(3)  # pylint: disable=protected-access
  threading.Thread(target=loop, daemon=True).start()


def _run_info(args, plan) -> dict[str, str]:
  """What a resume must match (mpmd_checkpoint.RUN_INFO)."""
  from launch import mpmd_checkpoint  # pylint: disable=g-import-not-at-top
  from mode_pax import registry  # pylint: disable=g-import-not-at-top
  from mode_pax.mpmd import build  # pylint: disable=g-import-not-at-top
  name = registry.experiment_name(type(build.experiment_instance(args.exp)))
  return mpmd_checkpoint.run_info(name, plan.spec(), args.optimizer, args.learning_rate)


def _check_resume(args, plan) -> int | None:
  """The step a run resumes from (None: fresh); _LaunchError when the checkpoints do not fit."""
  from launch import mpmd_checkpoint  # pylint: disable=g-import-not-at-top
  try:
    return mpmd_checkpoint.check_resume(args.job_log_dir, _run_info(args, plan))
  except mpmd_checkpoint.ResumeError as e:
    raise _LaunchError(str(e)) from e


def _check_placement(args, plan) -> None:
  """_LaunchError unless every device of the plan is where the plan says: on its TPU host (and
  chip) with --tpu, on worker i's process with one device per worker (--local_processes)."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  if args.tpu:
    tpu = topology.get_slice(args.tpu)
    if jax.process_count() != tpu.num_hosts or len(devices) != tpu.num_chips:
      raise _LaunchError(
          f'--tpu={args.tpu} has {tpu.num_hosts} host(s) and {tpu.num_chips} chips, but JAX '
          f'sees {jax.process_count()} process(es) and {len(devices)} devices: start the '
          'launcher on every worker (--worker=all), on the slice --tpu names.')
    problems = topology.check_placement(plan, devices, tpu.host_of, tpu.chip_coords)
  elif args.worker and args.coordinator and len(devices) == args.num_processes:
    problems = topology.check_placement(plan, devices, lambda i: i)  # one device per worker
  else:
    return
  if problems:
    raise _LaunchError(f'process {jax.process_index()}: the devices are not where plan '
                       f'{plan.name} ({plan.spec()}) puts them: ' + '; '.join(problems)
                       + '. Fix the --tpu type or the process order; nothing ran.')


def _check_same_batch(batch, step: int) -> None:
  """_LaunchError unless every process read the same batch (compares a checksum of its ids)."""
  import zlib  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  digest = zlib.crc32(np.ascontiguousarray(batch['ids']).tobytes()) % (2 ** 31)
  digests = np.asarray(multihost_utils.process_allgather(np.array([digest], np.int32)))
  if len(set(digests.reshape(-1).tolist())) != 1:
    raise _LaunchError(
        f'the processes read different batches for step {step} (checksums '
        f'{digests.reshape(-1).tolist()}): the training input is not deterministic across '
        'processes (its seed, or a data build that differs between hosts).')


def run(args) -> int:
  """Trains up to --steps steps, single controller or as worker --process_id."""
  if args.worker:
    import jax  # pylint: disable=g-import-not-at-top
    _watch_parent()
    if jax.config.jax_platforms in (None, '', 'cpu') and args.coordinator:
      jax.config.update('jax_cpu_enable_gloo_collectives', True)
    kwargs = {}
    if args.coordinator:
      kwargs = dict(coordinator_address=args.coordinator, num_processes=args.num_processes,
                    process_id=args.process_id)
    jax.distributed.initialize(**kwargs)
  import jax  # pylint: disable=g-import-not-at-top,redefined-outer-name
  import optax  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()
  from launch import mpmd_checkpoint  # pylint: disable=g-import-not-at-top
  from launch import mpmd_input  # pylint: disable=g-import-not-at-top
  from mode_pax import checkpoints  # pylint: disable=g-import-not-at-top
  from mode_pax import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
  from mode_pax import naming  # pylint: disable=g-import-not-at-top
  from mode_pax import paths  # pylint: disable=g-import-not-at-top
  from mode_pax.mpmd import build  # pylint: disable=g-import-not-at-top
  from mode_pax.mpmd import model as model_lib  # pylint: disable=g-import-not-at-top
  from mode_pax.mpmd import transfer  # pylint: disable=g-import-not-at-top

  exp = build.experiment_instance(args.exp)
  lr = args.learning_rate or exp.LEARNING_RATE
  opt = {'learner': lambda: None, 'adam': lambda: optax.adam(lr),  # None: the learner
         'sgd': lambda: optax.sgd(lr, momentum=0.9)}[args.optimizer]()
  multi = jax.process_count() > 1
  transport = (transfer.PermuteTransport() if multi or args.transport == 'permute'
               else transfer.DevicePutTransport())
  trainer = build.mpmd_trainer(exp, args.plan, optimizer=opt, transport=transport)
  pieces, specs = trainer.pieces, trainer.batch_specs
  me = jax.process_index()
  # Everything that can be wrong is checked before the first program runs.
  _check_placement(args, trainer.plan)
  info = _run_info(args, trainer.plan)
  start = _check_resume(args, trainer.plan) or 0
  if args.data == 'experiment':
    try:
      batches = mpmd_input.batches(exp, args.exp, specs, start_step=start)
      next_batch = lambda step: next(batches)
      mpmd_input.train_input_params(exp, args.exp)  # its errors now, before the first step
    except mpmd_input.InputError as e:
      raise _LaunchError(str(e)) from e
  else:
    next_batch = lambda step: model_lib.synthetic_batch(
        exp.TRAIN_BATCH_SIZE, exp.SEQUENCE_LENGTH, exp.VOCAB_SIZE, seed=step)
  flat = pieces.init(specs, seed=args.seed)
  if start:
    try:
      mpmd_checkpoint.check_variables(args.job_log_dir, start,
                                      {k: v.shape for k, v in flat.items()})
    except mpmd_checkpoint.ResumeError as e:
      raise _LaunchError(str(e)) from e
    flat = checkpoints.read_variables(paths.checkpoint_dir(args.job_log_dir), start)
  elif args.init_from:
    rules = ((r'(.*)', '{}'),) if args.init_rules == 'same' else (
        naming.backbone_from_transformer_lm(exp.NUM_LAYERS, exp.NUM_BLOCKS))
    flat, _ = checkpoints.load_into(flat, args.init_from, load_rules=rules)
  state = trainer.init_state(flat)
  if start:
    try:
      state = mpmd_checkpoint.restore_opt(args.job_log_dir, start, state)
    except mpmd_checkpoint.ResumeError as e:
      raise _LaunchError(str(e)) from e
  if args.job_log_dir and me == 0:
    mpmd_checkpoint.write_run_info(args.job_log_dir, info, experiment_lib.EXPERIMENT_MARKER)
  print(f'process {me}/{jax.process_count()}: devices {[d.id for d in jax.local_devices()]}\n'
        + trainer.plan.describe(), flush=True)
  if start:
    print(f'resumed from step {start} ({args.job_log_dir}); the training input skipped '
          f'{start} batches', flush=True)
  unused = trainer.plan.unused_devices(jax.device_count())
  if unused and me == 0:
    print(f'note: devices {unused} get no work under plan {trainer.plan.name}.', flush=True)

  def save(step):
    if args.job_log_dir:
      folder = mpmd_checkpoint.save(args.job_log_dir, step, state, trainer.meshes)
      print(f'step {step}: saved {folder}', flush=True)

  losses, times = [], []
  for step in range(start, args.steps):
    if step == args.fail_at_step and me == args.fail_process:
      print(f'process {me}: failing at step {step} as asked (--fail_at_step)', flush=True)
      os._exit(17)  # pylint: disable=protected-access
    batch = next_batch(step)
    if multi and step == start:
      _check_same_batch(batch, step)
    t0 = time.perf_counter()
    trainer.transport.reset_counters()
    state, loss, _, _ = trainer.step(state, batch)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
    if loss is not None:
      losses.append(float(loss))
      print(f'step {step}: loss {losses[-1]:.6f} ({times[-1]:.2f} s)', flush=True)
    else:
      print(f'step {step}: done ({times[-1]:.2f} s)', flush=True)
    done = step + 1
    if args.checkpoint_every and done % args.checkpoint_every == 0 and done < args.steps:
      save(done)
  if start < args.steps or start == 0:
    save(args.steps)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f'process_{me}.json'), 'w') as f:
      json.dump(dict(process=me, num_processes=jax.process_count(), start_step=start,
                     losses=losses, step_seconds=times,
                     bytes_moved_per_step=trainer.transport.bytes_moved,
                     plan=trainer.plan.spec()), f, indent=1)
  return 0


def main(argv=None) -> int:
  args = _args(argv)
  try:
    if args.dry_run:
      return dry_run(args)
    if args.local_processes:
      return supervise(args)
    return run(args)
  except _LaunchError as e:
    print(f'ERROR: {e}', file=sys.stderr, flush=True)
    return 2


if __name__ == '__main__':
  sys.exit(main())
