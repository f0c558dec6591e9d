"""The SPMD reference step (paper's '1 mesh'): one program, model parallel over every device.

It runs the whole praxis LanguageModel (`MoDEPieces.full_loss`, i.e. `LanguageModel.__call__`)
under `jax.value_and_grad` and applies the optimizer, all in one jitted program on a [1, 1, n]
mesh with praxis's sharding annotations, as Pax's SPMD trainer does.
"""

from __future__ import annotations

from typing import Sequence

import jax
import optax

from mode_pax.mpmd import common
from mode_pax.mpmd import model as model_lib


class SpmdTrainer:
  """Train step of the whole model on one mesh.

  Attributes:
    pieces: The MoDE model.
    mesh: The [1, 1, n] mesh.
    trainable: Regexes of trainable variable paths (() = all).
  """

  def __init__(self, pieces: model_lib.MoDEPieces, device_ids: Sequence[int],
               optimizer: optax.GradientTransformation, batch_specs,
               trainable: Sequence[str] = common.MODE_TRAINABLE):
    self.pieces = pieces
    self.optimizer = optimizer
    self.trainable = tuple(trainable)
    self.batch_specs = batch_specs
    self.mesh = common.make_mesh(device_ids)
    self.specs = pieces.partition_specs(batch_specs, len(device_ids))
    self.recorder = common.Recorder()
    self._step = jax.jit(self._step_fn)

  def init_state(self, flat_vars: dict) -> dict:
    """Places host variables on the mesh; returns {'train', 'frozen', 'opt'}."""
    placed = {k: common.place(v, self.mesh, self.specs[k]) for k, v in flat_vars.items()}
    train = {k: v for k, v in placed.items() if common.is_trainable(k, self.trainable)}
    frozen = {k: v for k, v in placed.items() if k not in train}
    opt = common.init_opt_state(self.optimizer, {k: flat_vars[k] for k in train}, self.mesh,
                                self.specs)
    state = {'train': train, 'frozen': frozen, 'opt': opt}
    # The step keeps every state leaf where it is (XLA would otherwise pick output shardings).
    self._shardings = jax.tree_util.tree_map(lambda a: a.sharding, state)
    return state

  def _step_fn(self, state, batch):
    def loss_fn(train):
      return self.pieces.full_loss({**train, **state['frozen']}, batch)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['train'])
    updates, opt = self.optimizer.update(grads, state['opt'], state['train'])
    train = optax.apply_updates(state['train'], updates)
    new_state = jax.lax.with_sharding_constraint(
        {'train': train, 'frozen': state['frozen'], 'opt': opt}, self._shardings)
    return new_state, loss, metrics, grads

  def place_batch(self, batch):
    return common.place_tree(batch, self.mesh)

  def step(self, state, batch):
    """(new state, loss, metrics, grads) for one batch (host NumPy or placed)."""
    if not isinstance(jax.tree_util.tree_leaves(batch)[0], jax.Array):
      batch = self.place_batch(batch)
    with self.mesh:
      return self.recorder('spmd_step', self.mesh.size, self._step, state, batch)
