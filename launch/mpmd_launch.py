"""MPMD launcher for MoDE: single controller, or one process per host/device (multi-controller).

  # Single controller: every mesh in this process (a v5e-8 host, or 8 virtual CPU devices).
  python -m launch.mpmd_launch --exp=mode.sharding.ShardingMesh5Small --steps=5
  # Multi-controller on this machine: N CPU processes on 127.0.0.1, one device each (gloo).
  python -m launch.mpmd_launch --exp=mode.sharding.ShardingMesh5Small --local_processes=8
  # Cloud TPU: the mesh -> chip/host mapping and the per-worker commands, without running.
  python -m launch.mpmd_launch --exp=mode.sharding.ShardingMesh5 --tpu=v5litepod-16 \\
      --tpu_name=my-tpu --zone=us-west4-a --dry-run

Workers (`--worker`) call `jax.distributed.initialize`, run only the programs of meshes that hold
one of their devices and move activations with a collective-permute over the mesh {source
device, destination device} (`mode_pax.mpmd.transfer.PermuteTransport`). The supervisor
(`--local_processes`) bounds the run (`--timeout`), stops every worker it started (by pid) when
one fails, and says which one and why. Batches are synthetic and seeded by the step, so every
process reads the same batch without a transfer. Results (losses, bytes moved, the local shards
of the trained variables) go to --out.

Bad input is refused before any work: flags (an unknown --tpu lists the known types) before the
heavy imports; the mesh plan (fits the TPU slice or the --local_processes workers, places every
expert, model-parallel dimensions divide) before any worker starts or anything compiles. The plan
is the experiment's MESH_PLAN (or --plan) written for its NUM_DEVICES, or, without NUM_DEVICES,
for the devices it runs on: the --tpu slice's chips in a dry run, the workers' devices.
Chips, hosts or workers that a plan leaves without work are named (the run goes ahead: an 8-chip
study on a v5litepod-16 is a valid choice; every host still starts its launcher process, since
all processes join jax.distributed).
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
  p.add_argument('--learning_rate', type=float, default=None)
  p.add_argument('--optimizer', choices=('adam', 'sgd'), default='adam')
  p.add_argument('--init_from', default=None,
                 help="a Pax checkpoint folder (holding checkpoint_XXXXXXXX) to start from")
  p.add_argument('--init_rules', choices=('same', 'backbone'), default='same',
                 help="'same': a MoDE checkpoint of this model; 'backbone': a plain "
                      'TransformerLm backbone checkpoint (experts and gates stay random)')
  p.add_argument('--transport', choices=('device_put', 'permute'), default=None,
                 help='single controller only; workers always use permute')
  p.add_argument('--out', default=None, help='folder for results (JSON, shards)')
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
                 help='with --dry-run: the Cloud TPU accelerator type, one of '
                      f'{", ".join(topology.SLICES)} (default: the experiment\'s TPU_TYPE, '
                      'else v5litepod-8)')
  p.add_argument('--tpu_name', default='TPU_NAME')
  p.add_argument('--zone', default='ZONE')
  p.add_argument('--project', default=None)
  args = p.parse_args(argv)
  if args.tpu and not args.dry_run:
    p.error(f'--tpu={args.tpu} is for --dry-run (it maps the plan onto that slice and prints the '
            'per-host commands); add --dry-run, or drop --tpu to run on the devices here.')
  if args.local_processes < 0:
    p.error(f'--local_processes={args.local_processes}: give the number of local CPU workers '
            '(one device each), or 0 to run in this process.')
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
          '--optimizer', args.optimizer, '--init_rules', args.init_rules]
  for flag, value in (('--plan', args.plan), ('--learning_rate', args.learning_rate),
                      ('--init_from', args.init_from), ('--out', args.out)):
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
  print('worker commands:')
  for cmd in topology.worker_commands(tpu, _passthrough(args), tpu_name=args.tpu_name,
                                      zone=args.zone, project=args.project):
    print('  ' + cmd)
  return 0


# ---- supervisor ---------------------------------------------------------------------------------
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
  unused = plan.unused_devices(n)
  if unused:
    print(f'note: workers {unused} get no work: plan {plan.name} ({plan.spec()}) uses devices '
          f'{plan.devices_used()} of the {n}.', flush=True)
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
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
  deadline = time.monotonic() + args.timeout
  failure = None
  while True:
    codes = [p.poll() for p in procs]
    bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
    if bad:
      i, code = bad[0]
      failure = (f'worker {i} (pid {procs[i].pid}) exited with code {code}; stopping the other '
                 f'workers. Its log ({out}/worker_{i}.log) ends with:\n' + _tail(out, i))
      break
    if all(c == 0 for c in codes):
      break
    if time.monotonic() > deadline:
      running = [i for i, c in enumerate(codes) if c is None]
      failure = (f'timeout: workers {running} still running after {args.timeout:.0f} s; '
                 'stopping them. Raise --timeout or check the logs in ' + out)
      break
    time.sleep(0.2)
  if failure:
    _stop(procs)
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


def _stop(procs, grace=5.0):
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


def run(args) -> int:
  """Trains --steps steps, single controller or as worker --process_id."""
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
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()
  from mode_pax import naming  # pylint: disable=g-import-not-at-top
  from mode_pax.mpmd import build  # pylint: disable=g-import-not-at-top
  from mode_pax import checkpoints  # pylint: disable=g-import-not-at-top
  from mode_pax.mpmd import model as model_lib  # pylint: disable=g-import-not-at-top
  from mode_pax.mpmd import transfer  # pylint: disable=g-import-not-at-top

  exp = build.experiment_instance(args.exp)
  lr = args.learning_rate or exp.LEARNING_RATE
  opt = optax.adam(lr) if args.optimizer == 'adam' else optax.sgd(lr, momentum=0.9)
  multi = jax.process_count() > 1
  transport = (transfer.PermuteTransport() if multi or args.transport == 'permute'
               else transfer.DevicePutTransport())
  trainer = build.mpmd_trainer(exp, args.plan, optimizer=opt, transport=transport)
  pieces, specs = trainer.pieces, trainer.batch_specs
  flat = pieces.init(specs, seed=args.seed)
  if args.init_from:
    rules = ((r'(.*)', '{}'),) if args.init_rules == 'same' else (
        naming.backbone_from_transformer_lm(exp.NUM_LAYERS, exp.NUM_BLOCKS))
    flat, _ = checkpoints.load_into(flat, args.init_from, load_rules=rules)
  state = trainer.init_state(flat)
  me = jax.process_index()
  print(f'process {me}/{jax.process_count()}: devices {[d.id for d in jax.local_devices()]}\n'
        + trainer.plan.describe(), flush=True)
  unused = trainer.plan.unused_devices(jax.device_count())
  if unused and me == 0:
    print(f'note: devices {unused} get no work under plan {trainer.plan.name}.', flush=True)
  losses, times = [], []
  for step in range(args.steps):
    if step == args.fail_at_step and me == args.fail_process:
      print(f'process {me}: failing at step {step} as asked (--fail_at_step)', flush=True)
      os._exit(17)  # pylint: disable=protected-access
    batch = model_lib.synthetic_batch(exp.TRAIN_BATCH_SIZE, exp.SEQUENCE_LENGTH,
                                      exp.VOCAB_SIZE, seed=step)
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
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    shards = {}
    for mesh_state in state.values():
      for path, value in mesh_state['params'].items():
        for s in value.addressable_shards:
          shards[f'{path}|{s.index}'] = np.asarray(s.data)
    np.savez(os.path.join(args.out, f'process_{me}.npz'), **shards)
    with open(os.path.join(args.out, f'process_{me}.json'), 'w') as f:
      json.dump(dict(process=me, num_processes=jax.process_count(), losses=losses,
                     step_seconds=times, bytes_moved_per_step=trainer.transport.bytes_moved,
                     plan=trainer.plan.spec()), f, indent=1)
  return 0


def main(argv=None) -> int:
  args = _args(argv)
  try:
    if args.dry_run:
      return dry_run(args)
    if args.local_processes:
      return supervise(args)
  except _LaunchError as e:
    print(f'ERROR: {e}', file=sys.stderr, flush=True)
    return 2
  return run(args)


if __name__ == '__main__':
  sys.exit(main())
