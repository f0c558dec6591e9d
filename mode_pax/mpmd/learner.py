"""The optimizer step of the MPMD runtime and of its SPMD reference: the experiment's learner.

paxml's train step (`trainer_lib.train_step_single_learner`) hands the gradients of the trainable
variables to the task's praxis-style `learners.Learner`, whose `update_states` does, in order:

  1. `scale_gradients`: the global gradient norm over every trainable variable; the step is
     valid when it is finite (and below `skip_step_gradient_norm_value` if set); gradients are
     scaled by min(1, clip_gradient_norm_to_value / norm) (or clipped per variable to
     clip_gradient_single_norm_to_value);
  2. the optimizer's gradient transformation (`learner.get_grad_tx`: e.g. ShardedAdafactor with
     its learning-rate schedule and decoupled weight decay, both inside the praxis optimizer);
  3. an invalid step applies zero updates and keeps the optimizer state;

then `apply_gradient` adds the updates, and the TrainState's step advances by one.

Everything but the global norm is per variable, so each mesh runs 2 and 3 (praxis's own
transformation, built from the WeightHParams of the variables that live there) on its own
variables. The norm is the only cross-mesh quantity: each mesh computes its partial sums of
squares (`local_sums`), the runtime adds them over all meshes, and every mesh applies the same
validity test and scale (`update`, written after praxis's `scale_gradients`, which computes the
norm from one tree of gradients and cannot take a norm summed elsewhere).

A mesh's optimizer state ('opt' in the trainers' states) is {'step': int32 scalar, the
TrainState's step (steps taken, skipped ones included: the learning-rate summary reads it),
'tx': the gradient transformation's state of the mesh's trainable variables (for
ShardedAdafactor: its count, which sets the schedule's step, and per-variable moments)}.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
import optax
from jax import numpy as jnp
from paxml import learners as learners_lib
from praxis import base_layer
from praxis import pax_fiddle
from praxis import py_utils

Flat = dict[str, Any]
SummaryType = base_layer.SummaryType

# local_sums: [sum of squared gradients, sum of squared variables] of one mesh.
SUMS = jax.ShapeDtypeStruct((2,), jnp.float32)


def _sum_squares(tree: Mapping[str, jax.Array]) -> jax.Array:
  """Sum of x * x over every leaf (praxis learners._compute_norm before its square root)."""
  leaves = [jnp.sum(x * x) for x in jax.tree_util.tree_leaves(tree)]
  return jnp.sum(jnp.stack(leaves)) if leaves else jnp.zeros([], jnp.float32)


class OptaxUpdate:
  """A plain optax transformation per variable (the `optimizer=` override): no clipping."""
  needs_global_norm = False

  def __init__(self, tx: optax.GradientTransformation):
    self.tx = tx

  def init(self, train: Flat) -> dict:
    return {'step': np.zeros([], np.int32), 'tx': self.tx.init(train)}

  def local_sums(self, train: Flat, grads: Flat) -> jax.Array:
    raise NotImplementedError('plain optax updates need no global norm')

  def update(self, train: Flat, opt: dict, grads: Flat, sums=None):
    del sums
    updates, tx_state = self.tx.update(grads, opt['tx'], train)
    return (optax.apply_updates(train, updates), {'step': opt['step'] + 1, 'tx': tx_state},
            {})


class LearnerUpdate:
  """The experiment's praxis Learner on the trainable variables of one mesh.

  Attributes:
    learner: The instantiated `paxml.learners.Learner` (the task's `train.learner`).
    var_hparams: path -> praxis WeightHParams of the mesh's trainable variables.
  """
  needs_global_norm = True

  def __init__(self, learner: learners_lib.Learner, var_hparams: Mapping[str, Any]):
    self.learner = learner
    self.var_hparams = dict(var_hparams)
    self.tx = learner.get_grad_tx(self.var_hparams)

  def init(self, train: Flat) -> dict:
    return {'step': np.zeros([], np.int32), 'tx': self.tx.init(train)}

  def local_sums(self, train: Flat, grads: Flat) -> jax.Array:
    """[sum g^2, sum v^2] over this mesh's trainable variables (added over meshes)."""
    return jnp.stack([_sum_squares(grads), _sum_squares(train)]).astype(jnp.float32)

  def _scale(self, grads: Flat, grad_norm: jax.Array) -> tuple[Flat, jax.Array]:
    """praxis `Learner.scale_gradients` with the global norm: (scaled grads, valid step)."""
    learner, opt = self.learner, self.learner.optimizer
    clip_norm = opt.clip_gradient_norm_to_value
    clip_single = opt.clip_gradient_single_norm_to_value
    if learner.grad_norm_summary:
      base_layer.add_global_summary('learning/raw_grad_norm', grad_norm,
                                    SummaryType.AGGREGATE_SCALAR)
    valid = jnp.all(jnp.isfinite(grad_norm))
    if learner.skip_step_gradient_norm_value:
      valid = jnp.logical_and(valid, grad_norm < learner.skip_step_gradient_norm_value)
    if learner.check_valid_step:
      base_layer.add_global_summary('learning/is_valid_step', valid.astype(jnp.float32),
                                    SummaryType.AGGREGATE_SCALAR)
    else:
      valid = jnp.array(True)
    scale = jnp.array(1.0, grad_norm.dtype)
    if clip_norm:
      scale = jnp.minimum(jnp.array(1, grad_norm.dtype),
                          jnp.array(clip_norm, grad_norm.dtype) / grad_norm)
      grads = jax.tree_util.tree_map(lambda g: g * scale, grads)
    elif clip_single:  # per variable: every variable lives on one mesh
      def clip_one(g):
        norm = jnp.sqrt(jnp.sum(g * g))
        return g * jnp.minimum(jnp.array(1, norm.dtype),
                               jnp.array(clip_single, norm.dtype) / norm)
      grads = jax.tree_util.tree_map(clip_one, grads)
    base_layer.add_global_summary('learning/grad_scale', scale, SummaryType.AGGREGATE_SCALAR)
    if learner.grad_norm_summary:
      # praxis recomputes the norm of the scaled gradients; with global-norm clipping that is
      # grad_norm * scale (with per-variable clipping the runtime does not report it).
      if not clip_single:
        base_layer.add_global_summary('learning/clipped_grad_norm', grad_norm * scale,
                                      SummaryType.AGGREGATE_SCALAR)
    return grads, valid

  def update(self, train: Flat, opt: dict, grads: Flat, sums: jax.Array):
    """One learner step of this mesh's variables given the sums added over all meshes.

    Returns:
      (new trainable variables, new opt state, summaries as paxml's train step names them:
      'lr', 'learning/lr', 'learning/raw_grad_norm', 'learning/grad_scale',
      'learning/clipped_grad_norm', 'learning/is_valid_step', 'learning/var_norm', each with
      its '_aggregate_scalar' suffix; not 'learning/applied_grad_norm', which would need
      another reduction over meshes).
    """
    learner = self.learner
    context = base_layer.JaxContext.HParams(do_eval=False)
    with base_layer.JaxContext.new_context(hparams=context):
      learner.plot_learning_rate(opt['step'])
      grads, valid = self._scale(grads, jnp.sqrt(sums[0]))
      updates, tx_state = self.tx.update(grads, opt['tx'], train)
      if learner.enable_skip_step_on_gradient_anomalies:
        updates = jax.tree_util.tree_map(lambda u: jnp.where(valid, u, jnp.zeros_like(u)),
                                         updates)
        tx_state = jax.tree_util.tree_map(
            lambda new, old: new if py_utils.is_optax_masked_node(new) else jnp.where(
                valid, new, old), tx_state, opt['tx'], is_leaf=py_utils.is_optax_masked_node)
      new_train = learner.apply_gradient(train, updates, self.var_hparams)
      summaries = dict(base_layer.all_global_summaries())
    # apply_gradient's var norm is this mesh's; the global one comes from the added sums.
    var_norm = 'learning/var_norm_aggregate_scalar'
    if var_norm in summaries:
      summaries[var_norm] = jnp.sqrt(sums[1])
    return new_train, {'step': opt['step'] + 1, 'tx': tx_state}, summaries


def check_learner(learner: learners_lib.Learner, var_hparams: Mapping[str, Any]) -> None:
  """Refuses learner features the per-mesh step does not reproduce, before any work.

  Raises:
    ValueError: naming the feature and what to change.
  """
  problems = []
  if learner.stochastic_gradient is not None:
    problems.append('stochastic_gradient (e.g. DP-SGD) changes how gradients are computed')
  if learner.skip_zero_gradients is not None:
    problems.append('skip_zero_gradients')
  if getattr(learner, 'apply_separate_scaling', False):
    problems.append('MultiOptimizerLearner.apply_separate_scaling (one norm per optimizer)')
  owg = [p for p, h in var_hparams.items() if base_layer.var_overwrite_with_gradient(h)]
  if owg:
    problems.append(f'overwrite_with_gradient variables ({owg[:3]}...)')
  if problems:
    raise ValueError('The MPMD runtime applies the learner per mesh and cannot reproduce: '
                     + '; '.join(problems) + '. Use a learner without them or pass '
                     'optimizer=<optax transformation>.')


def learner_of(task_p) -> learners_lib.Learner:
  """The learner of a Pax task config (`exp.task()`), built as `tasks_lib.SingleTask` builds
  it (named 'learner_0')."""
  if isinstance(task_p.train.learner, (tuple, list)):
    raise ValueError('The MPMD runtime supports a task with one learner (train.learner).')
  return pax_fiddle.build(task_p.train.learner.clone().set(name='learner_0'))


def mesh_update(optimizer, var_hparams: Mapping[str, Any],
                train: Mapping[str, Any]) -> LearnerUpdate | OptaxUpdate:
  """The update of one mesh's trainable variables `train` ({path: array}): the learner's
  (var_hparams: path -> WeightHParams of every variable) or the optax override's."""
  if isinstance(optimizer, learners_lib.Learner):
    return LearnerUpdate(optimizer, {p: var_hparams[p] for p in train})
  return OptaxUpdate(optimizer)
