"""Total and trainable parameters of an experiment's model, without allocating it.

  python -m mode_pax.param_count --exp=mode.CodeExpert [--exp=...]
  python -m mode_pax.param_count --paper_table1
  python -m mode_pax.param_count --memory --exp=mode.gemma2b.CodeExpert   # per-chip memory

Shapes come from `jax.eval_shape` of the model's init (`abstract_init_with_metadata`), so the
paper-scale models are counted on a laptop; trainable means matched by the learner's
`bprop_variable_inclusion` (or not matched by its `bprop_variable_exclusion`), as Pax trains them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys

from absl import app
from absl import flags
import jax
from praxis import base_layer
from praxis import py_utils

from mode_pax import lm_batch
from mode_pax import naming
from mode_pax import registry
from mode_pax import trees
from mode_pax.layers import lora

ROLES = {
    'backbone': (naming.BACKBONE_LAYERS, r'params/lm/transformer/x_layers_\d+/(?!.*lora_[ab]).*',
                 naming.BACKBONE_OUTSIDE_LAYERS),
    'experts': (naming.experts(),),
    'gates': (naming.GATES,),
    'lora': (lora.LORA_VARIABLES_REGEX,),
}


@dataclasses.dataclass(frozen=True)
class ParamCount:
  total: int
  trainable: int
  by_role: dict[str, int]


def count_task(task_p) -> ParamCount:
  """Counts the parameters of a Pax task config's model."""
  model = base_layer.instantiate(task_p.model)
  weight_hparams = model.abstract_init_with_metadata(lm_batch.lm_batch_specs(1, 8))
  learner = task_p.train.learner
  if learner.bprop_variable_inclusion:
    trains = py_utils.match_variable_names(weight_hparams, learner.bprop_variable_inclusion)
  else:
    excluded = py_utils.match_variable_names(weight_hparams, learner.bprop_variable_exclusion)
    trains = jax.tree_util.tree_map(lambda x: not x, excluded)
  # full_shape: with the leading layer dimension of scanned layers.
  sizes = jax.tree_util.tree_map(lambda w: math.prod(w.full_shape), weight_hparams)
  flat_trains = trees.flatten(trains)
  by_role = {role: 0 for role in ROLES}
  total = trainable = 0
  for path, size in trees.flatten(sizes).items():
    total += size
    trainable += size if flat_trains[path] else 0
    for role, regexes in ROLES.items():
      if any(re.fullmatch(r, path) for r in regexes):
        by_role[role] += size
        break
  return ParamCount(total=total, trainable=trainable, by_role=by_role)


def count_experiment(experiment_cls) -> ParamCount:
  """Counts the parameters of a registered experiment class (no checkpoints or data needed)."""
  return count_task(experiment_cls().task())


# HBM per chip (bytes) of the TPUs the experiments are meshed for (Cloud TPU documentation).
HBM_BYTES = {'v4': 32 * 2**30, 'v5e': 16 * 2**30, 'v5p': 95 * 2**30}


@dataclasses.dataclass(frozen=True)
class ChipMemory:
  """Bytes per chip of a training step on the experiment's mesh.

  Attributes:
    devices: chips in the mesh (ICI x DCN).
    params: float32 variables, each divided by the mesh axes its sharding splits it over.
    gradients: float32 gradients of the trainable variables, sharded like them.
    optimizer: the learner's optimizer state (its own shapes, `jax.eval_shape` of its init),
      sharded like the trainable variables on average.
    activations: analytic estimate (Korthikanti et al. 2022, tensor parallel, no sequence
      parallelism): per layer s*b*d*(5 + 12/t) + 2.5*a*s^2*b/t elements kept for the backward
      pass, with b the per-chip batch and t the model-parallel size; layers whose activations
      are rematerialised (scanned layers with praxis' SAVE_NOTHING policy) keep only their
      s*b*d input, plus one layer's working set; plus float32 logits and their gradient.
  """
  devices: int
  params: float
  gradients: float
  optimizer: float
  activations: float

  @property
  def total(self) -> float:
    return self.params + self.gradients + self.optimizer + self.activations


def _split_factor(wp, mesh: dict[str, int]) -> int:
  """How many ways a variable's sharding splits it on the mesh."""
  factor = 1
  for axes in wp.tensor_split_dims_mapping or ():
    for axis in (axes if isinstance(axes, (list, tuple)) else (axes,)):
      if axis is not None:
        factor *= mesh.get(axis, 1)
  return factor


def memory_per_chip(experiment_cls) -> ChipMemory:
  """Per-chip memory of a training step of a registered experiment (no device needed)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from praxis.layers import repeats  # pylint: disable=g-import-not-at-top
  exp = experiment_cls()
  task_p = exp.task()
  names = list(task_p.model.mesh_axis_names or ('replica', 'data', 'mdl'))
  task = base_layer.instantiate(task_p)
  weight_hparams = task.model.abstract_init_with_metadata(lm_batch.lm_batch_specs(1, 8))
  ici = list(exp.ICI_MESH_SHAPE or [1])
  dcn = list(exp.DCN_MESH_SHAPE or [1] * len(ici))
  shape = [int(a) * int(b) for a, b in zip(ici, dcn)]
  mesh = dict(zip(names, shape))
  devices = math.prod(shape)
  learner = task.learners[0]
  excluded = py_utils.match_variable_names(weight_hparams, learner.bprop_variable_exclusion)
  if learner.bprop_variable_inclusion:
    included = py_utils.match_variable_names(weight_hparams, learner.bprop_variable_inclusion)
    excluded = jax.tree_util.tree_map(lambda i: not i, included)
  is_wp = lambda x: isinstance(x, base_layer.WeightHParams)
  params = grads = trainable_total = 0.0
  for wp, frozen in zip(jax.tree_util.tree_leaves(weight_hparams, is_leaf=is_wp),
                        jax.tree_util.tree_leaves(excluded)):
    size = 4.0 * math.prod(wp.full_shape)
    params += size / _split_factor(wp, mesh)
    if not frozen:
      grads += size / _split_factor(wp, mesh)
      trainable_total += size
  train_wps = jax.tree_util.tree_map(
      lambda wp, e: py_utils.BpropMaskedNode() if e else wp, weight_hparams, excluded,
      is_leaf=is_wp)
  shapes = jax.tree_util.tree_map(
      lambda wp: jax.ShapeDtypeStruct(tuple(wp.full_shape), np.float32), train_wps, is_leaf=is_wp)
  opt_state = jax.eval_shape(learner.get_grad_tx(train_wps).init, shapes)
  opt_total = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize
                  for x in jax.tree_util.tree_leaves(opt_state) if hasattr(x, 'shape'))
  optimizer = opt_total * (grads / trainable_total) if trainable_total else 0.0

  data = mesh.get(names[0], 1) * mesh.get(names[1], 1)
  t = mesh.get(names[2], 1)
  b = exp.TRAIN_BATCH_SIZE / data
  s, d, a = exp.SEQUENCE_LENGTH, exp.MODEL_DIMS, exp.NUM_HEADS
  act_bytes = np.dtype(exp.FPROP_DTYPE).itemsize
  layer_full = act_bytes * (s * b * d * (5 + 12 / t) + 2.5 * a * s * s * b / t)
  layers = exp.NUM_LAYERS + (getattr(exp, 'NUM_DOMAIN_EXPERTS', 0) * exp.NUM_BLOCKS *
                             getattr(exp, 'EXPERT_LAYERS', 0))
  remat = (exp.SCAN_LAYERS and
           exp.SCAN_CHECKPOINT_POLICY == repeats.AutodiffCheckpointType.SAVE_NOTHING)
  kept = layers * act_bytes * s * b * d + layer_full if remat else layers * layer_full
  logits = 2 * 4 * s * b * exp.VOCAB_SIZE / t
  return ChipMemory(devices=devices, params=params, gradients=grads, optimizer=optimizer,
                    activations=kept + logits)


def memory_report(name: str, chip: str | None = None) -> str:
  """One line: the per-chip memory of an experiment and, with `chip`, its share of HBM."""
  m = memory_per_chip(registry.lookup(name))
  gib = lambda x: f'{x / 2**30:.2f} GiB'
  line = (f'{name}: per chip on {m.devices} chips: params {gib(m.params)}, gradients '
          f'{gib(m.gradients)}, optimizer {gib(m.optimizer)}, activations {gib(m.activations)};'
          f' total {gib(m.total)}')
  if chip:
    line += f' of {gib(HBM_BYTES[chip])} HBM on {chip} ({100 * m.total / HBM_BYTES[chip]:.0f}%)'
  return line


def paper_table1_rows() -> list[tuple[str, str, float, ParamCount]]:
  """(method, experiment, paper's billions, our count) of each Table 1 row the paper counts."""
  from mode import recipes  # pylint: disable=g-import-not-at-top  (registers the experiments)
  rows = []
  for recipe in recipes.TABLE1:
    if recipe.PAPER_PARAMS_B is not None:
      name = f'mode.{recipe.__name__}'
      rows.append((recipe.LABEL, name, recipe.PAPER_PARAMS_B,
                   count_experiment(registry.lookup(name))))
  return rows


def main(argv):
  del argv
  if flags.FLAGS.paper_table1:
    print('| Method | Experiment | Parameters (B) | Paper (B) | Difference | Trainable |')
    print('|---|---|---|---|---|---|')
    for method, exp, paper_b, count in paper_table1_rows():
      ours = count.total / 1e9
      print(f'| {method} | {exp} | {ours:.3f} | {paper_b:.3f} | '
            f'{100 * (ours - paper_b) / paper_b:+.2f}% | {count.trainable:,} |')
  for name in flags.FLAGS.exp:
    if flags.FLAGS.memory:
      print(memory_report(name, getattr(registry.lookup(name), 'TPU_CHIP', None)))
      continue
    count = count_experiment(registry.lookup(name))
    roles = ', '.join(f'{k} {v:,}' for k, v in count.by_role.items() if v)
    print(f'{name}: total {count.total:,}, trainable {count.trainable:,} ({roles})')
  if not (flags.FLAGS.paper_table1 or flags.FLAGS.exp):
    print('Give --exp=NAME or --paper_table1.', file=sys.stderr)
    return 2


if __name__ == '__main__':
  flags.DEFINE_multi_string('exp', [], 'Registered experiment(s) to count.')
  flags.DEFINE_bool('memory', False, 'Per-chip memory of a training step of each --exp on its '
                    'mesh (parameters, gradients, optimizer state, activations).')
  flags.DEFINE_bool('paper_table1', False,
                             "Compare the paper-scale configs with Table 1's parameter column.")
  app.run(main)
