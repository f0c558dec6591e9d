"""Figure 4 of the paper: 1/3/5 meshes, expert size and merges; one command.

  .venv/bin/python benchmarks/mpmd_sharding.py [--steps 5] [--quick] [--out results/mpmd]

For every configuration (the `mode.sharding` experiments) it reports, per training step:
  (a) communication, deterministic: collective operand bytes of every compiled program (from its
      HLO text, times its devices and its calls per step) plus the bytes moved between meshes;
  (b) the median step time of the CPU-scale experiment (`...Small`) on 8 virtual CPU devices:
      noisy, and XLA:CPU runs the multi-device programs of one process one at a time, so meshes
      do not overlap here and these times do not show the MPMD speed-up;
  (c) a projection for the paper-scale experiment on 8 TPU v5e from `mode_pax.mpmd.cost_model`
      (FLOPs over peak plus bytes over ICI bandwidth), next to the paper's Figure 4(a) numbers.
Writes sharding.md, sharding.csv and figure4.png to --out.
"""

from __future__ import annotations

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import argparse  # pylint: disable=g-import-not-at-top,g-bad-import-order
import csv
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top
import jax
import optax

from mode_pax.mpmd import build
from mode_pax.mpmd import cost_model
from mode_pax.mpmd import model as model_lib

PAPER_MS = {'ShardingMesh1': 329.0, 'ShardingMesh5': 204.0}  # Figure 4(a), Section 4.4 text


def configs(quick: bool):
  """(study, label, experiment name, measure on CPU?) in plot order.

  Every point is projected; CPU measurements skip the one-mesh programs of many layers, which
  XLA:CPU takes minutes to compile (8 virtual devices, 2 cores).
  """
  out = [('a', f'{n} mesh', f'ShardingMesh{n}', True) for n in (1, 3, 5)]
  for added in (4, 8, 12, 16, 20):
    cpu = added in ((4,) if quick else (4, 8))
    out += [('b', f'{added} layers SPMD', f'ShardingExpertSize{added}Spmd', cpu),
            ('b', f'{added} layers MPMD', f'ShardingExpertSize{added}Mpmd', cpu)]
  for blocks in (1, 2, 3, 6):
    out += [('c', f'{blocks} merges SPMD', f'ShardingMerges{blocks}Spmd', False),
            ('c', f'{blocks} merges MPMD', f'ShardingMerges{blocks}Mpmd',
             blocks in ((1, 6) if quick else (1, 2, 3, 6)))]
  return out


def measure(name: str, steps: int) -> dict:
  """Communication and CPU step times of the CPU-scale experiment `name`Small."""
  exp = build.experiment_instance(f'mode.sharding.{name}Small')
  pieces, specs = build.pieces_of(exp)
  flat = pieces.init(specs)
  batch = model_lib.synthetic_batch(exp.TRAIN_BATCH_SIZE, exp.SEQUENCE_LENGTH, exp.VOCAB_SIZE)
  plan = build.plan_of(exp)
  optimizer = optax.adam(1e-3)
  if plan.is_spmd:
    trainer = build.spmd_trainer(exp, optimizer=optimizer)
    moved = lambda: 0  # pylint: disable=unnecessary-lambda-assignment
  else:
    trainer = build.mpmd_trainer(exp, optimizer=optimizer)
    moved = lambda: trainer.transport.bytes_moved  # pylint: disable=unnecessary-lambda-assignment
  state = trainer.init_state(flat)
  trainer.recorder.enabled = True
  if not plan.is_spmd:
    trainer.transport.reset_counters()
  t0 = time.perf_counter()
  state, loss, _, _ = trainer.step(state, batch)
  jax.block_until_ready((state, loss))
  compile_s = time.perf_counter() - t0
  trainer.recorder.enabled = False
  bytes_moved = moved()
  times = []
  for _ in range(steps + 1):
    t0 = time.perf_counter()
    state, loss, _, _ = trainer.step(state, batch)
    jax.block_until_ready((state, loss))
    times.append(time.perf_counter() - t0)
  rec = trainer.recorder
  return dict(meshes=len(plan.meshes()),
              hlo_bytes=rec.collective_bytes(), collectives=rec.collective_count(),
              moved_bytes=bytes_moved, total_bytes=rec.collective_bytes() + bytes_moved,
              programs=len(rec.programs), cpu_ms=1e3 * statistics.median(times[1:]),
              first_step_s=compile_s, loss=float(loss))


def project(name: str) -> dict:
  exp = build.experiment_instance(f'mode.sharding.{name}')
  parts = cost_model.project(cost_model.Arch.of(exp), build.plan_of(exp))
  return {f'v5e_{k}_ms': 1e3 * v for k, v in parts.items() if k != 'critical_mesh'}


def write_table(rows, out_dir):
  cols = ['study', 'config', 'experiment', 'plan', 'meshes', 'hlo_bytes', 'moved_bytes',
          'total_bytes', 'collectives', 'cpu_ms', 'v5e_step_ms', 'paper_ms', 'v5e_compute_ms',
          'v5e_allreduce_ms', 'v5e_moves_ms', 'v5e_head_ms', 'first_step_s', 'loss']
  with open(os.path.join(out_dir, 'sharding.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, cols, extrasaction='ignore')
    w.writeheader()
    w.writerows(rows)
  lines = [
      '# MoDE sharding studies (paper Figure 4): communication, CPU step time, v5e projection',
      '',
      'Bytes per training step at CPU scale (`mode.sharding.*Small`, deterministic): collective '
      'operand bytes from the compiled HLO of every program (x its devices x its calls per step) '
      'plus activation bytes moved between meshes. CPU ms: median step on 8 virtual CPU devices '
      '(2 shared cores, noisy; XLA:CPU runs the multi-device programs of one process one at a '
      'time, so meshes do not overlap and MPMD cannot be faster here). v5e ms: projection of the '
      'paper-scale experiment (1.58B backbone, bf16, batch 16 x 1024, an assumption: the paper '
      'does not give it) on 8 TPU v5e from `mode_pax/mpmd/cost_model.py` (FLOPs / 197 TFLOP/s + '
      'bytes / 200 GB/s ICI, no overlap, MFU 1: lower bounds). Paper: Figure 4(a) text.',
      '',
      '| study | config | plan | HLO collective bytes | moved bytes | total bytes | CPU ms '
      '(8 virtual devices) | v5e projected ms | paper ms |',
      '|---|---|---|---:|---:|---:|---:|---:|---:|']
  def fmt(r, key, spec):
    return format(r[key], spec) if key in r else 'not run'
  for r in rows:
    lines.append(
        f"| {r['study']} | {r['config']} | `{r['plan']}` | {fmt(r, 'hlo_bytes', ',')} | "
        f"{fmt(r, 'moved_bytes', ',')} | {fmt(r, 'total_bytes', ',')} | "
        f"{fmt(r, 'cpu_ms', '.1f')} | {r['v5e_step_ms']:.0f} | {r['paper_ms'] or ''} |")
  with open(os.path.join(out_dir, 'sharding.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return '\n'.join(lines)


def plot(rows, out_dir):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(3, 3, figsize=(14, 10))
  titles = {'a': '(a) cost of resharding', 'b': '(b) expert size (layers added)',
            'c': '(c) cost of merges (blocks)'}
  for col, study in enumerate('abc'):
    sub = [r for r in rows if r['study'] == study]
    for row, (key, ylabel) in enumerate((('v5e_step_ms', 'v5e projected step (ms)'),
                                         ('total_bytes', 'bytes / step (CPU scale)'),
                                         ('cpu_ms', 'CPU step (ms, 8 virtual dev.)'))):
      ax = axes[row][col]
      if study == 'a':
        labels = [r['config'] for r in sub]
        ax.bar(range(len(sub)), [r.get(key, 0) for r in sub], color=['C0', 'C1', 'C2'][:len(sub)],
               label='this repo')
        if key == 'v5e_step_ms':
          paper = [(i, r['paper_ms']) for i, r in enumerate(sub) if r['paper_ms']]
          ax.scatter([p[0] for p in paper], [p[1] for p in paper], color='k', marker='D',
                     zorder=3, label='paper Fig. 4(a)')
          ax.legend()
        ax.set_xticks(range(len(sub)), labels)
      else:
        for tag, style in (('SPMD', 'o-'), ('MPMD', 's-')):
          pts = [r for r in sub if r['config'].endswith(tag) and key in r]
          ax.plot([int(r['config'].split()[0]) for r in pts], [r[key] for r in pts], style,
                  label=tag)
        ax.legend()
      ax.set_ylabel(ylabel)
      if row == 0:
        ax.set_title(titles[study])
  fig.suptitle('MoDE MPMD sharding (paper Figure 4): projection for 8 TPU v5e, HLO bytes and '
               'CPU times')
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, 'figure4.png'), dpi=110)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='results/mpmd')
  parser.add_argument('--steps', type=int, default=5, help='timed steps per configuration')
  parser.add_argument('--quick', action='store_true', help='fewer sweep points')
  args = parser.parse_args(argv)
  flags.FLAGS.mark_as_parsed()
  os.makedirs(args.out, exist_ok=True)
  rows = []
  for study, label, name, cpu in configs(args.quick):
    t0 = time.perf_counter()
    row = dict(study=study, config=label, experiment=f'mode.sharding.{name}',
               paper_ms=PAPER_MS.get(name), plan=build.plan_of(
                   build.experiment_instance(f'mode.sharding.{name}')).spec())
    row.update(measure(name, args.steps) if cpu else {})
    row.update(project(name))
    rows.append(row)
    print(f'{label:>20}: {row.get("total_bytes", "-"):>12} B/step  cpu '
          f'{row.get("cpu_ms", float("nan")):7.1f} ms  v5e {row["v5e_step_ms"]:6.0f} ms  '
          f'({time.perf_counter() - t0:.0f} s)', flush=True)
  print(write_table(rows, args.out))
  plot(rows, args.out)
  one = next(r for r in rows if r['config'] == '1 mesh')
  five = next(r for r in rows if r['config'] == '5 mesh')
  if not five['total_bytes'] < one['total_bytes']:
    raise SystemExit('5 meshes moved no fewer bytes than 1 mesh: see sharding.md')


if __name__ == '__main__':
  main()
