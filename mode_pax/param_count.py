"""Total and trainable parameters of an experiment's model, without allocating it.

  python -m mode_pax.param_count --exp=mode.CodeExpert [--exp=...]
  python -m mode_pax.param_count --paper_table1

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
from jax import numpy as jnp
from praxis import base_layer
from praxis import py_utils

from mode_pax import naming
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


def _model_inputs(batch: int = 1, length: int = 8) -> py_utils.NestedMap:
  ids = jnp.zeros((batch, length), jnp.int32)
  return py_utils.NestedMap(
      ids=ids, labels=ids, weights=jnp.ones((batch, length), jnp.float32),
      paddings=jnp.zeros((batch, length), jnp.float32), segment_ids=ids + 1,
      segment_pos=jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length)))


def count_task(task_p) -> ParamCount:
  """Counts the parameters of a Pax task config's model."""
  model = base_layer.instantiate(task_p.model)
  weight_hparams = model.abstract_init_with_metadata(_model_inputs())
  learner = task_p.train.learner
  if learner.bprop_variable_inclusion:
    trains = py_utils.match_variable_names(weight_hparams, learner.bprop_variable_inclusion)
  else:
    excluded = py_utils.match_variable_names(weight_hparams, learner.bprop_variable_exclusion)
    trains = jax.tree_util.tree_map(lambda x: not x, excluded)
  sizes = jax.tree_util.tree_map(lambda w: math.prod(w.shape), weight_hparams)
  flat_sizes = py_utils.NestedMap(sizes).FlattenItems()
  flat_trains = dict(py_utils.NestedMap(trains).FlattenItems())
  by_role = {role: 0 for role in ROLES}
  total = trainable = 0
  for name, size in flat_sizes:
    path = name.replace('.', '/')
    total += size
    trainable += size if flat_trains[name] else 0
    for role, regexes in ROLES.items():
      if any(re.fullmatch(r, path) for r in regexes):
        by_role[role] += size
        break
  return ParamCount(total=total, trainable=trainable, by_role=by_role)


def count_experiment(experiment_cls) -> ParamCount:
  """Counts the parameters of a registered experiment class (no checkpoints or data needed)."""
  experiment = experiment_cls()
  experiment.BUILD_FOR_RUN = False
  return count_task(experiment.task())


# The paper's Table 1 parameter column, in billions, and the experiments that reproduce it.
PAPER_TABLE1 = (
    ('Full-parameter Fine-tuning', 'mode.FullFinetuneMathCode', 1.583),
    ('LoRA', 'mode.LoraMathCode', 1.585),
    ('MoDE 1x Uninitialized Expert', 'mode.Uninitialized1xMathCode', 1.979),
    ('MoDE 2x Uninitialized Experts', 'mode.Uninitialized2xMathCode', 2.376),
    ('MoDE 2x Frozen Experts', 'mode.FrozenExpertsMathCode', 2.376),
    ('MoDE 2x Experts', 'mode.ComposeMathCode', 2.376),
)


def paper_table1_rows() -> list[tuple[str, str, float, ParamCount]]:
  from mode_pax import results  # pylint: disable=g-import-not-at-top  (results imports us)
  return [(method, exp, paper_b, count_experiment(results.lookup(exp)))
          for method, exp, paper_b in PAPER_TABLE1]


def main(argv):
  del argv
  if flags.FLAGS.paper_table1:
    print('| Method | Experiment | Parameters (B) | Paper (B) | Difference | Trainable (M) |')
    print('|---|---|---|---|---|---|')
    for method, exp, paper_b, count in paper_table1_rows():
      ours = count.total / 1e9
      print(f'| {method} | {exp} | {ours:.3f} | {paper_b:.3f} | '
            f'{100 * (ours - paper_b) / paper_b:+.2f}% | {count.trainable / 1e6:.1f} |')
  for name in flags.FLAGS.exp:
    from mode_pax import results  # pylint: disable=g-import-not-at-top
    count = count_experiment(results.lookup(name))
    roles = ', '.join(f'{k} {v:,}' for k, v in count.by_role.items() if v)
    print(f'{name}: total {count.total:,}, trainable {count.trainable:,} ({roles})')
  if not (flags.FLAGS.paper_table1 or flags.FLAGS.exp):
    print('Give --exp=NAME or --paper_table1.', file=sys.stderr)
    return 2


if __name__ == '__main__':
  flags.DEFINE_multi_string('exp', [], 'Registered experiment(s) to count.')
  flags.DEFINE_bool('paper_table1', False,
                             "Compare the paper-scale configs with Table 1's parameter column.")
  app.run(main)
