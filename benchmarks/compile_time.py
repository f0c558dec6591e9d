r"""Compile time and step time of one registered experiment's Pax train step (synthetic batch).

  .venv/bin/python benchmarks/compile_time.py mode.smollm2.CodeExpert ['{"SCAN_LAYERS": false}']
  # Settings compared in one run: each JSON is a configuration, compiled in turn for --rounds
  # rounds (A B A B ...), so load on this shared machine hits them alike.
  .venv/bin/python benchmarks/compile_time.py mode.small.ComposeMathCode \
      '{}' '{"CONDITIONAL_OPTIMIZER_UPDATE": false}' --rounds 3

  # XLA flags compared (each --xla_flags one set; default: $XLA_FLAGS), e.g. an LLVM option:
  .venv/bin/python benchmarks/compile_time.py mode.small.ComposeMathCode --rounds 2 \
      --xla_flags= --xla_flags=--xla_backend_extra_options=-rotation-max-header-size=0

A JSON overrides class attributes (e.g. unrolled vs scanned layers; SCAN_CHECKPOINT_POLICY by its
member's name, e.g. "SAVE_EVERYTHING"). Each compile runs in a fresh process (XLA reads XLA_FLAGS
once per process; nothing cached from an earlier compile). Prints a line per compile: lowering, XLA compile and the
fastest of --steps chained train steps; then, with several configurations, the median compile
time of each and its ratio to the first's, and whether the configurations' train states (every
variable and optimizer slot) after those steps are bit for bit the same. Warm starts are dropped
(step time does not depend on the weights' values).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
from absl import flags  # pylint: disable=g-import-not-at-top
import jax
import numpy as np
flags.FLAGS.mark_as_parsed()
import train_step as ts  # pylint: disable=g-import-not-at-top
from paxml import trainer_lib
from praxis import base_layer
from mode_pax import registry


def experiment(name: str, overrides: dict):
  if 'SCAN_CHECKPOINT_POLICY' in overrides:  # JSON has no enums: the member's name
    from praxis.layers import repeats  # pylint: disable=g-import-not-at-top
    overrides = dict(overrides, SCAN_CHECKPOINT_POLICY=repeats.AutodiffCheckpointType[
        overrides['SCAN_CHECKPOINT_POLICY']])
  base = registry.lookup(name)
  return type('Probe', (base,), dict(overrides, __module__=base.__module__))()


def measure(name: str, overrides: dict, steps: int):
  """(seconds to lower, seconds to compile, fastest step in ms, first loss, the train state's
  leaves after `steps` chained steps) of one configuration."""
  exp = experiment(name, overrides)
  task_p = exp.task()
  task_p.train.init_from_checkpoint_rules = {}
  task = base_layer.instantiate(task_p)
  batch = ts.synthetic_batch(exp.TRAIN_BATCH_SIZE, exp.SEQUENCE_LENGTH, exp.VOCAB_SIZE)
  state, _ = trainer_lib.initialize_model_state(task, jax.random.PRNGKey(0), batch)
  # The train state donated, as paxml's partitioners do (partitioning.py, `donate_argnums`): an
  # undonated state makes XLA copy every variable the step passes through (a frozen backbone).
  fn = jax.jit(lambda s, k, b: trainer_lib.train_step_single_learner(task, s, k, b),
               donate_argnums=0)
  t0 = time.perf_counter()
  lowered = fn.lower(state, jax.random.PRNGKey(1), batch)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  times, loss = [], None
  for i in range(steps):
    a = time.perf_counter()
    state, out = compiled(state, jax.random.PRNGKey(1 + i), batch)[:2]
    jax.block_until_ready(state)
    times.append(time.perf_counter() - a)
    loss = float(out.loss) if loss is None else loss
  leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves((state.mdl_vars, state.opt_states))]
  return t1 - t0, t2 - t1, min(times) * 1000, loss, leaves


def _child(args) -> None:
  """One measurement in this process (XLA reads XLA_FLAGS once per process): its numbers as JSON
  on the last line, the train state's leaves into args.child."""
  lower_s, comp_s, step_ms, loss, leaves = measure(args.experiment, json.loads(args.overrides[0]),
                                                   args.steps)
  np.savez(args.child, *leaves)
  print(json.dumps(dict(lower=lower_s, compile=comp_s, step_ms=step_ms, loss=loss)), flush=True)


def _measure_in_child(args, overrides: str, xla_flags: str, out: str) -> tuple[dict, list]:
  cmd = [sys.executable, os.path.abspath(__file__), args.experiment, overrides,
         f'--steps={args.steps}', f'--child={out}']
  proc = subprocess.run(cmd, env={**os.environ, 'XLA_FLAGS': xla_flags}, capture_output=True,
                        text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f'{" ".join(cmd)} (XLA_FLAGS={xla_flags!r}) failed:\n{proc.stderr[-3000:]}')
  with np.load(out) as saved:
    leaves = [saved[f'arr_{i}'] for i in range(len(saved.files))]
  return json.loads(proc.stdout.strip().splitlines()[-1]), leaves


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('experiment')
  parser.add_argument('overrides', nargs='*', default=['{}'],
                      help='one JSON object of class attributes per configuration')
  parser.add_argument('--xla_flags', action='append', default=None,
                      help='XLA_FLAGS of a configuration (repeat to compare several; each is '
                      'combined with every JSON). Default: $XLA_FLAGS.')
  parser.add_argument('--rounds', type=int, default=1)
  parser.add_argument('--steps', type=int, default=int(os.environ.get('STEPS', 3)))
  parser.add_argument('--child', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  for o in args.overrides:  # bad JSON fails here, before any compiling
    json.loads(o)
  if args.child:
    _child(args)
    return
  flag_sets = args.xla_flags or [os.environ.get('XLA_FLAGS', '')]
  configs = [(o, f) for f in flag_sets for o in args.overrides]
  compile_s = {c: [] for c in configs}
  states = {}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.rounds):
      for i, (overrides, xla_flags) in enumerate(configs):
        res, leaves = _measure_in_child(args, overrides, xla_flags, os.path.join(tmp, f'{i}.npz'))
        compile_s[(overrides, xla_flags)].append(res['compile'])
        states.setdefault((overrides, xla_flags), leaves)
        print(f"RESULT {args.experiment} {overrides} round={r} flags={xla_flags!r} "
              f"lower={res['lower']:.1f}s compile={res['compile']:.1f}s "
              f"step={res['step_ms']:.0f}ms loss={res['loss']:.4f}", flush=True)
  if len(configs) > 1:
    first = statistics.median(compile_s[configs[0]])
    for config in configs:
      med = statistics.median(compile_s[config])
      a_states, b_states = states[config], states[configs[0]]
      diffs = [float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0))
               for a, b in zip(a_states, b_states)]
      same = (len(a_states) == len(b_states) and
              all(np.array_equal(a, b) for a, b in zip(a_states, b_states)))
      print(f"SUMMARY {config[0]} flags={config[1]!r}: median compile {med:.1f} s over "
            f"{args.rounds} round(s), {med / first:.2f} x the first configuration's; train "
            f"state after {args.steps} steps "
            f"{'bit for bit the same as' if same else 'differs from'} the first's "
            f"(max |diff| {max(diffs, default=0):.3g})", flush=True)


if __name__ == '__main__':
  main()
