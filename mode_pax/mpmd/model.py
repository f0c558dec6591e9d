"""The praxis MoDE language model cut into the pieces that the MPMD runtime compiles separately.

Every piece runs the praxis layers' own forward on the LanguageModel instance with only the
variables it needs (`model.apply(subtree, ..., method=...)`), so its variables are exactly those of
a Pax checkpoint's `mdl_vars`. Variables are handled as flat dicts keyed by their Pax path,
e.g. `params/lm/transformer/blocks_1/experts_0/x_layers_0/ff_layer/ffn_layer1/linear/w`.

Pieces (branch variables are given relative to the branch, so that all blocks share a program):
  inputs:   batch -> paddings, causal segment mask, segment positions (on every mesh)
  embed:    outside variables, batch -> block-0 input x (home mesh)
  backbone: backbone vars of one block, x -> f_bb(x)
  expert:   vars of one expert of one block, x -> f_j(x)
  merge:    gate vars of one block, x, paddings, f_bb(x), [f_j(x)] -> Eq. 1, gate summaries
  head:     outside variables, x, batch -> LanguageModel's total_loss and metrics
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax import numpy as jnp
from praxis import base_layer
from praxis import pax_fiddle
from praxis import py_utils
from praxis.layers import attentions
from praxis.layers import transformer_models

from mode_pax import lm_batch
from mode_pax.layers import mode
from mode_pax.trees import flatten, unflatten  # pylint: disable=g-importing-member
from mode_pax.mpmd import plan as plan_lib

NestedMap = py_utils.NestedMap
Flat = dict[str, Any]

TRANSFORMER = 'params/lm/transformer/'
# Where a block's summaries live in paxml's summary names (flatten_flax_summaries).
BLOCK_SUMMARY_PREFIX = 'lm/transformer/blocks_{}/'
BRANCH_RE = re.compile(r'params/lm/transformer/blocks_(\d+)/(backbone|gate|experts_(\d+))/(.*)')


def _praxis_private(layer, what: str, *args, **kwargs):
  """The one place that calls praxis's private LM helpers.

  The runtime runs a LanguageModel's forward piece by piece (embeddings on one mesh, blocks on
  others, the head at home), and praxis 1.4.0 exposes no public way to run those pieces: its own
  `LanguageModel.__call__` and `TransformerLm.__call__` build them with these helpers, so the
  pieces stay exactly praxis's.
    'predict_data': LanguageModel._prepare_predict_data(batch) -> inputs, paddings, labels.
    'input': TransformerLm._prepare_input(inputs, paddings, segment_pos=...) -> embeddings.
  """
  method = {'predict_data': '_prepare_predict_data', 'input': '_prepare_input'}[what]
  return getattr(layer, method)(*args, **kwargs)


def _summaries(updated_vars) -> Flat:
  """The summaries collection of `apply(..., mutable=[SUMMARIES])`, named as paxml's
  `summary_utils.flatten_flax_summaries` names them ('/'-joined; that module imports
  TensorFlow, which the runtime does not need)."""
  return flatten(updated_vars.get(base_layer.SUMMARIES, {}))


def branch_prefix(block: int, branch: str) -> str:
  """Path prefix of a branch ('backbone', 'gate' or 'experts_j') of block `block`."""
  return f'{TRANSFORMER}blocks_{block}/{branch}/'


def batch_to_map(batch) -> NestedMap:
  """A Pax LM batch (ids, labels, weights, paddings, segment_ids, segment_pos) as a NestedMap."""
  return NestedMap({k: batch[k] for k in batch})


class MoDEPieces:
  """The pieces of a praxis `LanguageModel` whose `lm_tpl` is a MoDELm.

  Attributes:
    model: The instantiated praxis LanguageModel (unbound).
    num_blocks, num_experts: B and N of the MoDE stack.
  """

  def __init__(self, model_tpl: pax_fiddle.Config, summary_verbosity: int = 3):
    lm_tpl = model_tpl.lm_tpl
    if pax_fiddle.get_callable(lm_tpl) is not mode.MoDELm:
      raise ValueError('The MPMD runtime needs a LanguageModel whose lm_tpl is a MoDELm '
                       '(a mode_pax.methods.MoDE experiment).')
    stack = lm_tpl.stacked_transformer_tpl
    if stack.num_domain_experts < 1:
      raise ValueError('The MPMD runtime places experts on meshes: NUM_DOMAIN_EXPERTS must be '
                       '>= 1.')
    if stack.input_dropout_prob or stack.dropout_prob or stack.residual_dropout_prob or (
        stack.atten_dropout_prob or stack.relu_dropout_prob):
      raise ValueError('The MPMD runtime runs without dropout (the paper-scale LM has none): set '
                       'DROPOUT_PROB = 0.')
    self.model_tpl = model_tpl
    # The task's summary_verbosity: which layer summaries the step keeps (as paxml's train step).
    self.summary_verbosity = summary_verbosity
    self.model = base_layer.instantiate(model_tpl)
    self.num_blocks = stack.num_blocks
    self.num_experts = stack.num_domain_experts
    self.fprop_dtype = jnp.dtype(model_tpl.fprop_dtype)
    self.model_dims = stack.model_dims
    self.model_type = lm_tpl.model_type
    self._hparams = None

  # ---- variables -----------------------------------------------------------------------------
  def _rngs(self):
    return {base_layer.RANDOM: jax.random.PRNGKey(0)}

  def var_hparams(self, batch) -> Flat:
    """Flat path -> praxis WeightHParams (shapes and sharding annotations)."""
    if self._hparams is None:
      self._hparams = flatten(self.model.abstract_init_with_metadata(batch))
    return self._hparams

  def init(self, batch, seed: int = 1234) -> Flat:
    """Freshly initialised variables (host NumPy), as the Pax trainer would draw them."""
    # Eagerly, on one device: compiling the whole init is slower than running it op by op.
    with jax.default_device(jax.local_devices()[0]):
      batch = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), batch)
      variables = self.model.init(
          {base_layer.PARAMS: jax.random.PRNGKey(seed), base_layer.RANDOM:
           jax.random.PRNGKey(seed + 1)}, batch)
    return {k: np.asarray(v) for k, v in flatten(variables).items()}

  def partition_specs(self, batch, mesh_size: int) -> Flat:
    """Flat path -> PartitionSpec on a [1, 1, mesh_size] mesh (axes replica, data, mdl)."""
    hparams = self.var_hparams(batch)
    if self.model_tpl.mesh_axis_names is None:
      return {k: jax.sharding.PartitionSpec() for k in hparams}
    specs = base_layer.var_partition_specs(
        unflatten(hparams), mesh_shape=[1, 1, mesh_size],
        device_axis_names=list(plan_lib.MESH_AXIS_NAMES))
    return flatten(specs)

  def sharded_dims(self, batch) -> dict[str, dict[str, int]]:
    """role ('home' / 'expert') -> {path: size of the dimension sharded over 'mdl'}."""
    out = {'home': {}, 'expert': {}}
    for path, hp in self.var_hparams(batch).items():
      mapping = hp.tensor_split_dims_mapping
      if mapping is None:
        continue
      for size, axes in zip(hp.shape, mapping):
        axes = axes if isinstance(axes, (tuple, list)) else (axes,)
        if 'mdl' in axes:
          m = BRANCH_RE.fullmatch(path)
          role = 'expert' if m and m.group(3) is not None else 'home'
          out[role][path] = size
    return out

  # ---- pieces (pure functions, called inside jit) --------------------------------------------
  def _summary_context(self):
    return base_layer.JaxContext.new_context(hparams=base_layer.JaxContext.HParams(
        do_eval=False, summary_verbosity=self.summary_verbosity))

  def _apply(self, flat: Flat, fn, *args):
    return self.model.apply(unflatten(flat), *args, method=fn, rngs=self._rngs())

  def inputs(self, batch):
    """(paddings, segment_mask, segment_pos) as TransformerLm.__call__ derives them."""
    batch = batch_to_map(batch)
    b, t = batch.ids.shape
    paddings = batch.paddings
    if self.model_tpl.lm_tpl.packed_input:
      segment_ids, segment_pos = batch.segment_ids, batch.segment_pos
    else:
      segment_ids = jnp.asarray(1 - paddings, jnp.int32)
      segment_pos = jnp.tile(jnp.arange(t, dtype=jnp.int32)[None, :], [b, 1])
    if self.model_type == transformer_models.LanguageModelType.BIDIRECTIONAL:
      mask = attentions.segment_mask(segment_ids, segment_ids, self.fprop_dtype)
    elif self.model_type == transformer_models.LanguageModelType.CAUSAL:
      mask = attentions.causal_segment_mask(segment_ids, self.fprop_dtype, None)
    else:
      raise ValueError(f'The MPMD runtime supports causal and bidirectional LMs, not '
                       f'{self.model_type}.')
    return paddings, mask, segment_pos

  def embed(self, outside: Flat, batch):
    """Embeddings (+ position embeddings): the input of block 0."""
    batch = batch_to_map(batch)
    _, _, segment_pos = self.inputs(batch)

    def fn(m, batch):
      data = _praxis_private(m, 'predict_data', batch)
      return _praxis_private(m.lm, 'input', data.inputs, data.paddings, segment_pos=segment_pos)
    return self._apply(outside, fn, batch)

  def backbone(self, rel: Flat, x, paddings, segment_mask, segment_pos):
    flat = {branch_prefix(0, 'backbone') + k: v for k, v in rel.items()}
    return self._apply(flat, lambda m, *a: m.lm.transformer.blocks[0].backbone(
        a[0], a[1], segment_mask=a[2], segment_pos=a[3]), x, paddings, segment_mask, segment_pos)

  def expert(self, rel: Flat, x, paddings, segment_mask, segment_pos):
    flat = {branch_prefix(0, 'experts_0') + k: v for k, v in rel.items()}
    return self._apply(flat, lambda m, *a: m.lm.transformer.blocks[0].experts[0](
        a[0], a[1], segment_mask=a[2], segment_pos=a[3]), x, paddings, segment_mask, segment_pos)

  def merge(self, gate_rel: Flat, x, paddings, backbone_out, expert_outs: Sequence[Any]):
    """Eq. 1 with the block's gate (`MoDEBlock.merge`): (sum_j g(x)_j * branch_j, summaries).

    summaries: what the block writes (the mean gate weight of each branch), keyed by their
    name inside the block, e.g. 'gate_weight_backbone_scalar'.
    """
    flat = {branch_prefix(0, 'gate') + k: v for k, v in gate_rel.items()}

    def fn(m, x, paddings, outs):
      return m.lm.transformer.blocks[0].merge(x, paddings, outs)
    with self._summary_context():
      mixed, updated = self.model.apply(
          unflatten(flat), x, paddings, [backbone_out] + list(expert_outs), method=fn,
          rngs=self._rngs(), mutable=[base_layer.SUMMARIES])
    prefix = BLOCK_SUMMARY_PREFIX.format(0)
    summaries = _summaries(updated)
    return mixed, {k[len(prefix):]: v for k, v in summaries.items()}

  def head(self, outside: Flat, x, batch):
    """Final norm, softmax and LanguageModel.compute_loss: (total_loss, metrics)."""
    batch = batch_to_map(batch)

    def fn(m, x, batch):
      data = _praxis_private(m, 'predict_data', batch)
      out = m.lm.final_ln(x) if m.lm.final_ln_tpl is not None else x
      predictions = m.lm.compute_loss(out, data.labels, input_ids=data.inputs)
      metrics, _ = m.compute_loss(predictions, batch)
      return metrics
    metrics = self._apply(outside, fn, x, batch)
    return metrics['total_loss'][0], {k: v[0] for k, v in metrics.items()}

  def full_loss(self, flat: Flat, batch):
    """The whole praxis LanguageModel forward (the SPMD reference): (total_loss, metrics)."""
    loss, (metrics, _) = self.full_loss_and_summaries(flat, batch)
    return loss, metrics

  def full_loss_and_summaries(self, flat: Flat, batch):
    """(total_loss, (metrics, summaries)): summaries are the layers' (e.g. the gates'), keyed as
    paxml's train step keys them (e.g. 'lm/transformer/blocks_0/gate_weight_backbone_scalar')."""
    with self._summary_context():
      (metrics, _), updated = self.model.apply(unflatten(flat), batch_to_map(batch),
                                               rngs=self._rngs(), mutable=[base_layer.SUMMARIES])
    summaries = _summaries(updated)
    return metrics['total_loss'][0], ({k: v[0] for k, v in metrics.items()}, summaries)


def input_specs(batch_size: int, seq_len: int) -> NestedMap:
  """ShapeDtypeStructs of a Pax LM batch."""
  return lm_batch.lm_batch_specs(batch_size, seq_len)


def synthetic_batch(batch_size: int, seq_len: int, vocab: int, seed: int = 0) -> NestedMap:
  """A packed LM batch of random tokens (two segments per row, a padded tail)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, size=(batch_size, seq_len), dtype=np.int32)
  half = seq_len // 2
  segment_ids = np.where(np.arange(seq_len) < half, 1, 2)[None].repeat(batch_size, 0)
  segment_pos = np.where(np.arange(seq_len) < half, np.arange(seq_len),
                         np.arange(seq_len) - half)[None].repeat(batch_size, 0)
  paddings = np.zeros((batch_size, seq_len), np.float32)
  paddings[-1, -max(1, seq_len // 8):] = 1.0
  segment_ids = np.where(paddings > 0, 0, segment_ids)
  segment_pos = np.where(paddings > 0, 0, segment_pos)
  return jax.tree_util.tree_map(np.asarray, lm_batch.lm_batch(
      ids, np.roll(ids, -1, axis=1), paddings, segment_ids, segment_pos))
