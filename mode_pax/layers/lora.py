"""LoRA (Hu et al. 2021, arXiv 2106.09685) layers for praxis 1.4.0: the MoDE paper's baseline.

The MoDE paper (Table 1 and Appendix A, Table 2) compares against LoRA on the attention
matrices, optionally also on the FFN and on the token embeddings. Each layer here subclasses the
praxis layer it adapts (and `LoraLayer`, the mixin with the shared fields lora_rank, lora_alpha,
lora_a_init) and adds a low-rank delta to its output:

  y = base(x) + (lora_alpha / lora_rank) * (x @ lora_a) @ lora_b

`lora_b` starts at zero, so a fresh LoRA model computes exactly what its base model computes;
`lora_a` starts Gaussian. The base weights keep their praxis names (`w`, `b`, `emb_var`, ...), so
a checkpoint of the base (non-LoRA) model warm-starts the LoRA model with the regular Pax rules.

Variable naming: every LoRA variable is named `lora_a` or `lora_b` and sits next to the weight it
adapts, e.g. (TransformerLm with the default StackedTransformer):

  params/lm/transformer/x_layers_{l}/self_attention/combined_qkv/lora_{a,b}   (combine_qkv=True)
  params/lm/transformer/x_layers_{l}/self_attention/{query,key,value}/lora_{a,b}
  params/lm/transformer/x_layers_{l}/self_attention/post/lora_{a,b}           (output projection)
      (multi-query attention, mode_pax.backbones: query / key / value / post, the same names)
  params/lm/transformer/x_layers_{l}/ff_layer/ffn_layer{1,2}/linear/lora_{a,b}
      (and ffn_layer1_gate/linear with a gated activation)
  params/lm/softmax/lora_{a,b}              (shared embedding/softmax table)
  params/lm/embedding_lookup/lora_{a,b}     (separate embedding)
With StackedTransformerRepeated the layers sit under `transformer/repeat/sub/x_layers_0/`.

`LORA_VARIABLES_REGEX` matches exactly these (whole path, as Pax matches): use it for
`learner.bprop_variable_inclusion` to train LoRA only, and in the `ignore_rules` of a
`CheckpointLoadingRules` that warm-starts from a base checkpoint with a catch-all load rule.

Shapes (r = lora_rank; D model dims; N heads; H dims per head; V vocab; F hidden dims):
  AttentionProjection, q/k/v:   lora_a [D, r],      lora_b [r, N, H]
  AttentionProjection, output:  lora_a [N, H, r],   lora_b [r, D]
  CombinedQKVProjectionLayer:   lora_a [3, D, r],   lora_b [3, r, N, H] (one delta each for q, k, v)
  OneHeadedAttentionProjection: lora_a [D, r],      lora_b [r, H]       (MQA's shared k / v)
  Linear [in, out]:             lora_a [in, r],     lora_b [r, out]
  Embedding tables [V, D]:      lora_a [V, r],      lora_b [r, D]
With attention_combine_dims the (N, H) pair is one N*H dim, as in the base weight.

Embeddings: the delta applies to the embedding table as in the LoRA paper (the lookup): the
looked-up row of E + s * lora_a @ lora_b, so `scale_sqrt_depth` scales it like the table. For
the shared embedding/softmax table (`LoraSharedEmbeddingSoftmax`) the delta by default applies to
the lookup only and the softmax keeps the base table (like HF peft's embedding LoRA, which leaves
a tied LM head alone); `lora_in_softmax=True` applies the same delta to the softmax too (a truly tied
table: logits += s * (x @ lora_b^T) @ lora_a^T).

Sharding: lora_a shares the base weight's sharding on its input dims, lora_b on its output dims;
the rank dim is replicated.

Why not praxis' own LoRA: praxis 1.4.0 has LoRA only in `praxis.layers.quantization`, as
LinearLoRA and AttentionProjectionLoRA, subclasses of its quantized Linear / AttentionProjection
(with their default `quantization` the base weight is int8 `w` plus `w_quantized_scale`;
`quantization=None` keeps a float `w`). They do not cover this baseline:
  - no LoRA for CombinedQKVProjectionLayer (paxml's TransformerLmSpmdAdafactor defaults to
    COMBINE_QKV=True), nor for Embedding or SharedEmbeddingSoftmax;
  - AttentionProjectionLoRA fails in setup with attention_combine_dims, and on the output
    projection it is not a rank-r factorisation of the [N*H, D] weight: r replaces only the
    larger of N, H (for H > N: w_left [H, r], w_right [D, N, r]; rank up to N * r), or both
    with max_reduction=False (w_left [N, H, r, r], w_right [D, r, r]);
  - no alpha / rank scaling; by default (init_method='one_zero') w_left starts Gaussian with
    std 1, not 1/sqrt(fan-in), and w_right at zero ('output_dim' starts both nonzero);
  - their variables are w_left / w_right, not lora_a / lora_b (LORA_VARIABLES_REGEX, the
    experiments' checkpoints).
"""

from __future__ import annotations

import copy
from typing import Sequence

import fiddle as fdl
import jax
from jax import numpy as jnp
from praxis import base_layer
from praxis import pax_fiddle
from praxis import pytypes
from praxis.layers import attentions
from praxis.layers import embedding_softmax
from praxis.layers import linears
from praxis.layers import multi_query_attention
from praxis.layers import transformers

JTensor = pytypes.JTensor
WeightHParams = base_layer.WeightHParams
WeightInit = base_layer.WeightInit

# Regex for every LoRA variable's whole path and nothing else. Pax fullmatches it for
# bprop_variable_inclusion/exclusion; checkpoint load/ignore rules use re.match (a prefix match),
# hence the `$`.
LORA_VARIABLES_REGEX = r'.*/lora_[ab]$'


def _split(base_split: Sequence | None, dims: Sequence[int | None]) -> list | None:
  """Picks entries of a base split mapping; None in `dims` means a replicated (rank) dim."""
  if base_split is None:
    return None
  return [None if d is None else base_split[d] for d in dims]


class LoraLayer(base_layer.BaseLayer):
  """Fields and helpers shared by the LoRA layers below (a mixin).

  Each LoRA layer is `class LoraX(praxis_layer.X, LoraLayer)`, the praxis layer first, as in
  praxis' own `quantization.Linear(linears.Linear, QuantizationLayer, ...)`. The order matters:
  dataclass fields are collected along the reversed MRO, and this mixin, being a BaseLayer, carries
  BaseLayer's defaults of the `*_split_dims_mapping` fields; listed first it would replace the
  praxis layer's own ActivationSharding (Linear's, Embedding's, ...) with BaseLayer's.

  Attributes:
    lora_rank: Rank r of the low-rank delta.
    lora_alpha: The delta is scaled by lora_alpha / lora_rank (None: lora_alpha = lora_rank).
    lora_a_init: Init of lora_a; default Gaussian with std 1/sqrt(fan-in of the adapted weight)
      (std 1 for an embedding table: a lookup has fan-in 1).
  """

  lora_rank: int = 0
  lora_alpha: float | None = None
  lora_a_init: WeightInit | None = None

  @property
  def lora_scale(self) -> float:
    """lora_alpha / lora_rank."""
    alpha = self.lora_rank if self.lora_alpha is None else self.lora_alpha
    return float(alpha) / float(self.lora_rank)

  def _base_split(self, var_name: str) -> Sequence | None:
    """The tensor_split_dims_mapping praxis gave the base variable `var_name`."""
    return self._weight_hparams[var_name].tensor_split_dims_mapping

  def create_lora_variables(
      self,
      a_shape: Sequence[int],
      b_shape: Sequence[int],
      a_fan_in: int,
      base_split: Sequence | None,
      a_dims: Sequence[int | None],
      b_dims: Sequence[int | None],
  ) -> None:
    """Creates lora_a (Gaussian, std 1/sqrt(a_fan_in) by default) and lora_b (zeros).

    Args:
      a_shape: Shape of lora_a.
      b_shape: Shape of lora_b.
      a_fan_in: Fan-in of the adapted weight, for lora_a's default init.
      base_split: tensor_split_dims_mapping of the adapted weight.
      a_dims: For each dim of lora_a, the dim of the adapted weight whose sharding it takes, or
        None (the rank dim: replicated).
      b_dims: The same for lora_b.
    """
    if self.lora_rank <= 0:
      raise ValueError(f'{type(self).__name__}: lora_rank must be > 0, got {self.lora_rank}.')
    a_init = self.lora_a_init or WeightInit.Gaussian(float(a_fan_in) ** -0.5)
    for name, shape, init, dims in (('lora_a', a_shape, a_init, a_dims),
                                    ('lora_b', b_shape, WeightInit.Constant(0.0), b_dims)):
      self.create_variable(
          name,
          WeightHParams(
              shape=list(shape),
              init=init,
              mesh_shape=self.mesh_shape,
              tensor_split_dims_mapping=_split(base_split, dims),
          ),
      )


class LoraAttentionProjection(attentions.AttentionProjection, LoraLayer):
  """AttentionProjection (q/k/v or output projection) with a LoRA delta.

  Attributes:
    lora_output_projection: Whether to adapt the layer when is_output_projection=True (the
      attention `post` layer shares its template with q/k/v); if False it is the base layer.
  """

  lora_output_projection: bool = True

  @property
  def _lora_enabled(self) -> bool:
    return self.lora_output_projection or not self.is_output_projection

  def setup(self) -> None:
    super().setup()
    if not self._lora_enabled:
      return
    r = self.lora_rank
    if self.attention_combine_dims:
      hd_shape = [self.num_heads * self.dim_per_head]
    else:
      hd_shape = [self.num_heads, self.dim_per_head]
    n_hd = len(hd_shape)
    wt = self._base_split('w')
    if not self.is_output_projection:
      # w: [D] + hd_shape.
      self.create_lora_variables(
          a_shape=[self.input_dim, r],
          b_shape=[r] + hd_shape,
          a_fan_in=self.input_dim,
          base_split=wt,
          a_dims=[0, None],
          b_dims=[None] + list(range(1, 1 + n_hd)),
      )
    else:
      # w: [D] + hd_shape, or hd_shape + [D] with use_nhd_shape.
      if self.use_nhd_shape:
        hd_dims, d_dim = list(range(n_hd)), n_hd
      else:
        hd_dims, d_dim = list(range(1, 1 + n_hd)), 0
      self.create_lora_variables(
          a_shape=hd_shape + [r],
          b_shape=[r, self.input_dim],
          a_fan_in=self.num_heads * self.dim_per_head,
          base_split=wt,
          a_dims=hd_dims + [None],
          b_dims=[None, d_dim],
      )

  def lora_delta(self, inputs: JTensor) -> JTensor:
    """(lora_alpha / lora_rank) * inputs @ lora_a @ lora_b, shaped like the base output."""
    theta = self.theta
    x = self._cast_to_fprop_dtype(inputs)
    n, h = self.num_heads, self.dim_per_head
    if not self.is_output_projection:
      mid = jnp.einsum('...D,Dr->...r', x, theta.lora_a) * self.lora_scale
      b = jnp.reshape(theta.lora_b, [self.lora_rank, n, h])
      return jnp.einsum('...r,rNH->...NH', mid, b)
    a = jnp.reshape(theta.lora_a, [n, h, self.lora_rank])
    mid = jnp.einsum('...NH,NHr->...r', x, a) * self.lora_scale
    return jnp.einsum('...r,rD->...D', mid, theta.lora_b)

  def __call__(self, inputs: JTensor) -> JTensor:
    out = super().__call__(inputs)
    if not self._lora_enabled:
      return out
    return out + self.lora_delta(inputs).astype(out.dtype)


class LoraCombinedQKVProjection(attentions.CombinedQKVProjectionLayer, LoraLayer):
  """CombinedQKVProjectionLayer with one LoRA delta (of rank lora_rank) for each of q, k and v."""

  def setup(self) -> None:
    super().setup()
    r = self.lora_rank
    if self.attention_combine_dims:
      hd_shape = [self.num_heads * self.dim_per_head]
    else:
      hd_shape = [self.num_heads, self.dim_per_head]
    self.create_lora_variables(
        a_shape=[3, self.input_dim, r],
        b_shape=[3, r] + hd_shape,
        a_fan_in=self.input_dim,
        base_split=self._base_split('w'),  # [3, D] + hd_shape
        a_dims=[0, 1, None],
        b_dims=[0, None] + list(range(2, 2 + len(hd_shape))),
    )

  def lora_delta(self, inputs: JTensor) -> JTensor:
    """The q, k, v deltas stacked: [3, ..., num_heads, dim_per_head]."""
    theta = self.theta
    x = self._cast_to_fprop_dtype(inputs)
    mid = jnp.einsum('...D,KDr->...Kr', x, theta.lora_a) * self.lora_scale
    b = jnp.reshape(theta.lora_b, [3, self.lora_rank, self.num_heads, self.dim_per_head])
    delta = jnp.einsum('...Kr,KrNH->...KNH', mid, b)
    return jnp.moveaxis(delta, -3, 0)

  def __call__(self, inputs: JTensor) -> tuple[JTensor, JTensor, JTensor]:
    query_proj, key_proj, value_proj = super().__call__(inputs)
    delta = self.lora_delta(inputs).astype(query_proj.dtype)
    return query_proj + delta[0], key_proj + delta[1], value_proj + delta[2]


class LoraOneHeadedAttentionProjection(multi_query_attention.OneHeadedAttentionProjection,
                                       LoraLayer):
  """OneHeadedAttentionProjection (the shared key / value of multi-query attention, num_kv_heads
  = 1, e.g. Gemma-2B) with a LoRA delta: lora_a [D, r], lora_b [r, H]."""

  def setup(self) -> None:
    super().setup()
    self.create_lora_variables(
        a_shape=[self.input_dim, self.lora_rank],
        b_shape=[self.lora_rank, self.output_dim],
        a_fan_in=self.input_dim,
        base_split=self._base_split('w'),  # [input_dim, output_dim]
        a_dims=[0, None],
        b_dims=[None, 1],
    )

  def lora_delta(self, inputs: JTensor) -> JTensor:
    x = self._cast_to_fprop_dtype(inputs)
    mid = jnp.einsum('...D,Dr->...r', x, self.theta.lora_a) * self.lora_scale
    return jnp.einsum('...r,rH->...H', mid, self.theta.lora_b)

  def __call__(self, inputs: JTensor) -> JTensor:
    out = super().__call__(inputs)
    return out + self.lora_delta(inputs).astype(out.dtype)


class LoraLinear(linears.Linear, LoraLayer):
  """Linear layer (no bias) with a LoRA delta; the FFN's `fflayer_tpl.linear_tpl`."""

  def setup(self) -> None:
    super().setup()
    self.create_lora_variables(
        a_shape=[self.input_dims, self.lora_rank],
        b_shape=[self.lora_rank, self.output_dims],
        a_fan_in=self.input_dims,
        base_split=self._base_split('w'),  # [input_dims, output_dims]
        a_dims=[0, None],
        b_dims=[None, 1],
    )

  def lora_delta(self, inputs: JTensor) -> JTensor:
    theta = self.theta
    mid = jnp.einsum('...y,yr->...r', inputs, theta.lora_a) * self.lora_scale
    return jnp.einsum('...r,rz->...z', mid, theta.lora_b)

  def __call__(self, inputs: JTensor) -> JTensor:
    out = super().__call__(inputs)
    return out + self.lora_delta(inputs).astype(out.dtype)


def _add_embedding_lora(layer: LoraLayer, embs: JTensor, ids: JTensor) -> JTensor:
  """The base lookup `embs` plus rows `ids` of s * lora_a @ lora_b, scaled like the lookup.

  Shared by the two embedding layers; it uses their common fields (lookup_style, num_classes,
  scale_sqrt_depth, input_dims), which the mixin does not have.
  """
  theta = layer.theta
  if layer.lookup_style == 'index':
    rows = jnp.asarray(theta.lora_a)[ids]
  elif layer.lookup_style == 'matmul':
    one_hot_ids = jax.nn.one_hot(ids, layer.num_classes, dtype=layer.fprop_dtype)
    rows = jnp.einsum('...y,yr->...r', one_hot_ids, theta.lora_a)
  else:
    raise ValueError('Unknown lookup style.')
  delta = jnp.einsum('...r,rz->...z', rows * layer.lora_scale, theta.lora_b)
  if layer.scale_sqrt_depth:
    delta *= layer.input_dims**0.5
  return base_layer.maybe_shard(
      embs + delta.astype(embs.dtype),
      layer.activation_split_dims_mapping.emb_out_split_dims_mapping, layer.mesh_axis_names)


class LoraEmbedding(embedding_softmax.Embedding, LoraLayer):
  """Embedding (separate lookup table, `TransformerLm.separate_embedding_tpl`) with LoRA.

  The lookup returns rows of emb_var + (lora_alpha / lora_rank) * lora_a @ lora_b, where
  lora_a is [num_classes, r] and lora_b [r, input_dims].
  """

  def setup(self) -> None:
    super().setup()
    self.create_lora_variables(
        a_shape=[self.num_classes, self.lora_rank],
        b_shape=[self.lora_rank, self.input_dims],
        a_fan_in=1,
        base_split=self._base_split('emb_var'),  # [num_classes, input_dims]
        a_dims=[0, None],
        b_dims=[None, 1],
    )

  def emb_lookup(self, ids: JTensor) -> JTensor:
    return _add_embedding_lora(self, super().emb_lookup(ids), ids)


class LoraSharedEmbeddingSoftmax(embedding_softmax.SharedEmbeddingSoftmax, LoraLayer):
  """SharedEmbeddingSoftmax (TransformerLm's default softmax) with LoRA on its table.

  The table is logits_ffn/linear/w [input_dims, num_classes] (= E^T). The lookup returns rows of
  E + (lora_alpha / lora_rank) * lora_a @ lora_b (lora_a [num_classes, r], lora_b
  [r, input_dims]); the softmax uses the base table unless lora_in_softmax.

  Attributes:
    lora_in_softmax: Also apply the delta to the softmax weights (tied), not just the lookup.
  """

  lora_in_softmax: bool = False

  def setup(self) -> None:
    super().setup()
    if self.feed_forward_tpl is None:
      raise ValueError('LoraSharedEmbeddingSoftmax needs feed_forward_tpl (the shared table).')
    self.create_lora_variables(
        a_shape=[self.num_classes, self.lora_rank],
        b_shape=[self.lora_rank, self.input_dims],
        a_fan_in=1,
        # The table's sharding is the softmax's wt, for logits_ffn/linear/w [D, num_classes].
        base_split=self.weight_split_dims_mapping.wt,
        a_dims=[1, None],
        b_dims=[None, 0],
    )

  def emb_lookup(self, ids: JTensor) -> JTensor:
    return _add_embedding_lora(self, super().emb_lookup(ids), ids)

  def get_logits(self, inputs: JTensor, input_ids: JTensor | None = None) -> JTensor:
    """FullSoftmax.get_logits, plus the tied delta before the soft cap if lora_in_softmax."""
    if not self.lora_in_softmax:
      return super().get_logits(inputs, input_ids)
    del input_ids
    if self.scale_before_logits:
      inputs *= self.input_dims**-0.5
    logits = self.logits_ffn(inputs)
    theta = self.theta
    mid = jnp.einsum('...z,rz->...r', inputs, theta.lora_b) * self.lora_scale
    logits = logits + jnp.einsum('...r,yr->...y', mid, theta.lora_a).astype(logits.dtype)
    if self.soft_cap_logits:
      logits = self.soft_cap_logits * jnp.tanh(logits / self.soft_cap_logits)
    return logits


# ------------------------------------------------------------------------------------------------
# Config transform.

def _to_lora(tpl: pax_fiddle.Config, base_cls: type, lora_cls: type, **lora_fields) -> None:
  """Switches `tpl` (in place, keeping all its arguments) to `lora_cls` and sets lora_fields."""
  cls = fdl.get_callable(tpl)
  if not issubclass(cls, lora_cls):
    # Only the exact praxis class: a subclass of it (e.g. a quantized or MoE variant) would lose
    # its own behaviour if swapped for the LoRA class.
    if cls is not base_cls:
      raise ValueError(f'Cannot add LoRA to {cls.__module__}.{cls.__qualname__}: expected '
                       f'{base_cls.__module__}.{base_cls.__qualname__}.')
    fdl.update_callable(tpl, lora_cls)
  for k, v in lora_fields.items():
    setattr(tpl, k, v)


def _transformer_layer_tpls(stacked_tpl: pax_fiddle.Config) -> list[pax_fiddle.Config]:
  """The Transformer layer template(s) of a StackedTransformer (or subclass) config."""
  cls = fdl.get_callable(stacked_tpl)
  if issubclass(cls, transformers.PipelinedTransformer):
    return _transformer_layer_tpls(stacked_tpl.pipeline_stage)
  if issubclass(cls, transformers.StackedTransformerRepeated):
    return _transformer_layer_tpls(stacked_tpl.block)
  if not issubclass(cls, transformers.StackedTransformer):
    raise ValueError(f'Unsupported stacked transformer template {cls}.')
  tpls = stacked_tpl.transformer_layer_params_tpl
  if isinstance(tpls, Sequence):
    return list(tpls)
  return [tpls]


def add_lora(
    lm_tpl: pax_fiddle.Config,
    rank: int,
    alpha: float | None = None,
    attention: bool = True,
    ffn: bool = False,
    embeddings: bool = False,
    *,
    attention_output: bool = True,
    embeddings_in_softmax: bool = False,
    lora_a_init: WeightInit | None = None,
) -> pax_fiddle.Config:
  """Returns a copy of a TransformerLm config whose chosen layers carry LoRA deltas.

  Apply it after sharding annotations are set (e.g. to
  `TransformerLmSpmdAdafactor().task().model.lm_tpl`): praxis' sharding helpers recognise
  `embedding_softmax.Embedding` only by its exact class.

  Args:
    lm_tpl: pax_fiddle.Config of a praxis TransformerLm (or subclass). Its
      stacked_transformer_tpl may be a StackedTransformer or subclass (e.g. the MoDE stack),
      StackedTransformerRepeated or PipelinedTransformer.
    rank: LoRA rank r.
    alpha: LoRA alpha; the delta is scaled by alpha / rank. None: alpha = rank (scaling 1).
    attention: Adapt the attention projections: q, k, v (combined or not) and the output
      projection (see attention_output).
    ffn: Adapt the feed-forward linears (ffn_layer1, ffn_layer2 and a gate if any).
    embeddings: Adapt the token embedding table (the separate embedding if the LM has one,
      else the shared SharedEmbeddingSoftmax table; lookup only unless embeddings_in_softmax).
    attention_output: With attention, also adapt the attention output projection (`post`).
    embeddings_in_softmax: With embeddings and a shared table, apply the delta to the softmax
      weights too.
    lora_a_init: Optional init of every lora_a (default: Gaussian, std 1/sqrt(fan-in)).

  Returns:
    The modified copy; `lm_tpl` itself is unchanged.
  """
  if rank <= 0:
    raise ValueError(f'rank must be > 0, got {rank}.')
  lm_tpl = copy.deepcopy(lm_tpl)
  fields = dict(lora_rank=rank, lora_alpha=alpha)
  if lora_a_init is not None:
    fields['lora_a_init'] = lora_a_init

  for layer_tpl in _transformer_layer_tpls(lm_tpl.stacked_transformer_tpl):
    if attention:
      attention_tpls = [layer_tpl.tr_atten_tpl]
      if getattr(layer_tpl, 'cross_atten_tpl', None) is not None:
        attention_tpls.append(layer_tpl.cross_atten_tpl)
      for atten_tpl in attention_tpls:
        # q, k, v (and the output projection) use proj_tpl; MultiQueryDotProductAttention's
        # grouped k / v too (num_kv_heads heads), its one-headed k / v (num_kv_heads = 1)
        # headless_proj_tpl. Every template is switched whatever the attention builds from it:
        # an unused one builds nothing.
        _to_lora(atten_tpl.proj_tpl, attentions.AttentionProjection, LoraAttentionProjection,
                 lora_output_projection=attention_output, **fields)
        if issubclass(fdl.get_callable(atten_tpl),
                      multi_query_attention.MultiQueryDotProductAttention):
          _to_lora(atten_tpl.headless_proj_tpl, multi_query_attention.OneHeadedAttentionProjection,
                   LoraOneHeadedAttentionProjection, **fields)
        else:
          _to_lora(atten_tpl.combined_qkv_proj_tpl, attentions.CombinedQKVProjectionLayer,
                   LoraCombinedQKVProjection, **fields)
    if ffn:
      _to_lora(layer_tpl.tr_fflayer_tpl.fflayer_tpl.linear_tpl, linears.Linear, LoraLinear,
               **fields)

  if embeddings:
    if lm_tpl.separate_embedding_tpl is not None:
      _to_lora(lm_tpl.separate_embedding_tpl, embedding_softmax.Embedding, LoraEmbedding,
               **fields)
    else:
      _to_lora(lm_tpl.softmax_tpl, embedding_softmax.SharedEmbeddingSoftmax,
               LoraSharedEmbeddingSoftmax, lora_in_softmax=embeddings_in_softmax, **fields)
  return lm_tpl
