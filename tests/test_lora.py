"""Tests of mode_pax.layers.lora: LoRA layers, the add_lora config transform and the regex."""

from __future__ import annotations

import dataclasses
import functools
import re

import fiddle as fdl
import jax
from jax import numpy as jnp
import numpy as np
from paxml.tasks.lm import model_params
from praxis import base_layer
from praxis import pax_fiddle
from praxis import py_utils
from praxis.layers import attentions
from praxis.layers import embedding_softmax
from praxis.layers import linears
from praxis.layers import transformers
import pytest

from mode_pax import lm_batch
from mode_pax import trees
from mode_pax.layers import lora

L, D, F, V, N, H = 2, 32, 64, 64, 4, 8  # layers, model dims, hidden dims, vocab, heads, per head
B, T = 2, 8
RANK, ALPHA = 4, 8.0
SCALE = ALPHA / RANK


class _TinyLm(model_params.TransformerLmSpmdAdafactor):
  """The paxml LM experiment the lead trains, shrunk (float32 so comparisons are tight)."""
  NUM_LAYERS = L
  VOCAB_SIZE = V
  MODEL_DIMS = D
  HIDDEN_DIMS = F
  DIMS_PER_HEAD = H
  FPROP_DTYPE = jnp.float32

  def datasets(self):
    return []


def _model_p(combine_qkv=True, separate_embedding=False, repeated=False, mesh_shape=None):
  attrs = dict(COMBINE_QKV=combine_qkv, SEPARATE_EMBEDDING=separate_embedding,
               USE_REPEATED_LAYER=repeated, ICI_MESH_SHAPE=mesh_shape)
  exp_cls = type('_Exp', (_TinyLm,), attrs)
  return exp_cls().task().model


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, V, (B, T)).astype(np.int32)
  return lm_batch.lm_batch(ids, np.roll(ids, -1, axis=1))


def _flat(variables):
  return trees.flatten(jax.tree_util.tree_map(np.asarray, dict(variables)))


_unflat = trees.unflatten


def _is_lora_path(path):
  return path.rsplit('/', 1)[-1] in ('lora_a', 'lora_b')


def _init(model_p, seed=0):
  model = pax_fiddle.instantiate(model_p)
  with base_layer.JaxContext.new_context():
    variables = model.init(jax.random.PRNGKey(seed), _batch())
  return model, _flat(variables)


def _predict(model, flat_vars, batch=None):
  batch = _batch() if batch is None else batch
  with base_layer.JaxContext.new_context():
    out = model.apply(_unflat(flat_vars), batch, method=model.compute_predictions)
  return np.asarray(out.logits), float(out.avg_xent)


@functools.lru_cache(maxsize=None)
def _base(combine_qkv, separate_embedding):
  """The base (non-LoRA) model, its variables and its outputs."""
  model, flat = _init(_model_p(combine_qkv, separate_embedding), seed=1)
  return model, flat, _predict(model, flat)


def _lora_with_base_weights(kwargs, combine_qkv, separate_embedding):
  _, base_flat, base_out = _base(combine_qkv, separate_embedding)
  model_p = _model_p(combine_qkv, separate_embedding)
  model_p.lm_tpl = lora.add_lora(model_p.lm_tpl, RANK, ALPHA, **kwargs)
  model, flat = _init(model_p, seed=2)
  # Base variables keep their praxis names and shapes: a base checkpoint warm-starts this model.
  non_lora = {k: v for k, v in flat.items() if not _is_lora_path(k)}
  assert set(non_lora) == set(base_flat)
  for k, v in base_flat.items():
    assert non_lora[k].shape == v.shape, k
    flat[k] = v
  return model, flat, base_out


# Option sets: (add_lora kwargs, combine_qkv, separate_embedding).
_OPTIONS = {
    'attention_combined_qkv': (dict(), True, False),
    'attention_separate_qkv': (dict(), False, False),
    'attention_ffn': (dict(ffn=True), True, False),
    'attention_embeddings_shared': (dict(embeddings=True), True, False),
    'all_separate_embedding': (dict(ffn=True, embeddings=True, attention_output=False), False,
                               True),
    'embeddings_in_softmax': (dict(attention=False, embeddings=True,
                                   embeddings_in_softmax=True), True, False),
}


@pytest.mark.parametrize('option', list(_OPTIONS))
def test_zero_init_equals_base_and_nonzero_b_changes_output(option):
  kwargs, combine_qkv, separate_embedding = _OPTIONS[option]
  model, flat, (base_logits, base_xent) = _lora_with_base_weights(
      kwargs, combine_qkv, separate_embedding)
  lora_paths = sorted(k for k in flat if _is_lora_path(k))
  assert lora_paths
  for k in lora_paths:
    if k.endswith('lora_b'):
      assert not np.any(flat[k]), f'{k} must start at zero'
    else:
      assert np.std(flat[k]) > 0, f'{k} must start random'

  logits, xent = _predict(model, flat)
  np.testing.assert_allclose(logits, base_logits, rtol=0, atol=1e-6)
  assert abs(xent - base_xent) <= 1e-6

  # A nonzero lora_b anywhere changes the output.
  rng = np.random.default_rng(3)
  for k in lora_paths:
    if k.endswith('lora_b'):
      flat[k] = rng.normal(0, 0.1, flat[k].shape).astype(np.float32)
  logits, xent = _predict(model, flat)
  assert np.max(np.abs(logits - base_logits)) > 1e-3
  assert xent != base_xent


def _count(shapes):
  return sum(int(np.prod(s)) for s in shapes)


def _expected_lora_params(attention=True, ffn=False, embeddings=False, attention_output=True):
  per_layer = 0
  if attention:
    per_layer += 3 * RANK * (D + N * H)  # q, k, v
    if attention_output:
      per_layer += RANK * (N * H + D)
  if ffn:
    per_layer += 2 * RANK * (D + F)  # ffn_layer1 [D, F] and ffn_layer2 [F, D]
  return L * per_layer + (RANK * (V + D) if embeddings else 0)


@pytest.mark.parametrize('option', ['attention_combined_qkv', 'attention_separate_qkv',
                                    'attention_ffn', 'all_separate_embedding'])
def test_regex_matches_exactly_the_lora_variables(option):
  kwargs, combine_qkv, separate_embedding = _OPTIONS[option]
  model_p = _model_p(combine_qkv, separate_embedding)
  model_p.lm_tpl = lora.add_lora(model_p.lm_tpl, RANK, ALPHA, **kwargs)
  model = pax_fiddle.instantiate(model_p)
  with base_layer.JaxContext.new_context():
    var_hparams = model.abstract_init_with_metadata(_batch())
  # The matcher Pax uses for bprop_variable_inclusion.
  mask = py_utils.match_variable_names(var_hparams, lora.LORA_VARIABLES_REGEX)
  flat_mask = trees.flatten(dict(mask))
  flat_hp = trees.flatten(dict(var_hparams))
  matched = {k for k, m in flat_mask.items() if m}
  assert matched == {k for k in flat_hp if _is_lora_path(k)}
  assert len(matched) < len(flat_hp)
  assert _count(flat_hp[k].shape for k in matched) == _expected_lora_params(**kwargs)
  if combine_qkv:
    assert 'params/lm/transformer/x_layers_0/self_attention/combined_qkv/lora_a' in matched
  else:
    assert 'params/lm/transformer/x_layers_1/self_attention/value/lora_b' in matched


def test_regex_strings():
  rx = re.compile(lora.LORA_VARIABLES_REGEX)
  for path in ['params/lm/transformer/x_layers_0/self_attention/combined_qkv/lora_a',
               'params/lm/transformer/repeat/sub/x_layers_0/ff_layer/ffn_layer1/linear/lora_b',
               'params/lm/softmax/lora_a', 'params/lm/embedding_lookup/lora_b']:
    assert rx.fullmatch(path), path
  for path in ['params/lm/transformer/x_layers_0/self_attention/combined_qkv/w',
               'params/lm/softmax/logits_ffn/linear/w', 'params/lm/lora_ab',
               'params/lm/softmax/lora_a/w', 'lora_a']:
    assert not rx.fullmatch(path), path
    assert not rx.match(path), path  # checkpoint load/ignore rules use re.match


def test_repeated_stack_counts():
  model_p = _model_p(repeated=True)
  model_p.lm_tpl = lora.add_lora(model_p.lm_tpl, RANK, ALPHA, ffn=True)
  model = pax_fiddle.instantiate(model_p)
  with base_layer.JaxContext.new_context():
    var_hparams = model.abstract_init_with_metadata(_batch())
  flat_mask = trees.flatten(py_utils.match_variable_names(var_hparams, lora.LORA_VARIABLES_REGEX))
  flat_hp = trees.flatten(dict(var_hparams))
  matched = [k for k, m in flat_mask.items() if m]
  assert set(matched) == {k for k in flat_hp if _is_lora_path(k)}
  # Repeated layers carry a leading [L] repeat prefix in their WeightHParams.
  total = sum(int(np.prod(flat_hp[k].shape)) * int(np.prod(flat_hp[k].repeat_prefix or [1]))
              for k in matched)
  assert total == _expected_lora_params(ffn=True)


# ------------------------------------------------------------------------------------------------
# Layer-level checks of the delta against alpha / rank * x @ A @ B computed by hand.


def _layer_delta(lora_cfg, base_cfg, inputs, method=None, init_method=None):
  """Returns (vars, out_base, out_lora_zero_b, out_lora_random_b) of one layer."""
  layer = pax_fiddle.instantiate(lora_cfg)
  base = pax_fiddle.instantiate(base_cfg)
  with base_layer.JaxContext.new_context():
    variables = _flat(layer.init(jax.random.PRNGKey(0), inputs, method=init_method or method))
    base_vars = {k: v for k, v in variables.items() if not _is_lora_path(k)}
    out_base = base.apply(_unflat(base_vars), inputs, method=method)
    out_zero = layer.apply(_unflat(variables), inputs, method=method)
    rng = np.random.default_rng(5)
    for k in variables:
      if k.endswith('lora_b'):
        variables[k] = rng.normal(0, 1.0, variables[k].shape).astype(np.float32)
    out_rand = layer.apply(_unflat(variables), inputs, method=method)
  return variables, out_base, out_zero, out_rand


def _assert_zero_and_delta(out_base, out_zero, out_rand, expected_delta):
  np.testing.assert_allclose(np.asarray(out_zero), np.asarray(out_base), rtol=0, atol=1e-6)
  delta = np.asarray(out_rand, np.float64) - np.asarray(out_base, np.float64)
  assert np.max(np.abs(expected_delta)) > 1e-2
  np.testing.assert_allclose(delta, expected_delta, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('is_output,use_nhd_shape,use_bias,combine_dims',
                         [(False, False, True, False), (True, False, True, False),
                          (True, True, False, False), (False, False, False, True),
                          (True, True, False, True)])
def test_attention_projection_delta(is_output, use_nhd_shape, use_bias, combine_dims):
  kw = dict(name='proj', input_dim=D, num_heads=N, dim_per_head=H,
            is_output_projection=is_output, use_nhd_shape=use_nhd_shape, use_bias=use_bias,
            attention_combine_dims=combine_dims)
  lora_cfg = pax_fiddle.Config(lora.LoraAttentionProjection, lora_rank=RANK, lora_alpha=ALPHA,
                               **kw)
  base_cfg = pax_fiddle.Config(attentions.AttentionProjection, **kw)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(B, T, N, H) if is_output else (B, T, D)).astype(np.float32)
  v, out_base, out_zero, out_rand = _layer_delta(lora_cfg, base_cfg, x)
  a = v['params/lora_a'].astype(np.float64)
  b = v['params/lora_b'].astype(np.float64)
  if combine_dims:  # (N, H) is one N*H dim in the variables, as in the base weight.
    if is_output:
      assert a.shape == (N * H, RANK)
      a = a.reshape(N, H, RANK)
    else:
      assert b.shape == (RANK, N * H)
      b = b.reshape(RANK, N, H)
  if is_output:
    assert a.shape == (N, H, RANK) and b.shape == (RANK, D)
    expected = SCALE * np.einsum('btnh,nhr,rd->btd', x, a, b)
  else:
    assert a.shape == (D, RANK) and b.shape == (RANK, N, H)
    expected = SCALE * np.einsum('btd,dr,rnh->btnh', x, a, b)
  _assert_zero_and_delta(out_base, out_zero, out_rand, expected)


def test_attention_output_projection_can_be_skipped():
  cfg = pax_fiddle.Config(lora.LoraAttentionProjection, name='post', input_dim=D, num_heads=N,
                          dim_per_head=H, is_output_projection=True, lora_rank=RANK,
                          lora_output_projection=False)
  layer = pax_fiddle.instantiate(cfg)
  with base_layer.JaxContext.new_context():
    variables = _flat(layer.init(jax.random.PRNGKey(0), np.ones((B, T, N, H), np.float32)))
  assert set(variables) == {'params/w', 'params/b'}


def test_combined_qkv_delta():
  kw = dict(name='combined_qkv', input_dim=D, num_heads=N, dim_per_head=H, use_bias=True)
  lora_cfg = pax_fiddle.Config(lora.LoraCombinedQKVProjection, lora_rank=RANK, lora_alpha=ALPHA,
                               **kw)
  base_cfg = pax_fiddle.Config(attentions.CombinedQKVProjectionLayer, **kw)
  x = np.random.default_rng(0).normal(size=(B, T, D)).astype(np.float32)
  v, out_base, out_zero, out_rand = _layer_delta(lora_cfg, base_cfg, x)
  a = v['params/lora_a'].astype(np.float64)
  b = v['params/lora_b'].astype(np.float64)
  assert a.shape == (3, D, RANK) and b.shape == (3, RANK, N, H)
  expected = SCALE * np.einsum('btd,kdr,krnh->kbtnh', x, a, b)
  _assert_zero_and_delta(np.stack(out_base), np.stack(out_zero), np.stack(out_rand), expected)


def test_linear_delta():
  kw = dict(name='linear', input_dims=D, output_dims=F)
  lora_cfg = pax_fiddle.Config(lora.LoraLinear, lora_rank=RANK, lora_alpha=ALPHA, **kw)
  base_cfg = pax_fiddle.Config(linears.Linear, **kw)
  x = np.random.default_rng(0).normal(size=(B, T, D)).astype(np.float32)
  v, out_base, out_zero, out_rand = _layer_delta(lora_cfg, base_cfg, x)
  expected = SCALE * x @ v['params/lora_a'].astype(np.float64) @ v['params/lora_b']
  _assert_zero_and_delta(out_base, out_zero, out_rand, expected)


def test_fresh_lora_gradient_reaches_b_only():
  # Standard LoRA: with B = 0 the loss depends on B (through A), and not yet on A.
  layer = pax_fiddle.instantiate(pax_fiddle.Config(
      lora.LoraLinear, name='linear', input_dims=D, output_dims=F, lora_rank=RANK))
  x = np.random.default_rng(0).normal(size=(B, T, D)).astype(np.float32)
  with base_layer.JaxContext.new_context():
    variables = layer.init(jax.random.PRNGKey(0), x)
    grads = _flat(jax.grad(lambda v: jnp.sum(layer.apply(v, x) ** 2 + layer.apply(v, x)))(
        variables))
  assert np.any(grads['params/lora_b']) and not np.any(grads['params/lora_a'])
  assert np.any(grads['params/w'])


@pytest.mark.parametrize('lookup_style', ['index', 'matmul'])
def test_embedding_delta(lookup_style):
  kw = dict(name='emb', num_classes=V, input_dims=D, lookup_style=lookup_style,
            scale_sqrt_depth=True)
  lora_cfg = pax_fiddle.Config(lora.LoraEmbedding, lora_rank=RANK, lora_alpha=ALPHA, **kw)
  base_cfg = pax_fiddle.Config(embedding_softmax.Embedding, **kw)
  ids = np.random.default_rng(0).integers(0, V, (B, T)).astype(np.int32)
  v, out_base, out_zero, out_rand = _layer_delta(lora_cfg, base_cfg, ids)
  table_delta = SCALE * v['params/lora_a'].astype(np.float64) @ v['params/lora_b']
  _assert_zero_and_delta(out_base, out_zero, out_rand, table_delta[ids] * D**0.5)


@pytest.mark.parametrize('in_softmax', [False, True])
def test_shared_embedding_softmax_delta(in_softmax):
  kw = dict(name='softmax', num_classes=V, input_dims=D, scale_sqrt_depth=True,
            soft_cap_logits=0.0)
  lora_cfg = pax_fiddle.Config(lora.LoraSharedEmbeddingSoftmax, lora_rank=RANK, lora_alpha=ALPHA,
                               lora_in_softmax=in_softmax, **kw)
  base_cfg = pax_fiddle.Config(embedding_softmax.SharedEmbeddingSoftmax, **kw)
  rng = np.random.default_rng(0)
  ids = rng.integers(0, V, (B, T)).astype(np.int32)
  x = rng.normal(size=(B, T, D)).astype(np.float32)
  v, out_base, out_zero, out_rand = _layer_delta(
      lora_cfg, base_cfg, ids, method=lambda layer, i: layer.emb_lookup(i),
      init_method=lambda layer, i: (layer.emb_lookup(i), layer.get_logits(x)))
  table_delta = SCALE * v['params/lora_a'].astype(np.float64) @ v['params/lora_b']  # [V, D]
  _assert_zero_and_delta(out_base, out_zero, out_rand, table_delta[ids] * D**0.5)
  # The softmax side: base weights unless in_softmax, then the tied W + delta^T.
  logits = lambda layer, inp: layer.get_logits(inp)
  lora_layer = pax_fiddle.instantiate(lora_cfg)
  base = pax_fiddle.instantiate(base_cfg)
  with base_layer.JaxContext.new_context():
    base_vars = {k: w for k, w in v.items() if not _is_lora_path(k)}
    got = np.asarray(lora_layer.apply(_unflat(v), x, method=logits), np.float64)
    want = np.asarray(base.apply(_unflat(base_vars), x, method=logits), np.float64)
  if in_softmax:
    want = want + x @ table_delta.T
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Config transform.


def test_add_lora_config_transform():
  model_p = _model_p(combine_qkv=True)
  lm_tpl = model_p.lm_tpl
  new = lora.add_lora(lm_tpl, RANK, ffn=True, embeddings=True)
  old_layer = lm_tpl.stacked_transformer_tpl.transformer_layer_params_tpl
  layer = new.stacked_transformer_tpl.transformer_layer_params_tpl
  # The input is untouched.
  assert old_layer.tr_atten_tpl.proj_tpl.cls is attentions.AttentionProjection
  assert lm_tpl.softmax_tpl.cls is embedding_softmax.SharedEmbeddingSoftmax
  assert layer.tr_atten_tpl.proj_tpl.cls is lora.LoraAttentionProjection
  assert layer.tr_atten_tpl.combined_qkv_proj_tpl.cls is lora.LoraCombinedQKVProjection
  assert layer.tr_fflayer_tpl.fflayer_tpl.linear_tpl.cls is lora.LoraLinear
  assert new.softmax_tpl.cls is lora.LoraSharedEmbeddingSoftmax
  # The softmax's own Linear is not an FFN linear.
  assert new.softmax_tpl.feed_forward_tpl.linear_tpl.cls is linears.Linear
  assert layer.tr_atten_tpl.combined_qkv_proj_tpl.lora_rank == RANK
  assert layer.tr_atten_tpl.combined_qkv_proj_tpl.lora_alpha is None
  # Other arguments survive the class switch.
  assert layer.tr_atten_tpl.combine_qkv and not layer.tr_atten_tpl.use_bias
  assert new.softmax_tpl.scale_sqrt_depth and new.softmax_tpl.soft_cap_logits == 30.0
  # Applying it twice just resets rank and alpha.
  again = lora.add_lora(new, 2 * RANK, 1.0)
  qkv = again.stacked_transformer_tpl.transformer_layer_params_tpl.tr_atten_tpl
  assert qkv.combined_qkv_proj_tpl.lora_rank == 2 * RANK
  assert qkv.combined_qkv_proj_tpl.lora_alpha == 1.0


def test_add_lora_on_stacked_transformer_subclass():

  class MyStack(transformers.StackedTransformer):
    pass

  model_p = _model_p(combine_qkv=False)
  stack = model_p.lm_tpl.stacked_transformer_tpl
  model_p.lm_tpl.stacked_transformer_tpl = pax_fiddle.Config(
      MyStack, **{k: getattr(stack, k) for k in stack.__arguments__})
  new = lora.add_lora(model_p.lm_tpl, RANK, attention=False, ffn=True)
  layer = new.stacked_transformer_tpl.transformer_layer_params_tpl
  assert new.stacked_transformer_tpl.cls is MyStack
  assert layer.tr_atten_tpl.proj_tpl.cls is attentions.AttentionProjection
  assert layer.tr_fflayer_tpl.fflayer_tpl.linear_tpl.cls is lora.LoraLinear


def test_add_lora_rejects_unknown_classes():
  model_p = _model_p()
  model_p.lm_tpl.softmax_tpl = pax_fiddle.Config(embedding_softmax.GShardSharedEmbeddingSoftmax)
  with pytest.raises(ValueError, match='Cannot add LoRA'):
    lora.add_lora(model_p.lm_tpl, RANK, embeddings=True)
  with pytest.raises(ValueError):
    lora.add_lora(model_p.lm_tpl, 0)


# ------------------------------------------------------------------------------------------------
# Sharded, jitted forward on a mesh of 4 virtual CPU devices.


def test_jitted_forward_on_mesh():
  assert jax.device_count() >= 4, 'tests/conftest.py must force >= 4 host devices'
  mesh_shape = [1, 2, 2]  # replica, data, mdl
  model_p = _model_p(combine_qkv=True, mesh_shape=mesh_shape)
  model_p.lm_tpl = lora.add_lora(model_p.lm_tpl, RANK, ALPHA, ffn=True, embeddings=True)
  model = pax_fiddle.instantiate(model_p)
  axis_names = model_p.mesh_axis_names
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]).reshape(mesh_shape), axis_names)
  batch = _batch()
  with base_layer.JaxContext.new_context():
    var_hparams = model.abstract_init_with_metadata(batch)
  specs = base_layer.var_partition_specs(var_hparams, mesh_shape, axis_names)
  flat_specs = trees.flatten(dict(specs))
  qkv = 'params/lm/transformer/x_layers_0/self_attention/combined_qkv/'
  assert flat_specs[qkv + 'w'] == jax.sharding.PartitionSpec(None, 'data', 'mdl', None)
  assert flat_specs[qkv + 'lora_a'] == jax.sharding.PartitionSpec(None, 'data', None)
  assert flat_specs[qkv + 'lora_b'] == jax.sharding.PartitionSpec(None, None, 'mdl', None)
  ffn1 = 'params/lm/transformer/x_layers_0/ff_layer/ffn_layer1/linear/'
  assert flat_specs[ffn1 + 'lora_a'] == jax.sharding.PartitionSpec('data', None)
  assert flat_specs[ffn1 + 'lora_b'] == jax.sharding.PartitionSpec(None, 'mdl')

  # The same LoRA model without a mesh gives the variables and the reference numbers.
  plain_p = _model_p(combine_qkv=True)
  plain_p.lm_tpl = lora.add_lora(plain_p.lm_tpl, RANK, ALPHA, ffn=True, embeddings=True)
  plain_model, lora_flat = _init(plain_p, seed=0)
  rng = np.random.default_rng(7)
  for k in lora_flat:
    if k.endswith('lora_b'):
      lora_flat[k] = rng.normal(0, 0.1, lora_flat[k].shape).astype(np.float32)
  want_logits, want_xent = _predict(plain_model, lora_flat, batch)
  assert set(lora_flat) == set(flat_specs)

  variables = _unflat(lora_flat)
  shardings = jax.tree_util.tree_map(lambda s: jax.sharding.NamedSharding(mesh, s),
                                     _unflat(flat_specs))
  variables = jax.device_put(variables, shardings)

  def fwd(v, b):
    with base_layer.JaxContext.new_context():
      out = model.apply(v, b, method=model.compute_predictions)
    return out.logits, out.avg_xent

  with mesh:
    logits, xent = jax.jit(fwd)(variables, batch)
  assert logits.shape == (B, T, V)
  assert np.all(np.isfinite(np.asarray(logits)))
  np.testing.assert_allclose(np.asarray(logits), want_logits, rtol=1e-4, atol=1e-4)
  assert abs(float(xent) - want_xent) < 1e-4


# ------------------------------------------------------------------------------------------------
# The LoraLayer mixin.

_LORA_CLASSES = [
    (lora.LoraAttentionProjection, attentions.AttentionProjection, {'lora_output_projection'}),
    (lora.LoraCombinedQKVProjection, attentions.CombinedQKVProjectionLayer, set()),
    (lora.LoraLinear, linears.Linear, set()),
    (lora.LoraEmbedding, embedding_softmax.Embedding, set()),
    (lora.LoraSharedEmbeddingSoftmax, embedding_softmax.SharedEmbeddingSoftmax,
     {'lora_in_softmax'}),
]


@pytest.mark.parametrize('lora_cls,base_cls,own_fields', _LORA_CLASSES,
                         ids=[c[0].__name__ for c in _LORA_CLASSES])
def test_mixin_fields(lora_cls, base_cls, own_fields):
  assert issubclass(lora_cls, lora.LoraLayer) and issubclass(lora_cls, base_cls)
  fields = {f.name: f for f in dataclasses.fields(lora_cls)}
  base_fields = {f.name: f for f in dataclasses.fields(base_cls)}
  shared = {'lora_rank', 'lora_alpha', 'lora_a_init'}
  assert set(fields) == set(base_fields) | shared | own_fields
  # The mixin (a BaseLayer too) must not shadow the praxis layer's defaults, e.g. Embedding's
  # ActivationSharding with emb_out_split_dims_mapping.
  for name, f in base_fields.items():
    assert fields[name].default is f.default, name
    assert fields[name].default_factory is f.default_factory, name
  cfg = pax_fiddle.Config(lora_cls)
  assert cfg.lora_rank == 0 and cfg.lora_alpha is None and cfg.lora_a_init is None
  base_cfg = pax_fiddle.Config(base_cls)
  assert fdl.get_callable(cfg.activation_split_dims_mapping) is fdl.get_callable(
      base_cfg.activation_split_dims_mapping)
  assert fdl.get_callable(cfg.weight_split_dims_mapping) is fdl.get_callable(
      base_cfg.weight_split_dims_mapping)


def test_mixin_scale_and_rank_check():
  kw = dict(name='linear', input_dims=D, output_dims=F)
  x = np.ones((B, D), np.float32)
  for alpha, scale in ((None, 1.0), (ALPHA, SCALE)):
    layer = pax_fiddle.instantiate(
        pax_fiddle.Config(lora.LoraLinear, lora_rank=RANK, lora_alpha=alpha, **kw))
    assert layer.lora_scale == scale
  layer = pax_fiddle.instantiate(pax_fiddle.Config(lora.LoraLinear, **kw))  # lora_rank 0
  with base_layer.JaxContext.new_context():
    with pytest.raises(ValueError, match='lora_rank must be > 0'):
      layer.init(jax.random.PRNGKey(0), x)


def test_default_lora_a_init_std():
  # Gaussian with std 1/sqrt(fan-in): D for q/k/v, 1 for an embedding table.
  layer = pax_fiddle.instantiate(pax_fiddle.Config(
      lora.LoraCombinedQKVProjection, name='qkv', input_dim=256, num_heads=N, dim_per_head=H,
      lora_rank=64))
  emb = pax_fiddle.instantiate(pax_fiddle.Config(
      lora.LoraEmbedding, name='emb', num_classes=256, input_dims=D, lora_rank=64))
  with base_layer.JaxContext.new_context():
    a = _flat(layer.init(jax.random.PRNGKey(0), np.ones((B, 256), np.float32)))['params/lora_a']
    e = _flat(emb.init(jax.random.PRNGKey(0), np.zeros((B,), np.int32),
                       method=emb.emb_lookup))['params/lora_a']
  assert abs(np.std(a) - 256**-0.5) < 0.1 * 256**-0.5
  assert abs(np.std(e) - 1.0) < 0.1
