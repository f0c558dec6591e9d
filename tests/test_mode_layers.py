"""Tests of the MoDE layers: Eq. 1 and 2, equivalences with praxis's TransformerLm, sharding."""

import re

import jax
import numpy as np
import pytest
from jax import numpy as jnp
from jax.sharding import Mesh, NamedSharding
from praxis import base_layer
from praxis import pax_fiddle
from praxis.layers import transformer_models
from praxis.layers import transformers

from mode_pax import naming
from mode_pax.layers import mode
from tests import lm_fixtures

instantiate = base_layer.instantiate


def _mode_lm_tpl(num_blocks=2, num_domain_experts=2, expert_layers=1, **overrides):
  return mode.to_mode_lm(lm_fixtures.tiny_lm_tpl(**overrides), num_blocks=num_blocks,
                         num_domain_experts=num_domain_experts, expert_layers=expert_layers)


def _block_tpl(num_experts):
  stack = pax_fiddle.Config(transformers.StackedTransformer, num_layers=2, model_dims=16,
                            hidden_dims=32, num_heads=2, mask_self_attention=True)
  expert = stack.clone().set(num_layers=1)
  return pax_fiddle.Config(mode.MoDEBlock, name='block', model_dims=16,
                           num_experts=num_experts, backbone_tpl=stack, expert_tpl=expert)


def test_block_output_is_eq1_of_its_own_branches_and_gate():
  block = instantiate(_block_tpl(num_experts=3))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
  paddings = jnp.zeros((2, 5))
  variables = lm_fixtures.init_vars(block, x, paddings)
  y = lm_fixtures.apply(block, variables, x, paddings)
  branches = lm_fixtures.apply(block, variables, x, paddings,
                               method=mode.MoDEBlock.branch_outputs)
  weights = lm_fixtures.apply(block, variables, x, method=lambda b, v: b.gate(v))
  assert len(branches) == 4 and weights.shape == (2, 5, 4)
  # Explicit Eq. 1 from the gate's own Linear: softmax(x W + b).
  gate_vars = variables['params']['gate']['logits']
  logits = np.asarray(x) @ np.asarray(gate_vars['linear']['w']) + np.asarray(
      gate_vars['bias']['b'])
  expected_w = np.exp(logits - logits.max(-1, keepdims=True))
  expected_w /= expected_w.sum(-1, keepdims=True)
  np.testing.assert_allclose(weights, expected_w, rtol=1e-5, atol=1e-6)
  expected = sum(expected_w[..., j:j + 1] * np.asarray(branches[j]) for j in range(4))
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  # The branches really differ, so the mixture is not trivially equal to one of them.
  assert not np.allclose(branches[0], branches[1], atol=1e-3)


def test_gate_weights_are_a_distribution_per_token():
  gate = instantiate(pax_fiddle.Config(mode.MoDEGate, name='g', input_dims=16, num_outputs=5))
  x = 10.0 * jax.random.normal(jax.random.PRNGKey(0), (3, 7, 16))
  variables = lm_fixtures.init_vars(gate, x)
  w = lm_fixtures.apply(gate, variables, x)
  assert w.shape == (3, 7, 5)
  assert np.all(np.asarray(w) >= 0)
  np.testing.assert_allclose(np.sum(w, axis=-1), 1.0, atol=1e-6)


def _lm_outputs(lm_tpl, variables=None):
  lm = instantiate(lm_tpl.clone().set(name='lm'))
  ids, paddings, labels = lm_fixtures.lm_inputs()
  if variables is None:
    variables = lm_fixtures.init_vars(lm, ids, paddings, labels=labels)
  out = lm_fixtures.apply(lm, variables, ids, paddings, labels=labels)
  return variables, out


def _to_blocks(plain_params, num_layers, num_blocks):
  """Renames a TransformerLm's x_layers_l to blocks_i/backbone/x_layers_k."""
  params = dict(plain_params)
  layers = params.pop('transformer')
  per = num_layers // num_blocks
  params['transformer'] = {
      f'blocks_{i}': {'backbone': {
          f'x_layers_{k}': layers[f'x_layers_{i * per + k}'] for k in range(per)}}
      for i in range(num_blocks)}
  return params


@pytest.mark.parametrize('num_blocks', [1, 2, 4])
def test_mode_lm_without_experts_equals_transformer_lm(num_blocks):
  plain_vars, plain_out = _lm_outputs(lm_fixtures.tiny_lm_tpl())
  mode_vars = {'params': _to_blocks(plain_vars['params'], 4, num_blocks)}
  _, mode_out = _lm_outputs(_mode_lm_tpl(num_blocks, 0), mode_vars)
  np.testing.assert_array_equal(mode_out.logits, plain_out.logits)
  np.testing.assert_array_equal(mode_out.total_xent, plain_out.total_xent)


def test_mode_lm_with_gate_forced_to_backbone_equals_backbone_lm():
  backbone_vars, backbone_out = _lm_outputs(_mode_lm_tpl(2, 0))
  mode_vars, mode_out = _lm_outputs(_mode_lm_tpl(2, 2))
  # Experts change the output while the gate is free ...
  assert not np.allclose(mode_out.logits, backbone_out.logits, atol=1e-3)
  params = jax.tree_util.tree_map(np.asarray, mode_vars['params'])
  for i in range(2):
    block = params['transformer'][f'blocks_{i}']
    block['backbone'] = backbone_vars['params']['transformer'][f'blocks_{i}']['backbone']
    gate = block['gate']['logits']
    gate['linear']['w'] = np.zeros_like(gate['linear']['w'])
    gate['bias']['b'] = np.array([1e4, 0.0, 0.0], np.float32)
  for k in ('softmax', 'final_ln'):
    params[k] = backbone_vars['params'][k]
  _, forced_out = _lm_outputs(_mode_lm_tpl(2, 2), {'params': params})
  # ... and with all gate weight on the backbone they vanish exactly.
  np.testing.assert_array_equal(forced_out.logits, backbone_out.logits)


def test_variable_names_give_one_regex_per_role():
  variables, _ = _lm_outputs(_mode_lm_tpl(2, 2, expert_layers=1))
  paths = ['/'.join(str(getattr(k, 'key', k)) for k in path) for path, _ in
           jax.tree_util.tree_flatten_with_path(variables)[0]]
  roles = {
      'backbone': naming.BACKBONE_LAYERS, 'outside': naming.BACKBONE_OUTSIDE_LAYERS,
      'expert0': naming.experts(0), 'expert1': naming.experts(1), 'gate': naming.GATES}
  owners = {p: [r for r, rx in roles.items() if re.fullmatch(rx, 'params/lm/' + p[7:])]
            for p in paths}
  assert all(len(o) == 1 for o in owners.values()), owners
  counts = {r: sum(o == [r] for o in owners.values()) for r in roles}
  assert counts['expert0'] == counts['expert1'] > 0
  assert counts['gate'] == 2 * 2  # a weight and a bias in each of 2 blocks
  assert counts['backbone'] == 2 * counts['expert0']  # 2 backbone layers vs 1 expert layer


def test_blocks_that_do_not_divide_the_layers_are_a_clear_error():
  with pytest.raises(ValueError, match=r'num_blocks=3 does not divide.*num_layers=4.*\[1, 2, 4\]'):
    _lm_outputs(_mode_lm_tpl(num_blocks=3))


def test_mode_lm_runs_sharded_under_jit_on_four_devices():
  mesh_shape, axes = [1, 4, 1], ('replica', 'data', 'mdl')
  sharded_tpl = _mode_lm_tpl(2, 2, ICI_MESH_SHAPE=mesh_shape)
  lm = instantiate(sharded_tpl.clone().set(name='lm'))
  unsharded_lm = instantiate(_mode_lm_tpl(2, 2).clone().set(name='lm'))
  ids, paddings, labels = lm_fixtures.lm_inputs(batch=4)
  variables = lm_fixtures.init_vars(unsharded_lm, ids, paddings, labels=labels)
  mesh = Mesh(np.array(jax.devices()[:4]).reshape(mesh_shape), axes)
  specs = base_layer.var_partition_specs(
      lm.abstract_init_with_metadata(ids, paddings, labels=labels), mesh_shape, axes)
  with mesh:
    sharded_vars = jax.tree_util.tree_map(
        lambda v, s: jax.device_put(v, NamedSharding(mesh, s)), variables, specs)
    fprop = jax.jit(lambda v, i, p, l: lm_fixtures.apply(lm, v, i, p, labels=l).logits)
    logits = fprop(sharded_vars, ids, paddings, labels)
  # Weights of backbone, experts and gate layers really are split across the devices.
  split = [path for path, x in jax.tree_util.tree_flatten_with_path(sharded_vars)[0]
           if not x.sharding.is_fully_replicated]
  assert any('backbone' in str(p) for p in split) and any('experts_1' in str(p) for p in split)
  expected = lm_fixtures.apply(unsharded_lm, variables, ids, paddings, labels=labels).logits
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def _flat(tree):
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _unflat(flat):
  out = {}
  for path, v in flat.items():
    node = out
    *parents, leaf = path.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


@pytest.mark.parametrize('num_blocks', [1, 2])
def test_scanned_blocked_backbone_equals_transformer_lm(num_blocks):
  """A blocked backbone with scanned layers is the plain praxis TransformerLm: the same logits
  and loss gradients, with the plain model's layer l stacked at index l % (L/B) of block
  l // (L/B) (the layout `convert.to_layout` writes)."""
  from mode_pax import convert  # pylint: disable=g-import-not-at-top
  plain_tpl = lm_fixtures.tiny_lm_tpl()
  plain_vars, plain_out = _lm_outputs(plain_tpl)
  blocked_tpl = mode.blocked_backbone(plain_tpl, num_blocks=num_blocks)
  flat = {'params/lm/' + k.removeprefix('params/'): v
          for k, v in _flat(plain_vars['params']).items()}
  blocked_flat = convert.to_layout(dict(flat), blocked_tpl)
  # Scanned: one stacked variable per block and layer variable, with L/B layers.
  stacked = [k for k in blocked_flat if '/repeat/sub/x_layers_0/' in k]
  assert stacked and all(blocked_flat[k].shape[0] == 4 // num_blocks for k in stacked)
  assert not any(re.search(r'x_layers_[1-9]', k) for k in blocked_flat)
  blocked_vars = {'params': _unflat({k.removeprefix('params/lm/'): v
                                     for k, v in blocked_flat.items()})}
  _, blocked_out = _lm_outputs(blocked_tpl, blocked_vars)
  np.testing.assert_allclose(blocked_out.logits, plain_out.logits, rtol=1e-5, atol=1e-5)

  ids, paddings, labels = lm_fixtures.lm_inputs()

  def loss(tpl):
    lm = instantiate(tpl.clone().set(name='lm'))
    return lambda p: lm_fixtures.apply(lm, {'params': p}, ids, paddings,
                                       labels=labels).total_xent
  plain_grads = _flat(jax.grad(loss(plain_tpl))(plain_vars['params']))
  blocked_grads = _flat(jax.grad(loss(blocked_tpl))(blocked_vars['params']))
  per = 4 // num_blocks
  for path, g in blocked_grads.items():
    m = re.fullmatch(r'transformer/blocks_(\d+)/backbone/repeat/sub/x_layers_0/(.*)', path)
    if not m:
      np.testing.assert_allclose(g, plain_grads[path], rtol=1e-4, atol=1e-6, err_msg=path)
      continue
    for k in range(per):
      np.testing.assert_allclose(
          g[k], plain_grads[f'transformer/x_layers_{int(m[1]) * per + k}/{m[2]}'],
          rtol=1e-4, atol=1e-6, err_msg=f'{path}[{k}]')


def test_mode_lm_on_a_blocked_backbone_keeps_its_blocks_and_scan():
  blocked = mode.blocked_backbone(lm_fixtures.tiny_lm_tpl(), num_blocks=2)
  mode_lm = mode.to_mode_lm(blocked, num_blocks=2, num_domain_experts=2, expert_layers=1)
  variables, _ = _lm_outputs(mode_lm)
  paths = set(_flat(variables['params']))
  assert any(p.startswith('transformer/blocks_1/experts_1/repeat/sub/x_layers_0/') for p in paths)
  assert any(p.startswith('transformer/blocks_1/gate/') for p in paths)
  # The blocked backbone's variables are exactly the MoDE LM's backbone and outside variables,
  # which the MoDE runs load by name (naming.BLOCKED_BACKBONE_RULES).
  backbone_vars, _ = _lm_outputs(blocked)
  backbone_paths = set(_flat(backbone_vars['params']))
  assert backbone_paths == {p for p in paths if '/experts_' not in p and '/gate/' not in p}
  for path in backbone_paths:
    full = 'params/lm/' + path
    matches = [rule for rule, _ in naming.BLOCKED_BACKBONE_RULES if re.match(rule, full)]
    assert len(matches) == 1, full
  with pytest.raises(ValueError, match=r'stored in 2 blocks.*NUM_BLOCKS=2'):
    mode.to_mode_lm(blocked, num_blocks=4, num_domain_experts=1, expert_layers=1)


@pytest.mark.parametrize('num_outputs,p', [(2, 0.9), (3, 0.95)])
def test_gate_can_start_at_a_given_backbone_weight_and_still_learn(num_outputs, p):
  gate = instantiate(pax_fiddle.Config(mode.MoDEGate, name='g', input_dims=16,
                                       num_outputs=num_outputs, initial_backbone_weight=p))
  x = 10.0 * jax.random.normal(jax.random.PRNGKey(0), (3, 7, 16))
  variables = lm_fixtures.init_vars(gate, x)
  w = np.asarray(lm_fixtures.apply(gate, variables, x))
  # Every token: p on the backbone, the rest shared equally by the experts (softmax of
  # [log(p N / (1 - p)), 0, ..., 0]).
  expected = np.array([p] + [(1 - p) / (num_outputs - 1)] * (num_outputs - 1))
  np.testing.assert_allclose(w, np.broadcast_to(expected, w.shape), rtol=1e-6, atol=1e-7)
  # The gate still learns: its weights get a gradient at the start.
  grads = jax.grad(lambda v: jnp.sum(lm_fixtures.apply(gate, v, x)[..., 1]))(variables)
  assert np.abs(np.asarray(grads['params']['logits']['linear']['w'])).max() > 1e-3
  with pytest.raises(ValueError, match=r'initial_backbone_weight=1.0 must be in \(0, 1\)'):
    instantiate(pax_fiddle.Config(mode.MoDEGate, name='g', input_dims=16, num_outputs=2,
                                  initial_backbone_weight=1.0)).init(jax.random.PRNGKey(0), x)


def _vectorized(tpl, vectorize):
  tpl = tpl.clone()
  tpl.stacked_transformer_tpl.block_tpl.vectorize_experts = vectorize
  return tpl


def test_vectorized_experts_are_each_praxis_expert_on_its_own_variables():
  block_tpl = _block_tpl(num_experts=3).set(vectorize_experts=True)
  block = instantiate(block_tpl)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
  paddings = jnp.zeros((2, 5)).at[1, -2:].set(1.0)
  variables = lm_fixtures.init_vars(block, x, paddings)
  branches = lm_fixtures.apply(block, variables, x, paddings,
                               method=mode.MoDEBlock.branch_outputs)
  # The reference: praxis' StackedTransformer, applied alone to each expert's own variables.
  expert = instantiate(block_tpl.expert_tpl.clone().set(name='expert'))
  assert len(branches) == 4
  for j in range(3):
    expected = lm_fixtures.apply(expert, {'params': variables['params'][f'experts_{j}']},
                                 x, paddings)
    np.testing.assert_allclose(branches[j + 1], expected, rtol=1e-5, atol=1e-6, err_msg=j)
  assert not np.allclose(branches[1], branches[2], atol=1e-3)


@pytest.mark.parametrize('scan_layers', [False, True])
def test_vectorized_experts_train_like_experts_called_one_by_one(scan_layers):
  """The LM's loss and its gradient for every variable are those of the unvectorized block,
  whose variables are the same (vectorizing changes no variable), while the vectorized step
  holds one expert's matmuls per block (3 experts batched into one)."""
  tpl = mode.to_mode_lm(
      mode.blocked_backbone(lm_fixtures.tiny_lm_tpl(), num_blocks=2) if scan_layers
      else lm_fixtures.tiny_lm_tpl(), num_blocks=2, num_domain_experts=3, expert_layers=1)
  ids, paddings, labels = lm_fixtures.lm_inputs()
  lms = {v: instantiate(_vectorized(tpl, v).set(name='lm')) for v in (False, True)}
  variables = lm_fixtures.init_vars(lms[False], ids, paddings, labels=labels)
  vec_variables = lm_fixtures.init_vars(lms[True], ids, paddings, labels=labels)
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables, vec_variables)

  def loss(vectorize):
    return lambda p: lm_fixtures.apply(lms[vectorize], {'params': p}, ids, paddings,
                                       labels=labels).total_xent
  values = {v: jax.value_and_grad(loss(v))(variables['params']) for v in (False, True)}
  np.testing.assert_allclose(values[True][0], values[False][0], rtol=1e-6)
  plain_grads, vec_grads = _flat(values[False][1]), _flat(values[True][1])
  assert set(plain_grads) == set(vec_grads)
  for path, g in plain_grads.items():
    np.testing.assert_allclose(vec_grads[path], g, rtol=1e-4, atol=1e-7, err_msg=path)
  assert np.abs(plain_grads['transformer/blocks_0/gate/logits/linear/w']).max() > 0
  if scan_layers:
    return  # the matmul count below does not depend on scanning

  def dots(lm, params):
    fn = lambda p: lm_fixtures.apply(lm, {'params': p}, ids, paddings, labels=labels).total_xent
    return len(re.findall(r'stablehlo\.dot_general', jax.jit(jax.grad(fn)).lower(params).as_text()))
  one_tpl = tpl.clone()
  one_tpl.stacked_transformer_tpl.num_domain_experts = 1
  one_lm = instantiate(one_tpl.set(name='lm'))
  one_params = lm_fixtures.init_vars(one_lm, ids, paddings, labels=labels)['params']
  # One expert's matmuls per block, as in a MoDE LM with a single expert.
  assert dots(lms[True], variables['params']) == dots(one_lm, one_params)
  assert dots(lms[False], variables['params']) > dots(one_lm, one_params)


def test_cpu_scale_vectorizes_the_experts_and_paper_scale_does_not():
  from mode_pax import registry  # pylint: disable=g-import-not-at-top

  def block(name):
    return registry.lookup(name)().task().model.lm_tpl.stacked_transformer_tpl.block_tpl
  assert block('mode.small.ComposeMathCode').vectorize_experts
  assert not block('mode.params.ComposeMathCode').vectorize_experts
