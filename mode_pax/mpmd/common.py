"""Helpers shared by the MPMD runtime and its SPMD reference: meshes, placement, HLO accounting."""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mode_pax import naming
from mode_pax.mpmd import plan as plan_lib

# What trains in MoDE (paper Section 3.2): experts and gates; the backbone stays frozen.
MODE_TRAINABLE = naming.TRAIN_EXPERTS_AND_GATES


def make_mesh(device_ids: Sequence[int]) -> Mesh:
  """A [1, 1, n] mesh (axes replica, data, mdl) over `jax.devices()[i]` for i in device_ids."""
  devices = jax.devices()
  if max(device_ids) >= len(devices):
    raise plan_lib.PlanError(
        f'devices {list(device_ids)} requested but JAX sees {len(devices)} device(s); set '
        'XLA_FLAGS=--xla_force_host_platform_device_count=N on CPU or use a smaller plan.')
  return Mesh(np.array([devices[i] for i in device_ids]).reshape(1, 1, -1),
              plan_lib.MESH_AXIS_NAMES)


def is_local(mesh: Mesh) -> bool:
  """Whether this process owns a device of `mesh` (always true with one controller)."""
  return any(d.process_index == jax.process_index() for d in mesh.devices.flat)


def place(value: np.ndarray, mesh: Mesh, spec=P()) -> jax.Array:
  """A global array on `mesh` from a host value every process holds (works multi-process)."""
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, NamedSharding(mesh, spec),
                                      lambda index: value[index])


def place_tree(tree, mesh: Mesh):
  return jax.tree_util.tree_map(lambda v: place(v, mesh), tree)


def init_opt_state(optimizer, host_train: dict, mesh: Mesh, specs: dict):
  """Optimizer state initialised on the host (`optimizer.init`) and placed on `mesh`: leaves of
  a variable's shape under its path (e.g. Adam's mu and nu, Adafactor's momentum) are sharded
  like it, the rest (counts, Adafactor's factored row and column statistics) replicated."""
  host = jax.tree_util.tree_map(np.asarray, optimizer.init(host_train))

  def leaf(path, value):
    for key in reversed(path):
      name = getattr(key, 'key', None)
      if isinstance(name, str) and name in specs:
        if value.shape == np.shape(host_train[name]):
          return place(value, mesh, specs[name])
        break
    return place(value, mesh)
  return jax.tree_util.tree_map_with_path(leaf, host)


class StepOutput(NamedTuple):
  """What one train step returns besides the new state (paxml's StepFnOutput, in part).

  Attributes:
    loss: The LanguageModel's total_loss (None where this process has no home mesh).
    metrics: The LanguageModel's metrics (None likewise).
    grads: Raw gradients of the trainable variables ({path: array}; the MPMD trainer keys them
      by mesh: {mesh: {path: array}}).
    summaries: Summaries named as paxml's train step names them: the gates'
      ('lm/transformer/blocks_0/gate_weight_expert_1_scalar', ...) and the learner's
      ('learning/lr_aggregate_scalar', 'learning/raw_grad_norm_aggregate_scalar', ...).
  """
  loss: Any
  metrics: Any
  grads: Any
  summaries: dict[str, Any]


def is_trainable(path: str, trainable: Sequence[str]) -> bool:
  """Pax's bprop_variable_inclusion: whole-path regex match; no regexes means everything."""
  return not trainable or any(re.fullmatch(r, path) for r in trainable)


# ---- compiled-HLO accounting ------------------------------------------------------------------
_COLLECTIVE_RE = re.compile(
    r'=\s*(.*?)\s(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)'
    r'(-start)?\((.*?)\)(,|$)')
_SHAPE_RE = re.compile(r'\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|f16|bf16|f32|f64)\[([\d,]*)\]')
_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
          'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8}


def _shape_bytes(text: str) -> int:
  total = 0
  for dtype, dims in _SHAPE_RE.findall(text):
    total += _BYTES[dtype] * int(np.prod([int(d) for d in dims.split(',') if d] or [1]))
  return total


def collective_stats(hlo_text: str) -> dict[str, int]:
  """Per-device collective ops and their operand bytes in compiled (partitioned) HLO text."""
  stats = collections.Counter()
  for line in hlo_text.splitlines():
    m = _COLLECTIVE_RE.search(line)
    if not m or '-done' in line.split('=')[-1].split('(')[0]:
      continue
    op = m.group(2)
    stats[f'{op}_count'] += 1
    stats[f'{op}_bytes'] += _shape_bytes(m.group(4))
    stats['bytes'] += _shape_bytes(m.group(4))
    stats['count'] += 1
  return dict(stats)


def _flops(cost) -> float:
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops', 0.0))


@dataclasses.dataclass
class ProgramRecord:
  """One compiled program: its device count, per-device collective stats and calls per step.

  flops: XLA's cost analysis of the compiled (optimized, partitioned) program, per device.
  lowered_flops: XLA's cost analysis of the program as JAX lowers it (before XLA's passes and
    partitioning): the logical FLOPs of the whole program, whatever its mesh (see flops.py).
  """
  name: str
  num_devices: int
  stats: dict[str, int]
  flops: float = 0.0
  calls: int = 0
  lowered_flops: float = 0.0

  @property
  def total_collective_bytes(self) -> int:
    """Collective operand bytes over all devices of the program, per call."""
    return self.stats.get('bytes', 0) * self.num_devices


class Recorder:
  """Records each program's compiled HLO once and how often it is called per step."""

  def __init__(self):
    self.enabled = False
    self.programs: dict[str, ProgramRecord] = {}
    self._compiled = {}

  def __call__(self, name: str, num_devices: int, jitted, *args):
    if name in self._compiled:  # compiled once for the record: reuse it, do not compile again
      if self.enabled:
        self.programs[name].calls += 1
      return self._compiled[name](*args)
    if self.enabled:
      if name not in self.programs:
        lowered = jitted.lower(*args)
        compiled = self._compiled[name] = lowered.compile()
        self.programs[name] = ProgramRecord(
            name, num_devices, collective_stats(compiled.as_text()),
            _flops(compiled.cost_analysis()), lowered_flops=_flops(lowered.cost_analysis()))
        self.programs[name].calls += 1
        return compiled(*args)
    return jitted(*args)

  def collective_bytes(self) -> int:
    return sum(p.total_collective_bytes * p.calls for p in self.programs.values())

  def collective_count(self) -> int:
    return sum(p.stats.get('count', 0) * p.calls for p in self.programs.values())


def tree_sum(trees: Sequence[Any]):
  return jax.tree_util.tree_map(lambda *xs: sum(xs[1:], xs[0]), *trees)
