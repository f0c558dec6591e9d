"""The SPMD reference step (paper's '1 mesh'): one program, model parallel over every device.

It runs the whole praxis LanguageModel (`MoDEPieces.full_loss`, i.e. `LanguageModel.__call__`)
under `jax.value_and_grad` and applies the optimizer, all in one jitted program on a [1, 1, n]
mesh with praxis's sharding annotations, as Pax's SPMD trainer does. The optimizer is the
experiment's praxis learner, the same update as the MPMD runtime's (`mpmd/learner.py`) on all
trainable variables at once (so the global gradient norm is one mesh's), or an optax override.
"""

from __future__ import annotations

from typing import Sequence

import jax
import optax
from paxml import learners as learners_lib

from mode_pax.mpmd import common
from mode_pax.mpmd import learner as learner_lib
from mode_pax.mpmd import model as model_lib


class SpmdTrainer:
  """Train step of the whole model on one mesh.

  Attributes:
    pieces: The MoDE model.
    optimizer: The experiment's praxis learner, or an optax transformation replacing it.
    mesh: The [1, 1, n] mesh.
    trainable: Regexes of trainable variable paths (() = all).
  """

  def __init__(self, pieces: model_lib.MoDEPieces, device_ids: Sequence[int],
               optimizer: learners_lib.Learner | optax.GradientTransformation, batch_specs,
               trainable: Sequence[str] = common.MODE_TRAINABLE):
    if isinstance(optimizer, learners_lib.Learner):
      learner_lib.check_learner(optimizer, pieces.var_hparams(batch_specs))
    self.pieces = pieces
    self.optimizer = optimizer
    self.trainable = tuple(trainable)
    self.batch_specs = batch_specs
    self.mesh = common.make_mesh(device_ids)
    self.specs = pieces.partition_specs(batch_specs, len(device_ids))
    self.recorder = common.Recorder()
    self._step = jax.jit(self._step_fn)

  def init_state(self, flat_vars: dict) -> dict:
    """Places host variables on the mesh; returns {'train', 'frozen', 'opt'} ('opt' as in the
    MPMD state: {'step', 'tx'})."""
    placed = {k: common.place(v, self.mesh, self.specs[k]) for k, v in flat_vars.items()}
    train = {k: v for k, v in placed.items() if common.is_trainable(k, self.trainable)}
    frozen = {k: v for k, v in placed.items() if k not in train}
    self.update = learner_lib.mesh_update(self.optimizer,
                                          self.pieces.var_hparams(self.batch_specs), train)
    opt = common.init_opt_state(self.update, {k: flat_vars[k] for k in train}, self.mesh,
                                self.specs)
    state = {'train': train, 'frozen': frozen, 'opt': opt}
    # The step keeps every state leaf where it is (XLA would otherwise pick output shardings).
    self._shardings = jax.tree_util.tree_map(lambda a: a.sharding, state)
    return state

  def apply_update(self, train, opt, grads):
    """The optimizer update alone: (new train, new opt, learner summaries)."""
    sums = self.update.local_sums(train, grads) if self.update.needs_global_norm else None
    return self.update.update(train, opt, grads, sums)

  def _step_fn(self, state, batch):
    def loss_fn(train):
      return self.pieces.full_loss_and_summaries({**train, **state['frozen']}, batch)
    (loss, (metrics, summaries)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['train'])
    train, opt, learner_summaries = self.apply_update(state['train'], state['opt'], grads)
    new_state = jax.lax.with_sharding_constraint(
        {'train': train, 'frozen': state['frozen'], 'opt': opt}, self._shardings)
    return new_state, common.StepOutput(loss, metrics, grads,
                                        {**summaries, **learner_summaries})

  def place_batch(self, batch):
    return common.place_tree(batch, self.mesh)

  def step(self, state, batch):
    """(new state, loss, metrics, grads) for one batch (host NumPy or placed)."""
    state, out = self.train_step(state, batch)
    return state, out.loss, out.metrics, out.grads

  def train_step(self, state, batch) -> tuple[dict, common.StepOutput]:
    """(new state, StepOutput) for one batch (host NumPy or placed)."""
    if not isinstance(jax.tree_util.tree_leaves(batch)[0], jax.Array):
      batch = self.place_batch(batch)
    with self.mesh:
      return self.recorder('spmd_step', self.mesh.size, self._step, state, batch)

  def step_count(self, state) -> int:
    """Steps taken (paxml's TrainState.step)."""
    return int(state['opt']['step'])
