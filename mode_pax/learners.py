"""paxml's learner with the optimizer update in XLA conditionals, one per shape of variable.

The same training, compiled faster on a CPU. paxml's `learners.Learner` skips a step whose
gradients are not finite (`enable_skip_step_on_gradient_anomalies`): it computes every update,
then selects the old optimizer state and a zero update with `jnp.where`. `ConditionalSkipLearner`
skips it with `jax.lax.cond` instead, around praxis' own per-variable Adafactor update
(`ConditionalAdafactor`), which runs once for all the variables of one shape, stacked under
`jax.vmap` (`grouped_sharded_adafactor`; each variable keeps its own statistics and slots). The
arithmetic is praxis' own, but XLA may fuse (and contract into FMAs) differently inside a
conditional, so the results agree to float rounding: at the small scale's shapes bit for bit for
the Backbone, the experts and the compositions, not for LoRA (an ulp-level difference from the
fourth step on; results/compile_time_small.md); in the tests (tiny shapes, XLA optimisation level
0) to float rounding; and a skipped step changes nothing (tests/test_conditional_update.py). What
changes is how XLA:CPU compiles it: well under half the compile time.

Why (measured, results/README.md): XLA:CPU emits the fusions of the train step's entry
computation into one LLVM function, and LLVM's loop passes over that function grow faster than
linearly with its size. With a scanned model, the optimizer's per-variable fusions and paxml's
selects are most of that function (ComposeMathCode: about 1,180 fusions, 230k lines of IR); a
conditional's branches are compiled as functions of their own, and one branch per shape instead
of per variable leaves less code to compile (ComposeMathCode: 9 conditionals instead of 72). Each
group's stacking and unstacking happen inside its branch, out of the entry function too. The
conditional is on the step's validity, which paxml computes anyway, so it also skips the
optimizer's arithmetic on a skipped step instead of discarding it.

Only for an XLA:CPU: on TPU, the conditionals would serialise the optimizer's updates
(`LmExperiment.CONDITIONAL_OPTIMIZER_UPDATE`, off at paper scale).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, Iterator

import fiddle as fdl
import jax
from jax import numpy as jnp
from paxml import learners
from praxis import base_layer
from praxis import optimizers
from praxis import py_utils

# The step's validity while a ConditionalSkipLearner traces its optimizer update; a
# ConditionalAdafactor outside such a learner (e.g. called directly) updates unconditionally.
_step_validity = threading.local()

_UPDATE_FIELDS = ('update', 'm', 'm_scale', 'vr', 'vc', 'v')


@contextlib.contextmanager
def _updating_if(valid_step: jax.Array) -> Iterator[None]:
  previous = getattr(_step_validity, 'value', None)
  _step_validity.value = valid_step
  try:
    yield
  finally:
    _step_validity.value = previous


def _zero_update_keeping_slots(fields_shapes, grad_slots_param) -> tuple[Any, ...]:
  """One variable's update fields on a skipped step (what paxml's learner's selects give): a
  zero update, and its slots unchanged where the update has them (None where it has none).
  `fields_shapes` are the update fields' shapes (`jax.eval_shape` of the update, not computed);
  `grad_slots_param` is the variable's (grad, *slots, param)."""
  slots = grad_slots_param[1:len(_UPDATE_FIELDS)]
  return (jnp.zeros(fields_shapes[0].shape, fields_shapes[0].dtype),) + tuple(
      None if shape is None else slot for shape, slot in zip(fields_shapes[1:], slots))


class _ConditionalAdafactorHelper(optimizers._ShardedAdafactorHelper):  # pylint: disable=protected-access
  """praxis' per-variable Adafactor update, under `lax.cond` on the step's validity (where
  variables are updated one by one, `_names_matter`; groups take one conditional each,
  `_update_unless_skipped`).

  A skipped step keeps the variable's slots and gives a zero update: what paxml's learner's
  selects produce. The predicate is a scalar computed outside praxis' vmap over stacked layers
  (`vectorize_on_repeat_prefix`), so the conditional stays a conditional under it."""

  def compute_var_and_slot_update(self, count, grad, m, m_scale, vr, vc, v, param, var_name):
    parent = super().compute_var_and_slot_update
    valid_step = getattr(_step_validity, 'value', None)
    if valid_step is None:
      return parent(count, grad, m, m_scale, vr, vc, v, param, var_name)

    def update(grad, slots, param):
      result = parent(count, grad, *slots, param, var_name)
      return tuple(getattr(result, name) for name in _UPDATE_FIELDS)

    def skip(grad, slots, param):
      return _zero_update_keeping_slots(jax.eval_shape(update, grad, slots, param),
                                        (grad, *slots, param))

    out = jax.lax.cond(valid_step, update, skip, grad, (m, m_scale, vr, vc, v), param)
    return optimizers._ShardedAdafactorUpdateResult(**dict(zip(_UPDATE_FIELDS, out)))  # pylint: disable=protected-access


def _update_unless_skipped(valid_step: jax.Array, update, group_args):
  """`update(group_args)` in a conditional on the step's validity. The stacking and unstacking
  of the group compile inside its branch (a function of its own), not in the entry computation.
  A skipped step gives each member a zero update and its slots unchanged (what paxml's
  learner's selects give)."""
  def skip(group_args):
    return tuple(map(_zero_update_keeping_slots, jax.eval_shape(update, group_args), group_args))

  with _updating_if(None):  # no conditional per variable inside this one
    return jax.lax.cond(valid_step, update, skip, group_args)


def _update_group_key(leaves: tuple[Any, ...]) -> tuple[Any, ...]:
  """Variables whose gradient, slots and value have the same shapes and dtypes take the same
  per-variable Adafactor computation (its choices, factoring and momentum storage, follow the
  shape)."""
  return tuple((x.shape, x.dtype) for x in leaves)


def _names_matter(helper: optimizers._ShardedAdafactorHelper) -> bool:  # pylint: disable=protected-access
  """Whether praxis' per-variable update depends on the variable's name: per-name weight decay
  or layerwise-adaptation exclusions (regexes), or per-variable summaries."""
  return (isinstance(helper._weight_decay, dict)  # pylint: disable=protected-access
          or bool(helper._layerwise_adaptation  # pylint: disable=protected-access
                  and helper._exclude_from_layerwise_adaptation)  # pylint: disable=protected-access
          or helper._per_var_learning_summary)  # pylint: disable=protected-access


def grouped_sharded_adafactor(helper: optimizers._ShardedAdafactorHelper  # pylint: disable=protected-access
                              ) -> optimizers.ShardedGradientTransformation:
  """praxis' `sharded_adafactor` whose update computes variables of one shape together.

  praxis maps the per-variable update over the variables one by one, so XLA compiles a copy of
  Adafactor's arithmetic per variable: most of a MoDE composition's train step (its experts'
  layers all have the same shapes). Here the variables of each `_update_group_key` are stacked
  and the same per-variable update runs under `jax.vmap` (as praxis itself does for stacked
  layers, `optimizer_prefix_vectorization`): one copy per group, each variable still updated on
  its own (its own statistics, clipping and slots). State and results keep praxis' layout.
  Where the update depends on variable names (`_names_matter`), each variable is updated alone.
  """
  praxis_tx = optimizers.sharded_adafactor(
      helper._learning_rate_fn,  # pylint: disable=protected-access
      sharded_adafactor_helper_fn=lambda **_: helper)
  if _names_matter(helper):
    return praxis_tx

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('grouped_sharded_adafactor needs the current variables (`params`).')
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    slots = [treedef.flatten_up_to(getattr(state, f)) for f in _UPDATE_FIELDS[1:]]
    params = treedef.flatten_up_to(params)
    names = treedef.flatten_up_to(py_utils.extract_prefixed_keys_from_nested_map(updates))
    per_var = [(g, *(s[i] for s in slots), p) for i, (g, p) in enumerate(zip(leaves, params))]
    groups = {}
    for i, args in enumerate(per_var):
      groups.setdefault(_update_group_key(args), []).append(i)

    def update_one(name, *args):
      result = helper.compute_var_and_slot_update(state.count, *args, name)
      return tuple(getattr(result, f) for f in _UPDATE_FIELDS)

    def update_group(name, group_args):
      """Each member's update fields: praxis' update, under jax.vmap for a group of several."""
      if len(group_args) == 1:
        return (update_one(name, *group_args[0]),)
      stacked = [jnp.stack(a) for a in zip(*group_args)]
      out = jax.vmap(functools.partial(update_one, name))(*stacked)
      return tuple(tuple(o[k] for o in out) for k in range(len(group_args)))

    valid_step = getattr(_step_validity, 'value', None)
    results = [None] * len(leaves)
    for members in groups.values():
      # Any member's name: the update does not depend on it here (_names_matter).
      update = functools.partial(update_group, names[members[0]])
      group_args = tuple(per_var[i] for i in members)
      out = (update(group_args) if valid_step is None
             else _update_unless_skipped(valid_step, update, group_args))
      for i, r in zip(members, out):
        results[i] = r
    # Back into praxis' per-variable results and, as praxis does, its state.
    output = treedef.unflatten(
        [optimizers._ShardedAdafactorUpdateResult(**dict(zip(_UPDATE_FIELDS, r)))  # pylint: disable=protected-access
         for r in results])
    new_updates = jax.tree_util.tree_map(lambda o: o.update, output)
    return new_updates, helper.to_state(state.count + jnp.array(1, jnp.int32), output)

  return optimizers.ShardedGradientTransformation(
      init=praxis_tx.init, update=update_fn, init_partition_spec=praxis_tx.init_partition_spec)


class ConditionalAdafactor(optimizers.ShardedAdafactor):
  """praxis' ShardedAdafactor (same attributes, state and arithmetic) whose per-variable update
  runs in an XLA conditional on the step's validity inside a `ConditionalSkipLearner`, computed
  for the variables of one shape together (`grouped_sharded_adafactor`)."""

  def _get_raw_grad_transformation(self, lr):
    return grouped_sharded_adafactor(
        _ConditionalAdafactorHelper(**self._get_sharded_adafactor_kwargs(lr)))


class ConditionalSkipLearner(learners.Learner):
  """paxml's Learner that skips an invalid step with conditionals (one per shape of variable).

  The step's validity is paxml's own (`scale_gradients`: finite gradient norm, and below
  `skip_step_gradient_norm_value` if set). Requires a `ConditionalAdafactor` optimizer, the
  anomaly skip and check on (paxml's defaults), and no overwrite-with-gradient variables.

  Attributes:
    raw_grad_norm_summary: Writes 'learning/raw_grad_norm' also with `grad_norm_summary` off:
      the norm paxml's `scale_gradients` computes for the step's validity anyway, computed the
      same way, so XLA can merge the two (ComposeMathCode compiled in 26.2 s with it, against
      41.6 s with every norm summary; results/compile_time_small.md).
    Besides those of paxml's `learners.Learner`.
  """
  raw_grad_norm_summary: bool = True

  def __post_init__(self):
    super().__post_init__()
    optimizer_cls = getattr(self.optimizer, '__fn_or_cls__', type(self.optimizer))
    if not issubclass(optimizer_cls, ConditionalAdafactor):
      raise ValueError(
          f'ConditionalSkipLearner needs a mode_pax.learners.ConditionalAdafactor optimizer, '
          f'got {optimizer_cls.__name__}: with another optimizer a skipped step would still '
          'update the optimizer state. Use paxml.learners.Learner for it.')
    if not (self.enable_skip_step_on_gradient_anomalies and self.check_valid_step):
      raise ValueError(
          'ConditionalSkipLearner implements enable_skip_step_on_gradient_anomalies=True with '
          'check_valid_step=True; with either off, use paxml.learners.Learner.')

  def update_states(self, grads, states, old_vars, var_weight_hparams):
    if any(base_layer.var_overwrite_with_gradient(h)
           for h in jax.tree_util.tree_leaves(var_weight_hparams)):
      raise ValueError('ConditionalSkipLearner does not support overwrite_with_gradient '
                       'variables; use paxml.learners.Learner.')
    if self.raw_grad_norm_summary and not self.grad_norm_summary:
      base_layer.add_global_summary(
          'learning/raw_grad_norm', learners._compute_norm(grads),  # pylint: disable=protected-access
          base_layer.SummaryType.AGGREGATE_SCALAR)
    grads, valid_step = self.scale_gradients(grads)
    with _updating_if(valid_step):
      transformed_grad, new_states = self.get_grad_tx(var_weight_hparams).update(
          grads, states, old_vars)
    # Each variable's slots come out of its conditional; what is not per variable (the step
    # counts of Adafactor and of the chain's other transformations) is kept here, as paxml does.
    def keep_if_skipped(new, old):
      if isinstance(new, optimizers.ShardedAdafactorState):
        return new._replace(count=jnp.where(valid_step, new.count, old.count))
      return jnp.where(valid_step, new, old)

    new_states = jax.tree_util.tree_map(
        keep_if_skipped, new_states, states,
        is_leaf=lambda x: isinstance(x, optimizers.ShardedAdafactorState))
    if self.grad_norm_summary:
      base_layer.add_global_summary(
          'learning/applied_grad_norm', learners._compute_norm(transformed_grad),  # pylint: disable=protected-access
          base_layer.SummaryType.AGGREGATE_SCALAR)
    return transformed_grad, new_states


def use_conditional_update(task_p: Any) -> None:
  """Makes a paxml task's learner a ConditionalSkipLearner with a ConditionalAdafactor (its
  ShardedAdafactor's settings kept)."""
  learner_p = task_p.train.learner
  if not issubclass(learner_p.optimizer.__fn_or_cls__, optimizers.ShardedAdafactor):
    raise ValueError(f'CONDITIONAL_OPTIMIZER_UPDATE needs praxis ShardedAdafactor, got '
                     f'{learner_p.optimizer.__fn_or_cls__.__name__}; set it to False.')
  fdl.update_callable(learner_p.optimizer, ConditionalAdafactor)
  fdl.update_callable(learner_p, ConditionalSkipLearner)
