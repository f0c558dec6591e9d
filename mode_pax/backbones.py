"""Pre-trained LM families as praxis configs: Llama (Llama 2/3, SmolLM2) and Gemma (Gemma 1).

A family turns paxml's standard TransformerLm config (`TransformerLmSpmdAdafactor`, what
`LmExperiment.backbone_lm` returns by default) into that family's architecture, with praxis
layers only:

  norms        `normalizations.RmsNorm`: Llama x * w (direct_scale=True); Gemma x * (1 + w)
               (direct_scale=False); before attention, before the FFN and at the end; statistics
               in float32 (intermediate_dtype) as HF computes them.
  attention    `multi_query_attention.MultiQueryDotProductAttention` with num_kv_heads
               (grouped-query; 1 = multi-query as in Gemma-2B), no biases, queries scaled by
               1/sqrt(head_dim), RoPE (`embedding_softmax.RotaryPositionalEmbedding`, which
               rotates the two halves of each head as Hugging Face does) with the model's base.
  FFN          `TransformerFeedForward(use_gated_activation=True)`, no biases: Llama SwiGLU
               (SiLU), Gemma GeGLU (GELU, tanh approximation). praxis' `ffn_layer1_gate` carries
               the activation (HF gate_proj), `ffn_layer1` is HF up_proj, `ffn_layer2` down_proj.
  embeddings   tied: `SharedEmbeddingSoftmax` (one table, `softmax/logits_ffn/linear/w` [D, V]);
               untied: `Embedding` (`embedding_lookup/emb_var` [V, D]) + `FullSoftmax`; no logit
               bias, no logit cap; Gemma scales the looked-up embeddings by sqrt(D).
  positions    no additive position embedding (RoPE only).

Llama 3.1+ RoPE frequency scaling (`rope_scaling.rope_type == 'llama3'`) is
`Llama3RotaryPositionalEmbedding`, a RotaryPositionalEmbedding whose timescales are rescaled per
Llama 3's formula. Other RoPE scalings are refused (`Architecture.check`).

Use in an experiment: a family mixin goes before the method, with a scale that sets the sizes:

  class SmolLM2MoDE(SmolLM2_135M, methods.MoDE): ...
  type('X', (MyScale, LlamaFamily, methods.MoDE), {...})

`Architecture` is the same description as a value (what `mode_pax.convert` reads from a
checkpoint); `transformer_lm(arch)` builds the config without an experiment.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import jax
from jax import numpy as jnp
from praxis import base_layer
from praxis import pax_fiddle
from praxis import pytypes
from praxis.layers import activations
from praxis.layers import embedding_softmax
from praxis.layers import multi_query_attention
from praxis.layers import normalizations
from praxis.layers import transformer_models
from praxis.layers import transformers

JTensor = pytypes.JTensor

FAMILIES = ('llama', 'gemma')


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama 3.1+ RoPE frequency scaling (HF `rope_scaling` with rope_type 'llama3')."""
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What a family's praxis config needs from a pre-trained LM's description.

  Attributes:
    family: 'llama' or 'gemma'.
    num_layers, model_dims, hidden_dims (FFN), num_heads, num_kv_heads, dims_per_head,
    vocab_size: sizes (dims_per_head need not be model_dims / num_heads).
    rope_base: RoPE's base (HF rope_theta; praxis max_timescale).
    norm_eps: RMSNorm epsilon.
    tie_embeddings: one table for the embedding lookup and the softmax.
    rope_scaling: Llama 3.1+ frequency scaling, or None.
  """
  family: str
  num_layers: int
  model_dims: int
  hidden_dims: int
  num_heads: int
  num_kv_heads: int
  dims_per_head: int
  vocab_size: int
  rope_base: float = 10000.0
  norm_eps: float = 1e-5
  tie_embeddings: bool = True
  rope_scaling: RopeScaling | None = None

  def check(self) -> 'Architecture':
    """Raises ValueError naming the field that praxis' family configs cannot express."""
    if self.family not in FAMILIES:
      raise ValueError(f'family={self.family!r}: supported families are {FAMILIES}.')
    for name in ('num_layers', 'model_dims', 'hidden_dims', 'num_heads', 'num_kv_heads',
                 'dims_per_head', 'vocab_size'):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f'{name}={value!r} must be a positive integer.')
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'num_kv_heads={self.num_kv_heads} must divide num_heads='
                       f'{self.num_heads} (grouped-query attention).')
    if self.dims_per_head % 2:
      raise ValueError(f'dims_per_head={self.dims_per_head} must be even (RoPE rotates halves).')
    if not self.rope_base > 0 or not self.norm_eps > 0:
      raise ValueError(f'rope_base={self.rope_base} and norm_eps={self.norm_eps} must be > 0.')
    if self.rope_scaling is not None:
      if not isinstance(self.rope_scaling, RopeScaling):
        raise ValueError(f'rope_scaling={self.rope_scaling!r}: only Llama 3 scaling '
                         '(RopeScaling) is supported.')
      if self.family != 'llama':
        raise ValueError(f'rope_scaling is a Llama 3 feature, not supported for {self.family}.')
    return self


class Llama3RotaryPositionalEmbedding(embedding_softmax.RotaryPositionalEmbedding):
  """RotaryPositionalEmbedding with Llama 3.1's frequency scaling (rope_type 'llama3').

  Wavelengths 2*pi*timescale longer than original_max / low_freq_factor are divided in
  frequency by `factor`, those shorter than original_max / high_freq_factor are kept, and the band
  between is interpolated (Meta's `apply_scaling`, HF `_compute_llama3_parameters`). The rotation
  itself is RotaryPositionalEmbedding's (halves).

  Attributes:
    factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: Llama 3's
      rope_scaling settings.
  """
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  def timescale(self) -> JTensor:
    """[embedding_dims / 2] timescales (1 / inverse frequency), scaled."""
    half = self.embedding_dims // 2
    fraction = 2 * jnp.arange(0, half) / self.embedding_dims
    timescale = self.min_timescale * (self.max_timescale / self.min_timescale) ** fraction
    wavelen = 2 * math.pi * timescale
    old_len = self.original_max_position_embeddings
    smooth = (old_len / wavelen - self.low_freq_factor) / (
        self.high_freq_factor - self.low_freq_factor)
    # Frequency divided by `factor` (long wavelengths), kept (short ones), interpolated between:
    # inv_freq * ((1 - smooth) / factor + smooth).
    stretch = jnp.where(wavelen > old_len / self.low_freq_factor, self.factor,
                        jnp.where(wavelen < old_len / self.high_freq_factor, 1.0,
                                  1.0 / ((1 - smooth) / self.factor + smooth)))
    return timescale * stretch

  def __call__(self, inputs: JTensor, position: JTensor | None = None) -> JTensor:
    if len(inputs.shape) != 4 or self.embedding_dims != inputs.shape[3]:
      raise ValueError(f'Expected inputs [B, S, N, {self.embedding_dims}], got {inputs.shape}.')
    if position is None:
      position = jnp.arange(inputs.shape[1], dtype=jnp.float32)[jnp.newaxis, :]
    sinusoid_inp = (position[:, :, jnp.newaxis, jnp.newaxis]
                    / self.timescale()[jnp.newaxis, jnp.newaxis, jnp.newaxis, :])
    sin, cos = jnp.sin(sinusoid_inp), jnp.cos(sinusoid_inp)
    first_half, second_half = jnp.split(inputs, 2, axis=-1)
    first_part = first_half * cos - second_half * sin
    second_part = second_half * cos + first_half * sin
    if self.cast_as_fprop_dtype:
      first_part = first_part.astype(self.fprop_dtype)
      second_part = second_part.astype(self.fprop_dtype)
    return jnp.concatenate([first_part, second_part], axis=-1)


def _norm(arch: Architecture) -> pax_fiddle.Config:
  # Statistics in float32 whatever FPROP_DTYPE is, as HF's Llama / Gemma RMSNorm computes them.
  return pax_fiddle.Config(normalizations.RmsNorm, epsilon=arch.norm_eps,
                           direct_scale=arch.family != 'gemma', intermediate_dtype=jnp.float32)


def _rope(arch: Architecture) -> pax_fiddle.Config:
  if arch.rope_scaling is None:
    return pax_fiddle.Config(embedding_softmax.RotaryPositionalEmbedding,
                             max_timescale=arch.rope_base)
  s = arch.rope_scaling
  return pax_fiddle.Config(Llama3RotaryPositionalEmbedding, max_timescale=arch.rope_base,
                           factor=s.factor, low_freq_factor=s.low_freq_factor,
                           high_freq_factor=s.high_freq_factor,
                           original_max_position_embeddings=s.original_max_position_embeddings)


def _activation(arch: Architecture) -> pax_fiddle.Config:
  if arch.family == 'gemma':
    return pax_fiddle.Config(activations.GELU, approximate=True)
  return pax_fiddle.Config(activations.SiLU)


def transformer_lm(arch: Architecture, base_lm: pax_fiddle.Config | None = None, *,
                   training_optimized: bool = True) -> pax_fiddle.Config:
  """The family's praxis TransformerLm config (a copy of `base_lm`, switched over).

  Args:
    arch: The architecture (checked first).
    base_lm: paxml's TransformerLm config to start from (its sharding mesh, dtypes and any other
      setting are kept); default: a plain `transformer_models.TransformerLm` config.
    training_optimized: For the sharding annotations, re-applied with paxml's
      `set_sharding_params_v1` when `base_lm` has a mesh (the new layers need theirs).

  Returns:
    A TransformerLm config with a plain StackedTransformer (what `to_mode_lm` and `add_lora`
    take).
  """
  arch.check()
  lm = (pax_fiddle.Config(transformer_models.TransformerLm) if base_lm is None
        else copy.deepcopy(base_lm))
  if not issubclass(pax_fiddle.get_callable(lm), transformer_models.TransformerLm):
    raise ValueError(f'{pax_fiddle.get_callable(lm).__name__} is not a praxis TransformerLm.')
  stack = lm.stacked_transformer_tpl
  if pax_fiddle.get_callable(stack) is not transformers.StackedTransformer:
    raise ValueError('A backbone family needs a plain StackedTransformer (USE_REPEATED_LAYER='
                     f'False, no pipeline), got {pax_fiddle.get_callable(stack).__name__}.')
  if isinstance(stack.transformer_layer_params_tpl, (list, tuple)):
    raise ValueError('A backbone family needs one transformer layer template.')

  lm.model_dims = arch.model_dims
  lm.vocab_size = arch.vocab_size
  lm.position_emb_tpl = None  # RoPE only
  lm.final_ln_tpl = _norm(arch)

  stack.num_layers = arch.num_layers
  stack.model_dims = arch.model_dims
  stack.hidden_dims = arch.hidden_dims
  stack.num_heads = arch.num_heads
  stack.dim_per_head = arch.dims_per_head

  layer = stack.transformer_layer_params_tpl
  layer.norm_policy = 'pre'
  layer.ln_tpl = _norm(arch)
  layer.tr_atten_tpl = pax_fiddle.Config(
      multi_query_attention.MultiQueryDotProductAttention,
      num_kv_heads=arch.num_kv_heads,
      use_bias=False,
      use_rotary_position_emb=True,
      rotary_position_emb_tpl=_rope(arch),
      scale_query_by_dim_per_head=True,  # 1/sqrt(head_dim), not sqrt(model_dims / heads)
      atten_logit_cap=0.0,
  )
  ff = layer.tr_fflayer_tpl
  ff.ln_tpl = _norm(arch)
  ff.activation_tpl = _activation(arch)
  ff.use_gated_activation = True
  ff.has_bias = False

  params_init = getattr(lm.softmax_tpl, 'params_init', None) or base_layer.WeightInit.Gaussian(
      1.0 / math.sqrt(arch.model_dims))
  scale_embeddings = arch.family == 'gemma'  # Gemma: embeddings * sqrt(model_dims)
  if arch.tie_embeddings:
    lm.separate_embedding_tpl = None
    lm.softmax_tpl = pax_fiddle.Config(
        embedding_softmax.SharedEmbeddingSoftmax, scale_sqrt_depth=scale_embeddings,
        soft_cap_logits=0.0, params_init=params_init)
  else:
    lm.separate_embedding_tpl = pax_fiddle.Config(
        embedding_softmax.Embedding, scale_sqrt_depth=scale_embeddings, params_init=params_init)
    lm.softmax_tpl = pax_fiddle.Config(embedding_softmax.FullSoftmax, soft_cap_logits=0.0,
                                       params_init=params_init)
  lm.softmax_tpl.feed_forward_tpl.has_bias = False

  names = lm.mesh_axis_names
  if names is not None and lm.ici_mesh_shape is not None:
    lm = pax_fiddle.get_callable(lm).set_sharding_params_v1(
        lm, replica_axis=names[0], data_axis=names[1], mdl_axis=names[2],
        ici_mesh_shape=lm.ici_mesh_shape, dcn_mesh_shape=lm.dcn_mesh_shape,
        mesh_axis_names=names, training_optimized=training_optimized)
  return lm


# ------------------------------------------------------------------------------------------------
# Experiment mixins.


class BackboneFamily:
  """Mixin for an `LmExperiment`: its backbone is a pre-trained LM family's architecture.

  Put it before the method in the bases (`class X(Scale, LlamaFamily, methods.MoDE)`); the sizes
  are LmExperiment's (NUM_LAYERS, MODEL_DIMS, HIDDEN_DIMS, NUM_HEADS, DIMS_PER_HEAD,
  VOCAB_SIZE), plus these. DIMS_PER_HEAD may differ from MODEL_DIMS / NUM_HEADS.
  """
  FAMILY: str = ''
  NUM_KV_HEADS: int | None = None  # None: NUM_HEADS (multi-head attention)
  ROPE_BASE = 10000.0
  NORM_EPS = 1e-5
  TIE_EMBEDDINGS = True
  ROPE_SCALING: RopeScaling | None = None

  def architecture(self) -> Architecture:
    """The backbone's Architecture from the experiment's attributes."""
    return Architecture(
        family=self.FAMILY, num_layers=self.NUM_LAYERS, model_dims=self.MODEL_DIMS,
        hidden_dims=self.HIDDEN_DIMS, num_heads=self.NUM_HEADS,
        num_kv_heads=self.NUM_KV_HEADS or self.NUM_HEADS,
        dims_per_head=self.__dict__.get('_family_dims_per_head', self.DIMS_PER_HEAD),
        vocab_size=self.VOCAB_SIZE, rope_base=float(self.ROPE_BASE), norm_eps=self.NORM_EPS,
        tie_embeddings=self.TIE_EMBEDDINGS, rope_scaling=self.ROPE_SCALING).check()

  def _paxml_view(self):
    """This experiment with DIMS_PER_HEAD=None, which paxml's task() accepts for any sizes.

    paxml's TransformerLmSpmdAdafactor.task() asserts MODEL_DIMS == NUM_HEADS * DIMS_PER_HEAD,
    which Gemma-7B-like shapes break; the family sets the layers' dims per head itself (kept
    here for `architecture`).
    """
    view = copy.copy(self)
    view.__dict__['_family_dims_per_head'] = self.architecture().dims_per_head
    view.DIMS_PER_HEAD = None
    return view

  def task(self):
    if self.NUM_HEADS * self.DIMS_PER_HEAD == self.MODEL_DIMS:
      return super().task()  # pytype: disable=attribute-error
    return super(BackboneFamily, self._paxml_view()).task()  # pytype: disable=attribute-error

  def backbone_lm(self) -> pax_fiddle.Config:
    """The family's config on paxml's TransformerLm of this size (mesh, sharding, dtype)."""
    view = self._paxml_view()
    base_lm = super(BackboneFamily, view).backbone_lm()  # pytype: disable=attribute-error
    return transformer_lm(self.architecture(), base_lm,
                          training_optimized=getattr(self, 'TRAINING_OPTIMIZED_SHARDING', True))


class LlamaFamily(BackboneFamily):
  """Llama 2/3 and SmolLM2: RMSNorm x * w, SwiGLU, RoPE, grouped-query attention, no biases."""
  FAMILY = 'llama'


class GemmaFamily(BackboneFamily):
  """Gemma (1): RMSNorm x * (1 + w), GeGLU (tanh GELU), RoPE, multi-query attention, tied
  embeddings scaled by sqrt(d)."""
  FAMILY = 'gemma'
  NORM_EPS = 1e-6
  TIE_EMBEDDINGS = True


# Published architectures (HF config.json of each). Sizes only: combine with a method and a scale
# for batch, steps and mesh.


class SmolLM2_135M(LlamaFamily):  # pylint: disable=invalid-name
  """HuggingFaceTB/SmolLM2-135M: 30 layers, d 576, 9 heads of 64, 3 kv heads, tied."""
  NUM_LAYERS = 30
  MODEL_DIMS = 576
  HIDDEN_DIMS = 1536
  NUM_HEADS = 9
  NUM_KV_HEADS = 3
  DIMS_PER_HEAD = 64
  VOCAB_SIZE = 49152
  ROPE_BASE = 100000.0
  NORM_EPS = 1e-5
  TIE_EMBEDDINGS = True


class Llama32_1B(LlamaFamily):  # pylint: disable=invalid-name
  """meta-llama/Llama-3.2-1B: 16 layers, d 2048, 32 heads of 64, 8 kv heads, tied, RoPE 500000
  with Llama 3 scaling (factor 32)."""
  NUM_LAYERS = 16
  MODEL_DIMS = 2048
  HIDDEN_DIMS = 8192
  NUM_HEADS = 32
  NUM_KV_HEADS = 8
  DIMS_PER_HEAD = 64
  VOCAB_SIZE = 128256
  ROPE_BASE = 500000.0
  NORM_EPS = 1e-5
  TIE_EMBEDDINGS = True
  ROPE_SCALING = RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=8192)


class Gemma2B(GemmaFamily):  # pylint: disable=invalid-name
  """google/gemma-2b: 18 layers, d 2048, 8 heads of 256, 1 kv head (MQA), GeGLU 16384."""
  NUM_LAYERS = 18
  MODEL_DIMS = 2048
  HIDDEN_DIMS = 16384
  NUM_HEADS = 8
  NUM_KV_HEADS = 1
  DIMS_PER_HEAD = 256
  VOCAB_SIZE = 256000
  ROPE_BASE = 10000.0
  NORM_EPS = 1e-6


def family_mixin(arch: Architecture) -> type:
  """A mixin class with `arch`'s sizes (what `mode_pax.convert` prints for a checkpoint)."""
  base = {'llama': LlamaFamily, 'gemma': GemmaFamily}[arch.check().family]
  return type('ConvertedBackbone', (base,), dict(
      NUM_LAYERS=arch.num_layers, MODEL_DIMS=arch.model_dims, HIDDEN_DIMS=arch.hidden_dims,
      NUM_HEADS=arch.num_heads, NUM_KV_HEADS=arch.num_kv_heads, DIMS_PER_HEAD=arch.dims_per_head,
      VOCAB_SIZE=arch.vocab_size, ROPE_BASE=arch.rope_base, NORM_EPS=arch.norm_eps,
      TIE_EMBEDDINGS=arch.tie_embeddings, ROPE_SCALING=arch.rope_scaling))


def abstract_variables(lm_tpl: pax_fiddle.Config, seq_len: int = 8) -> dict[str, Any]:
  """{'params/lm/...': ShapeDtypeStruct} of a TransformerLm config, without allocating it."""
  from mode_pax import trees  # pylint: disable=g-import-not-at-top
  lm_tpl = copy.deepcopy(lm_tpl)
  lm_tpl.name = 'lm'
  lm_tpl.ici_mesh_shape = None
  lm_tpl.dcn_mesh_shape = None
  lm_tpl.mesh_axis_names = None
  lm = pax_fiddle.instantiate(lm_tpl)
  ids = jnp.zeros((1, seq_len), jnp.int32)
  pad = jnp.zeros((1, seq_len), jnp.float32)
  shapes = jax.eval_shape(
      lambda: lm.init({base_layer.PARAMS: jax.random.PRNGKey(0),
                       base_layer.RANDOM: jax.random.PRNGKey(1)}, ids, pad))
  return {'params/lm/' + k.removeprefix('params/'): v
          for k, v in trees.flatten(shapes).items() if k.startswith('params/')}
