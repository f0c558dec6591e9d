"""Tests of mode_pax.backbones: Llama / Gemma families as praxis configs and experiment mixins.

Equality with an independent implementation (Hugging Face's Flax models) is in test_convert.py,
through the checkpoint converter.
"""

from __future__ import annotations

import dataclasses
import math

import fiddle as fdl
import jax
from jax import numpy as jnp
import numpy as np
from praxis import base_layer
from praxis import pax_fiddle
from praxis.layers import embedding_softmax
from praxis.layers import multi_query_attention
from praxis.layers import normalizations
import pytest

from mode_pax import backbones
from mode_pax import methods
from mode_pax import trees
from mode_pax.layers import lora
from mode_pax.layers import mode

LLAMA = backbones.Architecture('llama', num_layers=2, model_dims=32, hidden_dims=48, num_heads=4,
                               num_kv_heads=2, dims_per_head=8, vocab_size=64,
                               tie_embeddings=False)
GEMMA = backbones.Architecture('gemma', num_layers=2, model_dims=32, hidden_dims=48, num_heads=4,
                               num_kv_heads=1, dims_per_head=16, vocab_size=64, norm_eps=1e-6)
T = 8


def _instantiate(lm_tpl):
  lm_tpl = lm_tpl.clone()
  lm_tpl.name = 'lm'
  return pax_fiddle.instantiate(lm_tpl)


def _inputs(vocab=64, batch=2, length=T, seed=0):
  ids = np.random.default_rng(seed).integers(0, vocab, (batch, length)).astype(np.int32)
  return jnp.asarray(ids), jnp.zeros((batch, length), jnp.float32)


def _init(lm, seed=0):
  ids, pad = _inputs()
  return jax.jit(lambda: lm.init({base_layer.PARAMS: jax.random.PRNGKey(seed),
                                  base_layer.RANDOM: jax.random.PRNGKey(seed + 1)}, ids, pad))()


def _logits_fn(lm):
  ids, pad = _inputs()
  fn = jax.jit(lambda v: lm.apply(v, ids, pad,
                                  rngs={base_layer.RANDOM: jax.random.PRNGKey(3)}).logits)
  return lambda variables: np.asarray(fn(variables))


def _shapes(lm_tpl):
  return {k: tuple(v.shape) for k, v in backbones.abstract_variables(lm_tpl).items()}


# ------------------------------------------------------------------------------------------------
# The configs.


def test_llama_config_uses_praxis_gqa_rmsnorm_swiglu_rope():
  lm = backbones.transformer_lm(dataclasses.replace(LLAMA, rope_base=100000.0, norm_eps=1e-5))
  layer = lm.stacked_transformer_tpl.transformer_layer_params_tpl
  atten = layer.tr_atten_tpl
  assert fdl.get_callable(atten) is multi_query_attention.MultiQueryDotProductAttention
  assert atten.num_kv_heads == 2 and not atten.use_bias and atten.use_rotary_position_emb
  assert fdl.get_callable(atten.rotary_position_emb_tpl) is (
      embedding_softmax.RotaryPositionalEmbedding)
  assert atten.rotary_position_emb_tpl.max_timescale == 100000.0
  for norm in (layer.ln_tpl, layer.tr_fflayer_tpl.ln_tpl, lm.final_ln_tpl):
    assert fdl.get_callable(norm) is normalizations.RmsNorm
    assert norm.direct_scale and norm.epsilon == 1e-5
  ff = layer.tr_fflayer_tpl
  assert ff.use_gated_activation and not ff.has_bias
  assert lm.position_emb_tpl is None
  assert fdl.get_callable(lm.separate_embedding_tpl) is embedding_softmax.Embedding
  assert fdl.get_callable(lm.softmax_tpl) is embedding_softmax.FullSoftmax
  assert not lm.softmax_tpl.soft_cap_logits
  assert _shapes(lm) == {
      'params/lm/embedding_lookup/emb_var': (64, 32),
      'params/lm/softmax/logits_ffn/linear/w': (32, 64),  # no bias
      'params/lm/final_ln/scale': (32,),
      **{f'params/lm/transformer/x_layers_{i}/{k}': v for i in range(2) for k, v in {
          'layer_norm/scale': (32,),
          'self_attention/query/w': (32, 4, 8),
          'self_attention/key/w': (32, 2, 8),
          'self_attention/value/w': (32, 2, 8),
          'self_attention/post/w': (32, 4, 8),
          'ff_layer/layer_norm/scale': (32,),
          'ff_layer/ffn_layer1_gate/linear/w': (32, 48),
          'ff_layer/ffn_layer1/linear/w': (32, 48),
          'ff_layer/ffn_layer2/linear/w': (48, 32)}.items()}}


def test_gemma_config_mqa_geglu_one_plus_scale_scaled_tied_embeddings():
  lm = backbones.transformer_lm(GEMMA)
  layer = lm.stacked_transformer_tpl.transformer_layer_params_tpl
  assert layer.tr_atten_tpl.num_kv_heads == 1
  assert layer.tr_atten_tpl.scale_query_by_dim_per_head  # 1/sqrt(16), not 1/sqrt(32 / 4)
  assert not layer.ln_tpl.direct_scale and layer.ln_tpl.epsilon == 1e-6
  assert layer.tr_fflayer_tpl.activation_tpl.approximate
  assert lm.separate_embedding_tpl is None and lm.softmax_tpl.scale_sqrt_depth
  shapes = _shapes(lm)
  # Multi-query: one key / value head, praxis's one-headed projection [D, H].
  assert shapes['params/lm/transformer/x_layers_0/self_attention/key/w'] == (32, 16)
  assert shapes['params/lm/transformer/x_layers_0/self_attention/query/w'] == (32, 4, 16)
  assert 'params/lm/embedding_lookup/emb_var' not in shapes
  # Fresh RmsNorm(direct_scale=False) starts at scale 0, i.e. x * (1 + 0).
  variables = _init(_instantiate(lm))
  assert np.all(np.asarray(variables['params']['final_ln']['scale']) == 0.0)


@pytest.mark.parametrize('scale,published', [
    (backbones.SmolLM2_135M, 134_515_008),
    (backbones.Llama32_1B, 1_235_814_400),
    (backbones.Gemma2B, 2_506_172_416),
])
def test_published_architectures_have_their_published_parameter_counts(scale, published):
  # The praxis model's variables at 1 and 2 layers (tracing every layer of the real depth is
  # slow): embeddings and final norm, plus the real number of layers of one layer's size.
  counts = []
  for layers in (1, 2):
    exp = type('Exp', (scale, methods.Pretrain), {'ICI_MESH_SHAPE': None, 'NUM_LAYERS': layers})()
    counts.append(sum(math.prod(s) for s in _shapes(exp.backbone_lm()).values()))
  per_layer = counts[1] - counts[0]
  assert counts[0] - per_layer + scale.NUM_LAYERS * per_layer == published


def test_architecture_refuses_what_praxis_configs_cannot_express():
  with pytest.raises(ValueError, match='num_kv_heads=3 must divide num_heads=4'):
    dataclasses.replace(LLAMA, num_kv_heads=3).check()
  with pytest.raises(ValueError, match="family='gpt2'"):
    dataclasses.replace(LLAMA, family='gpt2').check()
  with pytest.raises(ValueError, match='rope_scaling is a Llama 3 feature'):
    dataclasses.replace(GEMMA, rope_scaling=backbones.RopeScaling()).check()


# ------------------------------------------------------------------------------------------------
# Llama 3 RoPE scaling.


def _meta_llama3_inv_freq(dim, base, factor, low, high, old_len):
  """Meta's `apply_scaling` (llama-models, Llama 3.1 reference code), in numpy."""
  freqs = 1.0 / (base ** (np.arange(0, dim, 2)[: dim // 2].astype(np.float64) / dim))
  low_wavelen, high_wavelen = old_len / low, old_len / high
  out = []
  for freq in freqs:
    wavelen = 2 * math.pi / freq
    if wavelen < high_wavelen:
      out.append(freq)
    elif wavelen > low_wavelen:
      out.append(freq / factor)
    else:
      smooth = (old_len / wavelen - low) / (high - low)
      out.append((1 - smooth) * freq / factor + smooth * freq)
  return np.array(out)


def test_llama3_rope_scaling_timescales_and_rotation():
  dim, base = 64, 500000.0
  scaled = pax_fiddle.instantiate(pax_fiddle.Config(
      backbones.Llama3RotaryPositionalEmbedding, name='rope', embedding_dims=dim,
      max_timescale=base, factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
      original_max_position_embeddings=8192))
  plain = pax_fiddle.instantiate(pax_fiddle.Config(
      embedding_softmax.RotaryPositionalEmbedding, name='rope', embedding_dims=dim,
      max_timescale=base))
  timescale = np.asarray(scaled.apply({}, method=scaled.timescale))
  np.testing.assert_allclose(1.0 / timescale,
                             _meta_llama3_inv_freq(dim, base, 32.0, 1.0, 4.0, 8192), rtol=1e-5)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 3, dim)), jnp.float32)
  pos = jnp.asarray([[0, 1, 2, 3, 4, 5], [7, 100, 1000, 5000, 9000, 20000]], jnp.float32)
  # A factor of 1 leaves every frequency alone: the plain praxis layer's result.
  same = scaled.clone(factor=1.0)
  np.testing.assert_allclose(same.apply({}, x, pos), plain.apply({}, x, pos), rtol=1e-5,
                             atol=1e-5)
  assert not np.allclose(scaled.apply({}, x, pos), plain.apply({}, x, pos), atol=1e-3)


# ------------------------------------------------------------------------------------------------
# Experiment mixins, MoDE and LoRA on the family configs.


class _TinyLlama(backbones.LlamaFamily):
  NUM_LAYERS = 2
  MODEL_DIMS = 32
  HIDDEN_DIMS = 48
  NUM_HEADS = 4
  NUM_KV_HEADS = 2
  DIMS_PER_HEAD = 8
  VOCAB_SIZE = 64
  TIE_EMBEDDINGS = False
  FPROP_DTYPE = jnp.float32
  ICI_MESH_SHAPE = [1, 1, 1]
  NUM_BLOCKS = 2
  EXPERT_LAYERS = 1


class _TinyGemma(backbones.GemmaFamily):
  """Gemma-7B's shape quirk: heads x head_dim (4 x 16) is not model_dims (48)."""
  NUM_LAYERS = 2
  MODEL_DIMS = 48
  HIDDEN_DIMS = 64
  NUM_HEADS = 4
  NUM_KV_HEADS = 1
  DIMS_PER_HEAD = 16
  VOCAB_SIZE = 64
  FPROP_DTYPE = jnp.float32
  ICI_MESH_SHAPE = [1, 1, 1]
  NUM_BLOCKS = 2
  EXPERT_LAYERS = 1


@pytest.mark.parametrize('scale', [_TinyLlama, _TinyGemma])
def test_mixin_with_mode_method_builds_mode_lm_with_family_layers(scale):
  exp = type('X', (scale, methods.MoDE), {})()
  lm_tpl = exp.task().model.lm_tpl
  assert fdl.get_callable(lm_tpl) is mode.MoDELm
  layer = lm_tpl.stacked_transformer_tpl.transformer_layer_params_tpl
  atten = layer.tr_atten_tpl
  assert fdl.get_callable(atten) is multi_query_attention.MultiQueryDotProductAttention
  # paxml's sharding annotations are re-applied to the new layers (mesh [1, 1, 1]).
  assert atten.weight_split_dims_mapping.proj == ['data', 'mdl', None]
  assert atten.weight_split_dims_mapping.proj_headless == ['data', None]
  shapes = _shapes(lm_tpl)
  key = shapes['params/lm/transformer/blocks_0/experts_0/x_layers_0/self_attention/key/w']
  expected_kv = ((exp.MODEL_DIMS, exp.DIMS_PER_HEAD) if exp.NUM_KV_HEADS == 1 else
                 (exp.MODEL_DIMS, exp.NUM_KV_HEADS, exp.DIMS_PER_HEAD))
  assert key == expected_kv  # the experts copy the backbone's layer template
  assert shapes['params/lm/transformer/blocks_1/backbone/x_layers_0/self_attention/key/w'] == (
      expected_kv)


def test_mode_lm_on_llama_with_gate_forced_to_backbone_equals_llama_lm():
  plain_tpl = backbones.transformer_lm(LLAMA)
  plain = _instantiate(plain_tpl)
  plain_vars = _init(plain)
  mode_tpl = mode.to_mode_lm(plain_tpl, num_blocks=2, num_domain_experts=2, expert_layers=1)
  mode_lm = _instantiate(mode_tpl)
  mode_vars = trees.flatten(jax.tree_util.tree_map(np.asarray, _init(mode_lm, seed=5)))
  plain_flat = trees.flatten(plain_vars)
  for path in mode_vars:
    parts = path.split('/')
    if 'backbone' in parts:  # blocks_i/backbone/x_layers_0 <- x_layers_i
      i = int(parts[2].removeprefix('blocks_'))
      mode_vars[path] = plain_flat['/'.join(['params', 'transformer', f'x_layers_{i}']
                                           + parts[5:])]
    elif 'transformer' not in parts:
      mode_vars[path] = plain_flat[path]
  mode_logits = _logits_fn(mode_lm)
  free = mode_logits(trees.unflatten(mode_vars))
  for i in range(2):
    gate = f'params/transformer/blocks_{i}/gate/logits/'
    mode_vars[gate + 'linear/w'] = np.zeros_like(mode_vars[gate + 'linear/w'])
    mode_vars[gate + 'bias/b'] = np.array([1e4, 0.0, 0.0], np.float32)
  forced = mode_logits(trees.unflatten(mode_vars))
  expected = _logits_fn(plain)(plain_vars)
  assert not np.allclose(free, expected, atol=1e-3)
  np.testing.assert_array_equal(forced, expected)


@pytest.mark.parametrize('arch', [LLAMA, GEMMA], ids=['llama_gqa', 'gemma_mqa'])
def test_add_lora_on_family_config(arch):
  lm_tpl = lora.add_lora(backbones.transformer_lm(arch), rank=2, attention=True, ffn=True)
  names = list(_shapes(lm_tpl))
  for proj in ('query', 'key', 'value', 'post'):
    assert f'params/lm/transformer/x_layers_0/self_attention/{proj}/lora_a' in names
