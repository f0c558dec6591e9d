"""The small scale's CPU settings change how a train step computes, not what it trains:

EMBEDDING_LOOKUP_STYLE and SOFTMAX_CHUNK_SIZE (the output layer): Pax's own train steps with them
match the steps of what paxml's LM experiments run (the one-hot matmul lookup their sharding sets,
unchunked softmax), for each method near the output layer. VARIABLE_NORM_SUMMARY=False: the same
steps without paxml's per-variable norm summaries."""

import jax
import numpy as np
import pytest
from jax import numpy as jnp
from paxml import trainer_lib
from praxis import base_layer

from mode_pax import lm_batch
from mode_pax import methods
from mode_pax import registry
from mode_pax import trees
from tests import lm_fixtures
from tests import test_freezing

# The small scale's CPU settings, with a chunk that divides the test's 12 positions 3 times.
CPU_SOFTMAX = dict(EMBEDDING_LOOKUP_STYLE='index', SOFTMAX_CHUNK_SIZE=4)
# paxml's: set_sharding_annotations_v1 (a model with a mesh) makes the lookup a matmul.
PAXML_SOFTMAX = dict(EMBEDDING_LOOKUP_STYLE='matmul')


def _train(method, steps=3, **overrides):
  """(softmax settings, losses, initial and final variables, summary names of the last step) of
  `steps` Pax train steps of a tiny experiment of `method`."""
  exp = type('Tiny', (test_freezing.TinyAdaptation, method), overrides)()
  task_p = exp.task()
  softmax_p = task_p.model.lm_tpl.softmax_tpl
  settings = (softmax_p.lookup_style, softmax_p.chunk_size)
  task = base_layer.instantiate(task_p)
  ids, paddings, _ = lm_fixtures.lm_inputs(batch=4, length=12)
  batch = lm_batch.lm_batch(ids, jnp.roll(ids, -1, axis=1), paddings=paddings)
  state, _ = trainer_lib.initialize_model_state(task, jax.random.PRNGKey(0), batch)
  initial = trees.flatten(jax.tree_util.tree_map(np.asarray, state.mdl_vars))
  step = jax.jit(lambda s, k, b: trainer_lib.train_step_single_learner(task, s, k, b))
  losses = []
  for i in range(steps):
    state, out = step(state, jax.random.PRNGKey(i + 1), batch)
    losses.append(float(out.loss))
  final = trees.flatten(jax.tree_util.tree_map(np.asarray, state.mdl_vars))
  return settings, losses, initial, final, set(out.summary_tensors)


@pytest.mark.parametrize('method,overrides', [
    (methods.Pretrain, {}),
    (methods.MoDE, dict(NUM_DOMAIN_EXPERTS=1)),
    (methods.Lora, dict(LORA_EMBEDDINGS=True)),
])
def test_cpu_softmax_settings_train_like_paxmls_defaults(method, overrides):
  reference_settings, reference_losses, initial, reference, _ = _train(
      method, **overrides, **PAXML_SOFTMAX)
  settings, losses, _, variables, _ = _train(method, **overrides, **CPU_SOFTMAX)
  assert reference_settings == ('matmul', None)
  assert settings == ('index', 4)
  np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)
  assert variables.keys() == reference.keys()  # the same variables
  moved = 0
  for path, value in variables.items():
    np.testing.assert_allclose(value, reference[path], rtol=1e-4, atol=1e-6, err_msg=path)
    moved += not np.array_equal(value, initial[path])
  assert moved  # the steps trained something


def test_without_variable_norm_summaries_the_steps_train_the_same_variables():
  _, reference_losses, initial, reference, reference_summaries = _train(
      methods.MoDE, NUM_DOMAIN_EXPERTS=1, VARIABLE_NORM_SUMMARY=True)
  _, losses, _, variables, summaries = _train(
      methods.MoDE, NUM_DOMAIN_EXPERTS=1, VARIABLE_NORM_SUMMARY=False)
  norm_summaries = {name for name in reference_summaries if name.startswith('vars/')}
  assert norm_summaries and not norm_summaries & summaries  # what the setting removes ...
  assert summaries == reference_summaries - norm_summaries  # ... and nothing else
  np.testing.assert_allclose(losses, reference_losses, rtol=1e-6)
  assert variables.keys() == reference.keys()
  for path, value in variables.items():
    np.testing.assert_allclose(value, reference[path], rtol=1e-6, atol=1e-7, err_msg=path)
  assert any(not np.array_equal(variables[p], initial[p]) for p in variables)


def test_small_scale_sets_them_for_every_method():
  from mode import small  # pylint: disable=g-import-not-at-top
  for name in ('Backbone', 'CodeExpert', 'LoraMathCode', 'FullFinetuneMathCode'):
    softmax_p = registry.lookup(f'mode.small.{name}')().task().model.lm_tpl.softmax_tpl
    assert (softmax_p.lookup_style, softmax_p.chunk_size) == (
        small.SmallScale.EMBEDDING_LOOKUP_STYLE, small.SmallScale.SOFTMAX_CHUNK_SIZE), name
    assert not registry.lookup(f'mode.small.{name}')().task().train.variable_norm_summary, name


def test_a_softmax_without_the_setting_is_refused():
  from tests import tiny_plm_experiments  # pylint: disable=g-import-not-at-top
  untied = type('Untied', (tiny_plm_experiments.TinyLlamaScale, methods.Pretrain),
                dict(EMBEDDING_LOOKUP_STYLE='index'))
  with pytest.raises(ValueError, match=r'EMBEDDING_LOOKUP_STYLE=.index.*FullSoftmax.*None'):
    untied().task()
