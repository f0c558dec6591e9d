"""LoRA (Hu et al. 2021, arXiv 2106.09685) layers for praxis 1.4.0: the MoDE paper's baseline.

The MoDE paper (Table 1 and Appendix A, Table 2) compares against LoRA on the attention
matrices, optionally also on the FFN and on the token embeddings. praxis 1.4.0 has no LoRA layer,
so each layer here subclasses the praxis layer it adapts and adds a low-rank delta to its output:

  y = base(x) + (lora_alpha / lora_rank) * (x @ lora_a) @ lora_b

`lora_b` starts at zero, so a fresh LoRA model computes exactly what its base model computes;
`lora_a` starts Gaussian. The base weights keep their praxis names (`w`, `b`, `emb_var`, ...), so
a checkpoint of the base (non-LoRA) model warm-starts the LoRA model with the regular Pax rules.

Variable naming: every LoRA variable is named `lora_a` or `lora_b` and sits next to the weight it
adapts, e.g. (TransformerLm with the default StackedTransformer):

  params/lm/transformer/x_layers_{l}/self_attention/combined_qkv/lora_{a,b}   (combine_qkv=True)
  params/lm/transformer/x_layers_{l}/self_attention/{query,key,value}/lora_{a,b}
  params/lm/transformer/x_layers_{l}/self_attention/post/lora_{a,b}           (output projection)
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
from praxis.layers import transformers

JTensor = pytypes.JTensor
WeightHParams = base_layer.WeightHParams
WeightInit = base_layer.WeightInit

# Regex for every LoRA variable's whole path and nothing else. Pax fullmatches it for
# bprop_variable_inclusion/exclusion; checkpoint load/ignore rules use re.match (a prefix match),
# hence the `$`.
LORA_VARIABLES_REGEX = r'.*/lora_[ab]$'


def _lora_scaling(layer) -> float:
  """lora_alpha / lora_rank (lora_alpha None means lora_alpha = lora_rank)."""
  alpha = layer.lora_rank if layer.lora_alpha is None else layer.lora_alpha
  return float(alpha) / float(layer.lora_rank)


def _base_split(layer: base_layer.BaseLayer, var_name: str) -> Sequence | None:
  """The tensor_split_dims_mapping praxis gave the layer's base variable `var_name`."""
  # pylint: disable-next=protected-access
  return layer._weight_hparams[var_name].tensor_split_dims_mapping


def _create_lora_variables(
    layer: base_layer.BaseLayer,
    a_shape: Sequence[int],
    b_shape: Sequence[int],
    a_split: Sequence | None,
    b_split: Sequence | None,
    a_fan_in: int,
) -> None:
  """Creates lora_a (Gaussian, std 1/sqrt(a_fan_in) by default) and lora_b (zeros)."""
  if layer.lora_rank <= 0:
    raise ValueError(f'{type(layer).__name__}: lora_rank must be > 0, got {layer.lora_rank}.')
  a_init = layer.lora_a_init or WeightInit.Gaussian(float(a_fan_in) ** -0.5)
  layer.create_variable(
      'lora_a',
      WeightHParams(
          shape=list(a_shape),
          init=a_init,
          mesh_shape=layer.mesh_shape,
          tensor_split_dims_mapping=a_split,
      ),
  )
  layer.create_variable(
      'lora_b',
      WeightHParams(
          shape=list(b_shape),
          init=WeightInit.Constant(0.0),
          mesh_shape=layer.mesh_shape,
          tensor_split_dims_mapping=b_split,
      ),
  )


def _split(base_split: Sequence | None, dims: Sequence[int | None]) -> list | None:
  """Picks entries of a base split mapping; None in `dims` means a replicated (rank) dim."""
  if base_split is None:
    return None
  return [None if d is None else base_split[d] for d in dims]


class LoraAttentionProjection(attentions.AttentionProjection):
  """AttentionProjection (q/k/v or output projection) with a LoRA delta.

  Attributes:
    lora_rank: Rank r of the low-rank delta.
    lora_alpha: The delta is scaled by lora_alpha / lora_rank (None: lora_alpha = lora_rank).
    lora_a_init: Init of lora_a; default Gaussian with std 1/sqrt(fan-in of the projection).
    lora_output_projection: Whether to adapt the layer when is_output_projection=True (the
      attention `post` layer shares its template with q/k/v); if False it is the base layer.
  """

  lora_rank: int = 0
  lora_alpha: float | None = None
  lora_a_init: WeightInit | None = None
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
    wt = _base_split(self, 'w')
    if not self.is_output_projection:
      # w: [D] + hd_shape.
      _create_lora_variables(
          self,
          a_shape=[self.input_dim, r],
          b_shape=[r] + hd_shape,
          a_split=_split(wt, [0, None]),
          b_split=_split(wt, [None] + list(range(1, 1 + n_hd))),
          a_fan_in=self.input_dim,
      )
    else:
      # w: [D] + hd_shape, or hd_shape + [D] with use_nhd_shape.
      if self.use_nhd_shape:
        hd_dims, d_dim = list(range(n_hd)), n_hd
      else:
        hd_dims, d_dim = list(range(1, 1 + n_hd)), 0
      _create_lora_variables(
          self,
          a_shape=hd_shape + [r],
          b_shape=[r, self.input_dim],
          a_split=_split(wt, hd_dims + [None]),
          b_split=_split(wt, [None, d_dim]),
          a_fan_in=self.num_heads * self.dim_per_head,
      )

  def lora_delta(self, inputs: JTensor) -> JTensor:
    """(lora_alpha / lora_rank) * inputs @ lora_a @ lora_b, shaped like the base output."""
    theta = self.theta
    x = self._cast_to_fprop_dtype(inputs)
    n, h = self.num_heads, self.dim_per_head
    if not self.is_output_projection:
      mid = jnp.einsum('...D,Dr->...r', x, theta.lora_a) * _lora_scaling(self)
      b = jnp.reshape(theta.lora_b, [self.lora_rank, n, h])
      return jnp.einsum('...r,rNH->...NH', mid, b)
    a = jnp.reshape(theta.lora_a, [n, h, self.lora_rank])
    mid = jnp.einsum('...NH,NHr->...r', x, a) * _lora_scaling(self)
    return jnp.einsum('...r,rD->...D', mid, theta.lora_b)

  def __call__(self, inputs: JTensor) -> JTensor:
    out = super().__call__(inputs)
    if not self._lora_enabled:
      return out
    return out + self.lora_delta(inputs).astype(out.dtype)


class LoraCombinedQKVProjection(attentions.CombinedQKVProjectionLayer):
  """CombinedQKVProjectionLayer with one LoRA delta for each of q, k and v.

  Attributes:
    lora_rank: Rank r of each low-rank delta.
    lora_alpha: The deltas are scaled by lora_alpha / lora_rank (None: lora_alpha = lora_rank).
    lora_a_init: Init of lora_a; default Gaussian with std 1/sqrt(input_dim).
  """

  lora_rank: int = 0
  lora_alpha: float | None = None
  lora_a_init: WeightInit | None = None

  def setup(self) -> None:
    super().setup()
    r = self.lora_rank
    if self.attention_combine_dims:
      hd_shape = [self.num_heads * self.dim_per_head]
    else:
      hd_shape = [self.num_heads, self.dim_per_head]
    wt = _base_split(self, 'w')  # [3, D] + hd_shape
    _create_lora_variables(
        self,
        a_shape=[3, self.input_dim, r],
        b_shape=[3, r] + hd_shape,
        a_split=_split(wt, [0, 1, None]),
        b_split=_split(wt, [0, None] + list(range(2, 2 + len(hd_shape)))),
        a_fan_in=self.input_dim,
    )

  def lora_delta(self, inputs: JTensor) -> JTensor:
    """The q, k, v deltas stacked: [3, ..., num_heads, dim_per_head]."""
    theta = self.theta
    x = self._cast_to_fprop_dtype(inputs)
    mid = jnp.einsum('...D,KDr->...Kr', x, theta.lora_a) * _lora_scaling(self)
    b = jnp.reshape(theta.lora_b, [3, self.lora_rank, self.num_heads, self.dim_per_head])
    delta = jnp.einsum('...Kr,KrNH->...KNH', mid, b)
    return jnp.moveaxis(delta, -3, 0)

  def __call__(self, inputs: JTensor) -> tuple[JTensor, JTensor, JTensor]:
    query_proj, key_proj, value_proj = super().__call__(inputs)
    delta = self.lora_delta(inputs).astype(query_proj.dtype)
    return query_proj + delta[0], key_proj + delta[1], value_proj + delta[2]


class LoraLinear(linears.Linear):
  """Linear layer (no bias) with a LoRA delta; the FFN's `fflayer_tpl.linear_tpl`.

  Attributes:
    lora_rank: Rank r of the low-rank delta.
    lora_alpha: The delta is scaled by lora_alpha / lora_rank (None: lora_alpha = lora_rank).
    lora_a_init: Init of lora_a; default Gaussian with std 1/sqrt(input_dims).
  """

  lora_rank: int = 0
  lora_alpha: float | None = None
  lora_a_init: WeightInit | None = None

  def setup(self) -> None:
    super().setup()
    wt = _base_split(self, 'w')  # [input_dims, output_dims]
    _create_lora_variables(
        self,
        a_shape=[self.input_dims, self.lora_rank],
        b_shape=[self.lora_rank, self.output_dims],
        a_split=_split(wt, [0, None]),
        b_split=_split(wt, [None, 1]),
        a_fan_in=self.input_dims,
    )

  def lora_delta(self, inputs: JTensor) -> JTensor:
    theta = self.theta
    mid = jnp.einsum('...y,yr->...r', inputs, theta.lora_a) * _lora_scaling(self)
    return jnp.einsum('...r,rz->...z', mid, theta.lora_b)

  def __call__(self, inputs: JTensor) -> JTensor:
    out = super().__call__(inputs)
    return out + self.lora_delta(inputs).astype(out.dtype)


def _embedding_lora_delta(layer, ids: JTensor) -> JTensor:
  """Rows `ids` of s * lora_a @ lora_b, scaled like the base lookup; [..., input_dims]."""
  theta = layer.theta
  if layer.lookup_style == 'index':
    rows = jnp.asarray(theta.lora_a)[ids]
  elif layer.lookup_style == 'matmul':
    one_hot_ids = jax.nn.one_hot(ids, layer.num_classes, dtype=layer.fprop_dtype)
    rows = jnp.einsum('...y,yr->...r', one_hot_ids, theta.lora_a)
  else:
    raise ValueError('Unknown lookup style.')
  delta = jnp.einsum('...r,rz->...z', rows * _lora_scaling(layer), theta.lora_b)
  if layer.scale_sqrt_depth:
    delta *= layer.input_dims**0.5
  return delta


class LoraEmbedding(embedding_softmax.Embedding):
  """Embedding (separate lookup table, `TransformerLm.separate_embedding_tpl`) with LoRA.

  The lookup returns rows of emb_var + (lora_alpha / lora_rank) * lora_a @ lora_b.

  Attributes:
    lora_rank: Rank r of the low-rank delta.
    lora_alpha: The delta is scaled by lora_alpha / lora_rank (None: lora_alpha = lora_rank).
    lora_a_init: Init of lora_a [num_classes, r]; default Gaussian with std 1 (a lookup has
      fan-in 1).
  """

  lora_rank: int = 0
  lora_alpha: float | None = None
  lora_a_init: WeightInit | None = None

  def setup(self) -> None:
    super().setup()
    wt = _base_split(self, 'emb_var')  # [num_classes, input_dims]
    _create_lora_variables(
        self,
        a_shape=[self.num_classes, self.lora_rank],
        b_shape=[self.lora_rank, self.input_dims],
        a_split=_split(wt, [0, None]),
        b_split=_split(wt, [None, 1]),
        a_fan_in=1,
    )

  def emb_lookup(self, ids: JTensor) -> JTensor:
    embs = super().emb_lookup(ids)
    embs = embs + _embedding_lora_delta(self, ids).astype(embs.dtype)
    return base_layer.maybe_shard(
        embs, self.activation_split_dims_mapping.emb_out_split_dims_mapping,
        self.mesh_axis_names)


class LoraSharedEmbeddingSoftmax(embedding_softmax.SharedEmbeddingSoftmax):
  """SharedEmbeddingSoftmax (TransformerLm's default softmax) with LoRA on its table.

  The table is logits_ffn/linear/w [input_dims, num_classes] (= E^T). The lookup returns rows of
  E + (lora_alpha / lora_rank) * lora_a @ lora_b; the softmax uses the base table unless
  lora_in_softmax.

  Attributes:
    lora_rank: Rank r of the low-rank delta.
    lora_alpha: The delta is scaled by lora_alpha / lora_rank (None: lora_alpha = lora_rank).
    lora_a_init: Init of lora_a [num_classes, r]; default Gaussian with std 1.
    lora_in_softmax: Also apply the delta to the softmax weights (tied), not just the lookup.
  """

  lora_rank: int = 0
  lora_alpha: float | None = None
  lora_a_init: WeightInit | None = None
  lora_in_softmax: bool = False

  def setup(self) -> None:
    super().setup()
    if self.feed_forward_tpl is None:
      raise ValueError('LoraSharedEmbeddingSoftmax needs feed_forward_tpl (the shared table).')
    # The table's sharding is the softmax's wt, for logits_ffn/linear/w [input_dims, num_classes].
    wt = self.weight_split_dims_mapping.wt
    _create_lora_variables(
        self,
        a_shape=[self.num_classes, self.lora_rank],
        b_shape=[self.lora_rank, self.input_dims],
        a_split=_split(wt, [1, None]),
        b_split=_split(wt, [None, 0]),
        a_fan_in=1,
    )

  def emb_lookup(self, ids: JTensor) -> JTensor:
    embs = super().emb_lookup(ids)
    embs = embs + _embedding_lora_delta(self, ids).astype(embs.dtype)
    return base_layer.maybe_shard(
        embs, self.activation_split_dims_mapping.emb_out_split_dims_mapping,
        self.mesh_axis_names)

  def get_logits(self, inputs: JTensor, input_ids: JTensor | None = None) -> JTensor:
    """FullSoftmax.get_logits, plus the tied delta before the soft cap if lora_in_softmax."""
    if not self.lora_in_softmax:
      return super().get_logits(inputs, input_ids)
    del input_ids
    if self.scale_before_logits:
      inputs *= self.input_dims**-0.5
    logits = self.logits_ffn(inputs)
    theta = self.theta
    mid = jnp.einsum('...z,rz->...r', inputs, theta.lora_b) * _lora_scaling(self)
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
        # Both templates are switched whatever combine_qkv says: the unused one builds nothing.
        _to_lora(atten_tpl.proj_tpl, attentions.AttentionProjection, LoraAttentionProjection,
                 lora_output_projection=attention_output, **fields)
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
