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
  sizes = jax.tree_util.tree_map(lambda w: math.prod(w.shape), weight_hparams)
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
    count = count_experiment(registry.lookup(name))
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
