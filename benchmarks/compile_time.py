r"""Compile time and step time of one registered experiment's Pax train step (synthetic batch).

  .venv/bin/python benchmarks/compile_time.py mode.smollm2.CodeExpert ['{"SCAN_LAYERS": false}']

The optional JSON overrides class attributes (e.g. unrolled vs scanned layers;
SCAN_CHECKPOINT_POLICY by its member's name, e.g. "SAVE_EVERYTHING"). Prints one line:
lowering, XLA compile and the fastest of STEPS (env, default 3) steps. Warm starts are dropped
(step time does not depend on the weights' values).
"""
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
from absl import flags
import jax
flags.FLAGS.mark_as_parsed()
import train_step as ts
from paxml import trainer_lib
from praxis import base_layer
from mode_pax import registry
name = sys.argv[1]
overrides = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
if 'SCAN_CHECKPOINT_POLICY' in overrides:  # JSON has no enums: the member's name
  from praxis.layers import repeats
  overrides['SCAN_CHECKPOINT_POLICY'] = repeats.AutodiffCheckpointType[
      overrides['SCAN_CHECKPOINT_POLICY']]
base = registry.lookup(name)
cls = type('Probe', (base,), dict(overrides, __module__=base.__module__))
exp = cls()
task_p = exp.task()
task_p.train.init_from_checkpoint_rules = {}
task = base_layer.instantiate(task_p)
batch = ts.synthetic_batch(exp.TRAIN_BATCH_SIZE, exp.SEQUENCE_LENGTH, exp.VOCAB_SIZE)
t = time.perf_counter()
state, _ = trainer_lib.initialize_model_state(task, jax.random.PRNGKey(0), batch)
tinit = time.perf_counter() - t
fn = jax.jit(lambda s, k, b: trainer_lib.train_step_single_learner(task, s, k, b))
t0 = time.perf_counter()
lowered = fn.lower(state, jax.random.PRNGKey(1), batch)
t1 = time.perf_counter()
compiled = lowered.compile()
t2 = time.perf_counter()
out = compiled(state, jax.random.PRNGKey(1), batch)
jax.block_until_ready(out)
times = []
for _ in range(int(os.environ.get('STEPS', 3))):
  a = time.perf_counter()
  out = compiled(state, jax.random.PRNGKey(1), batch)
  jax.block_until_ready(out)
  times.append(time.perf_counter() - a)
print(f"RESULT {name} {overrides} flags={os.environ.get('XLA_FLAGS','')!r} init={tinit:.1f}s lower={t1-t0:.1f}s compile={t2-t1:.1f}s step={min(times)*1000:.0f}ms loss={float(out[1].loss):.4f}", flush=True)
