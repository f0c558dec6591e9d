"""FLOPs of one training step, counted from its programs with XLA's cost analysis.

`mpmd_step_flops` sums the FLOPs of every program one MPMD step runs (times its calls per step);
`spmd_step_flops` does the same for the one-program SPMD step. Both split the step into forward,
backward and optimizer update:

  MPMD: forward = inputs + *_fwd programs + the head's loss alone (its [no grad] variant, lowered
        for the count, never run); backward = head - head's loss + *_bwd + add programs;
        update = the update programs.
  SPMD: forward = the loss alone (`full_loss` with the step's shardings); update = the optimizer
        update alone; backward = step - forward - update.

Two counts of the same programs:

  compiled: `compiled.cost_analysis()['flops']` of the optimized, partitioned program (per
    device) x its mesh's devices: the work the chips do, replicated work (layer norms, gates,
    the replicated activations of model parallelism) once per device.
  lowered: `lowered.cost_analysis()['flops']` of the program as JAX emits it, before XLA's
    passes and partitioning: the logical FLOPs, the same for every plan.

Known gaps of XLA's count (HloCostAnalysis, here as XLA:CPU runs it): transcendentals (exp, tanh,
rsqrt) are counted apart ('transcendentals'), not in 'flops'; an elementwise op counts one FLOP
per element; a while loop's body counts once, not once per trip, so programs of scanned layers
(SCAN_LAYERS = True) would be undercounted: `program_flops` refuses them. The compiled count also
follows XLA:CPU's fusion, which duplicates cheap elementwise producers into several fusions and
counts each copy: one big program (the SPMD step) counts more than the same dots and elementwise
ops split into small programs (TinyMoDE on one device: the same 192 dots, 11.38 M compiled FLOPs
for the SPMD step against 9.80 M for the MPMD programs, 9.57 M and 9.58 M lowered). Compare
backward work with the lowered count; the compiled count says what each device runs.
"""

from __future__ import annotations

import dataclasses

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from mode_pax.mpmd import common

COUNTS = ('lowered', 'compiled')


def cost_flops(stage) -> float:
  """FLOPs of a jax Lowered or Compiled stage (XLA's cost analysis; 0 when it has none).

  Raises:
    ValueError: a compiled program with a while loop (its body would count once).
  """
  if isinstance(stage, jax.stages.Compiled) and ' while(' in stage.as_text():
    raise ValueError('a compiled program holds a while loop, whose body XLA counts once: FLOPs '
                     'of scanned layers would be undercounted (use SCAN_LAYERS = False).')
  return common._flops(stage.cost_analysis())  # pylint: disable=protected-access


@dataclasses.dataclass
class StepFlops:
  """FLOPs of one training step by phase, for one count ('lowered' or 'compiled')."""
  forward: float
  backward: float
  update: float

  @property
  def total(self) -> float:
    return self.forward + self.backward + self.update


def _split(programs, head_loss_only) -> StepFlops:
  """programs: name -> (FLOPs per call, calls)."""
  forward = backward = update = 0.0
  for name, (flops, calls) in programs.items():
    kind = name.split('@')[0]
    if kind.startswith('update'):
      update += flops * calls
    elif kind.startswith('head'):
      forward += head_loss_only * calls
      backward += (flops - head_loss_only) * calls
    elif kind.endswith('_bwd') or '_bwd[' in kind or kind.startswith('add'):
      backward += flops * calls
    else:
      forward += flops * calls
  return StepFlops(forward, backward, update)


def mpmd_step_flops(trainer, state, batch, counts=COUNTS) -> dict[str, StepFlops]:
  """count ('lowered', 'compiled') -> FLOPs of one step of `trainer` (an `MpmdTrainer`).

  Uses the programs its recorder holds (a step run with `recorder.enabled`), else runs one
  recorded step. Each program's FLOPs are checked for while loops.
  """
  from mode_pax.mpmd import runtime  # pylint: disable=g-import-not-at-top
  rec = trainer.recorder
  if not rec.programs:
    rec.enabled = True
    trainer.step(state, batch)
    rec.enabled = False
  for compiled in rec._compiled.values():  # pylint: disable=protected-access
    cost_flops(compiled)
  home = trainer.meshes[runtime.HOME]
  train, frozen = trainer._args(state, ('outside',))  # pylint: disable=protected-access
  x = jax.ShapeDtypeStruct(trainer.act.shape, trainer.act.dtype,
                           sharding=NamedSharding(home, P()))
  with home:  # the head's loss alone: the head program's forward part
    lowered = trainer._program('head', runtime.HOME, (False, False)).lower(  # pylint: disable=protected-access
        train, frozen, x, trainer.place_batch(batch)[runtime.HOME])
    head_loss = {c: cost_flops(lowered if c == 'lowered' else lowered.compile()) for c in counts}
  out = {}
  for count in counts:
    per_call = {n: ((p.lowered_flops if count == 'lowered' else p.flops * p.num_devices), p.calls)
                for n, p in rec.programs.items()}
    loss = head_loss[count] * (home.size if count == 'compiled' else 1)
    out[count] = _split(per_call, loss)
  return out


def spmd_step_flops(trainer, state, batch, counts=COUNTS) -> dict[str, StepFlops]:
  """count ('lowered', 'compiled') -> FLOPs of one step of `trainer` (an `SpmdTrainer`;
  compiles, runs nothing)."""
  placed = trainer.place_batch(batch)
  pieces = trainer.pieces
  with trainer.mesh:
    stages = {
        'step': trainer._step.lower(state, placed),  # pylint: disable=protected-access
        'forward': jax.jit(lambda st, b: pieces.full_loss({**st['train'], **st['frozen']}, b))
                   .lower(state, placed),
        'update': jax.jit(trainer.apply_update).lower(
            state['train'], state['opt'], state['train']),
    }
    out = {}
    for count in counts:
      n = trainer.mesh.size if count == 'compiled' else 1
      f = {k: n * cost_flops(v if count == 'lowered' else v.compile()) for k, v in stages.items()}
      out[count] = StepFlops(f['forward'], f['step'] - f['forward'] - f['update'], f['update'])
  return out
