"""A few real Pax learner steps: only the roles a freezing rule leaves trainable change."""

import jax
import numpy as np
from jax import numpy as jnp
from paxml import trainer_lib
from praxis import base_layer

from mode_pax import lm_batch
from mode_pax import methods
from mode_pax import trees
from tests import lm_fixtures


class TinyAdaptation:
  """A tiny experiment of each method (a mixin before the method), trained in-process with
  Pax's own train step."""
  NUM_LAYERS = 2  # one backbone layer per block: the cheapest model with every role
  VOCAB_SIZE = 64
  MODEL_DIMS = 32
  HIDDEN_DIMS = 64
  DIMS_PER_HEAD = 8
  NUM_HEADS = 4
  FPROP_DTYPE = jnp.float32
  NUM_BLOCKS = 2
  EXPERT_LAYERS = 1
  LORA_RANK = 4
  LEARNING_RATE = 1e-2
  WARMUP_STEPS = 0
  MAX_STEPS = 10

  def datasets(self):
    return []

  def warm_start_rules(self):
    return {}  # trained from its initialisation, in-process


def _train(method, **overrides):
  exp = type('Tiny', (TinyAdaptation, method), overrides)()
  task = base_layer.instantiate(exp.task())
  ids, paddings, _ = lm_fixtures.lm_inputs(batch=4, length=12)
  batch = lm_batch.lm_batch(ids, jnp.roll(ids, -1, axis=1), paddings=paddings)
  state, _ = trainer_lib.initialize_model_state(task, jax.random.PRNGKey(0), batch)
  before = jax.tree_util.tree_map(np.asarray, state.mdl_vars)
  step = jax.jit(lambda s, k, b: trainer_lib.train_step_single_learner(task, s, k, b))
  for i in range(3):
    state, _ = step(state, jax.random.PRNGKey(i + 1), batch)
  after = jax.tree_util.tree_map(np.asarray, state.mdl_vars)
  changed = {}
  after = trees.flatten(after)
  for path, b in trees.flatten(before).items():
    changed[path] = not np.array_equal(after[path], b)
  return changed


def _changed(changed, fragment):
  return {p: c for p, c in changed.items() if fragment in p}


def test_expert_training_changes_only_experts_and_gates():
  changed = _train(methods.MoDE, NUM_DOMAIN_EXPERTS=1)
  for path, did in changed.items():
    should = '/experts_' in path or '/gate/' in path
    assert did == should, (path, did)


def test_frozen_experts_composition_changes_only_gates():
  changed = _train(methods.MoDE, NUM_DOMAIN_EXPERTS=2, FREEZE_EXPERTS=True)
  assert any(changed.values())
  for path, did in changed.items():
    assert did == ('/gate/' in path), (path, did)


def test_lora_changes_only_lora_variables():
  changed = _train(methods.Lora, LORA_FFN=True)
  # lora_b starts at zero so lora_a gets no gradient on the first step; both move later.
  assert any(changed.values())
  for path, did in changed.items():
    if '/lora_' not in path:
      assert not did, path
  assert all(_changed(changed, '/lora_b').values())


def test_full_finetuning_changes_everything():
  changed = _train(methods.FullFinetune)
  assert all(changed.values()), [p for p, c in changed.items() if not c]
