"""CONDITIONAL_OPTIMIZER_UPDATE (mode_pax.learners) changes how XLA compiles the optimizer
update, not what it computes: Pax train steps with it match those of paxml's own Learner and
praxis' ShardedAdafactor, on valid steps and on a step paxml skips (a non-finite gradient), with
scanned layers (praxis vectorizes the optimizer over their stacking dimension).

Valid steps match to float rounding here: the tests compile at XLA's optimisation level 0
(run_env.TEST_XLA_FLAGS), where the two differ by an ulp in some elements (and by that much in
the int8-quantized momentum). With XLA's default flags and the small scale's shapes they are
bit for bit the same for the Backbone, CodeExpert and ComposeMathCode, and not for LoraCode
(`benchmarks/compile_time.py` compares the trained states)."""

import functools

import fiddle as fdl
import jax
import numpy as np
import pytest
from jax import numpy as jnp
from paxml import learners as paxml_learners
from paxml import trainer_lib
from praxis import base_layer
from praxis import optimizers
from praxis import pax_fiddle
from praxis import schedules
from praxis.layers import repeats

from mode_pax import learners
from mode_pax import lm_batch
from mode_pax import methods
from mode_pax import registry
from mode_pax import trees
from tests import lm_fixtures
from tests import test_freezing

# Two blocks of two scanned layers: every layer variable is stacked (praxis' repeat prefix).
SCANNED = dict(NUM_LAYERS=4, SCAN_LAYERS=True,
               SCAN_CHECKPOINT_POLICY=repeats.AutodiffCheckpointType.SAVE_EVERYTHING)


def _leaves(state):
  """Every variable and optimizer-state array of a train state, as numpy, in tree order."""
  return [np.asarray(x) for x in jax.tree_util.tree_leaves((state.mdl_vars, state.opt_states))]


def _poison(state, path):
  """The state with one variable made NaN: its gradients, and the global norm, are not finite."""
  flat = trees.flatten(state.mdl_vars)
  flat[path] = jnp.full_like(flat[path], jnp.nan)
  return state.new_state(mdl_vars=trees.unflatten(flat), opt_states=state.opt_states,
                         extra_state=())


METHODS = {
    'Pretrain': (methods.Pretrain, {}),  # every variable trains
    'MoDE': (methods.MoDE, dict(NUM_DOMAIN_EXPERTS=1)),  # frozen backbone: masked optimizer state
}


@functools.lru_cache(maxsize=None)
def _run(method_name, conditional, steps=3, norm_summaries=True):
  """One tiny experiment's Pax train step, compiled once: its learner class, the number of
  conditionals in its optimized HLO, the leaves before and after `steps` valid steps, their
  losses and first step's summaries, then the leaves before and after one step on a NaN variable
  (which paxml skips)."""
  method, overrides = METHODS[method_name]
  exp = type('Tiny', (test_freezing.TinyAdaptation, method),
             dict(SCANNED, CONDITIONAL_OPTIMIZER_UPDATE=conditional,
                  LEARNER_NORM_SUMMARIES=norm_summaries, **overrides))()
  task = base_layer.instantiate(exp.task())
  ids, paddings, _ = lm_fixtures.lm_inputs(batch=4, length=12)
  batch = lm_batch.lm_batch(ids, jnp.roll(ids, -1, axis=1), paddings=paddings)
  state, _ = trainer_lib.initialize_model_state(task, jax.random.PRNGKey(0), batch)
  step = jax.jit(lambda s, k, b: trainer_lib.train_step_single_learner(task, s, k, b)).lower(
      state, jax.random.PRNGKey(1), batch).compile()
  run = dict(learner=type(task.learners[0]), initial=_leaves(state),
             conditionals=step.as_text().count(' conditional('),
             num_variables=len(jax.tree_util.tree_leaves(state.mdl_vars)),
             num_shapes=len({(x.shape, x.dtype) for x in jax.tree_util.tree_leaves(state.mdl_vars)}),
             losses=[])
  for i in range(steps):
    state, out = step(state, jax.random.PRNGKey(i + 1), batch)
    run['losses'].append(float(out.loss))
    if i == 0:
      run['summaries'] = {k: float(v) for k, v in out.summary_tensors.items() if v.ndim == 0}
  run['trained'] = _leaves(state)
  state = _poison(state, 'params/lm/final_ln/scale')
  run['before_skip'] = _leaves(state)
  state, out = step(state, jax.random.PRNGKey(steps + 1), batch)
  run['valid_step'] = float(out.summary_tensors['learning/is_valid_step_aggregate_scalar'])
  run['after_skip'] = _leaves(state)
  return run


@pytest.mark.parametrize('method', METHODS)
def test_conditional_update_trains_like_paxmls_learner(method):
  reference, run = _run(method, False), _run(method, True)
  assert reference['learner'] is paxml_learners.Learner
  assert run['learner'] is learners.ConditionalSkipLearner
  np.testing.assert_allclose(run['losses'], reference['losses'], rtol=1e-6)
  assert len(run['trained']) == len(reference['trained'])
  for value, expected in zip(run['trained'], reference['trained']):
    assert value.dtype == expected.dtype and value.shape == expected.shape
    if value.dtype == np.int8:  # Adafactor's quantized momentum: a rounding moves a level
      assert np.max(np.abs(value.astype(int) - expected.astype(int)), initial=0) <= 2
    elif np.issubdtype(value.dtype, np.integer):  # step counts
      np.testing.assert_array_equal(value, expected)
    else:  # such a level moves a variable by ~1e-5; one update is ~1e-2 (learning rate)
      np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4)
  assert any(not np.array_equal(a, b) for a, b in zip(run['trained'], run['initial']))


@pytest.mark.parametrize('method', METHODS)
def test_a_skipped_step_keeps_every_variable_slot_and_count(method):
  for run in (_run(method, False), _run(method, True)):
    assert run['valid_step'] == 0.0
    assert len(run['after_skip']) == len(run['before_skip'])
    # Nothing changes (paxml's behaviour, and the explicit expectation): Adafactor's slots and
    # the chain's step counts included.
    for value, expected in zip(run['after_skip'], run['before_skip']):
      np.testing.assert_array_equal(value, expected)


def test_without_norm_summaries_the_raw_gradient_norm_is_still_written():
  """LEARNER_NORM_SUMMARIES=False (the CPU scales): no clipped or applied gradient norm and no
  variable norm, the same training, and the raw gradient norm paxml's own Learner reports."""
  reference, run = _run('MoDE', False), _run('MoDE', True, norm_summaries=False)
  norms = ('learning/raw_grad_norm', 'learning/clipped_grad_norm', 'learning/applied_grad_norm',
           'learning/var_norm')
  assert {f'{n}_aggregate_scalar' for n in norms} <= reference['summaries'].keys()
  assert {n for n in norms if f'{n}_aggregate_scalar' in run['summaries']} == {
      'learning/raw_grad_norm'}
  raw = 'learning/raw_grad_norm_aggregate_scalar'
  assert reference['summaries'][raw] > 0
  np.testing.assert_allclose(run['summaries'][raw], reference['summaries'][raw], rtol=1e-5)
  np.testing.assert_allclose(run['losses'], reference['losses'], rtol=1e-6)


def test_one_conditional_per_shape_of_variable_after_xla_optimizes_the_step():
  # Variables of one shape (the blocks' stacked layers, each layer's norms) share one update.
  reference, run = _run('Pretrain', False), _run('Pretrain', True)
  assert run['num_shapes'] < run['num_variables']
  assert run['conditionals'] - reference['conditionals'] == run['num_shapes']


def test_the_conditional_learner_refuses_what_it_does_not_implement():
  task_p = registry.lookup('mode.small.CodeExpert')().task()
  learner_p = task_p.train.learner
  learner_p.name = 'learner'  # as paxml's task names it
  fdl.update_callable(learner_p.optimizer, optimizers.ShardedAdafactor)  # praxis' own
  with pytest.raises(ValueError, match='needs a mode_pax.learners.ConditionalAdafactor'):
    base_layer.instantiate(learner_p)
  learner_p = registry.lookup('mode.small.CodeExpert')().task().train.learner
  learner_p.name = 'learner'
  learner_p.enable_skip_step_on_gradient_anomalies = False
  with pytest.raises(ValueError, match='enable_skip_step_on_gradient_anomalies=True'):
    base_layer.instantiate(learner_p)


def test_cpu_scales_use_it_and_paper_scale_does_not():
  for name in ('Backbone', 'CodeExpert', 'ComposeMathCode', 'FullFinetuneMathCode',
               'LoraMathCode'):
    learner_p = registry.lookup(f'mode.small.{name}')().task().train.learner
    assert learner_p.__fn_or_cls__ is learners.ConditionalSkipLearner, name
    assert learner_p.optimizer.__fn_or_cls__ is learners.ConditionalAdafactor, name
    # The CPU scale drops the norm summaries but the raw gradient norm (compile time).
    assert not learner_p.grad_norm_summary and not learner_p.var_norm_summary, name
    assert learner_p.raw_grad_norm_summary, name
  learner_p = registry.lookup('mode.params.CodeExpert')().task().train.learner
  assert learner_p.__fn_or_cls__ is paxml_learners.Learner
  assert learner_p.grad_norm_summary and learner_p.var_norm_summary


@pytest.mark.parametrize('weight_decay', [1e-2, {'a': 0.5}])  # per-name: each updated alone
def test_variables_of_one_shape_updated_together_as_praxis_updates_each(weight_decay):
  opt = base_layer.instantiate(optimizers.ShardedAdafactor.HParamsAdamB().set(
      learning_rate=1.0, weight_decay=weight_decay, min_dim_size_to_factor=4,
      lr_schedule=pax_fiddle.Config(schedules.Constant)))
  kwargs = opt._get_sharded_adafactor_kwargs(lambda count: 0.1)  # pylint: disable=protected-access
  reference = optimizers.sharded_adafactor(**kwargs)
  grouped = learners.grouped_sharded_adafactor(optimizers._ShardedAdafactorHelper(**kwargs))  # pylint: disable=protected-access
  keys = iter(jax.random.split(jax.random.PRNGKey(0), 16))
  params = {'a': jax.random.normal(next(keys), (8, 6)), 'b': jax.random.normal(next(keys), (8, 6)),
            'c': jax.random.normal(next(keys), (6,)), 'd': jax.random.normal(next(keys), (6,))}
  states = [reference.init(params), grouped.init(params)]
  for _ in range(3):
    grads = jax.tree_util.tree_map(lambda p: jax.random.normal(next(keys), p.shape), params)
    (ref_updates, states[0]), (updates, states[1]) = (
        tx.update(grads, state, params) for tx, state in zip((reference, grouped), states))
    for value, expected in zip(jax.tree_util.tree_leaves((updates, states[1])),
                               jax.tree_util.tree_leaves((ref_updates, states[0]))):
      np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-7)
    params = jax.tree_util.tree_map(jnp.add, params, updates)
  # Same-shaped variables got different updates: each kept its own statistics.
  assert not np.allclose(updates['a'], updates['b'])
