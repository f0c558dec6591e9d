"""MoDE layers: gate, block, stack and language model (paper Section 3.1).

A pre-trained LM's L transformer layers are cut into B blocks of L/B backbone layers. Each block
also holds N domain experts of k transformer layers each. Backbone and experts see the same block
input x, and a token-level gate g(x) = softmax(Linear(x)) weighs their outputs (Eq. 1 and 2):

  y = a_bb * f_bb(x) + sum_j a_j * f_j(x),   [a_bb, a_1, ..., a_N] = g(x).

Variable naming (under the LM's `transformer` child), stable when N changes:

  blocks_{i}/backbone/x_layers_{l}/...   backbone layer l of block i (frozen after pre-training)
  blocks_{i}/experts_{j}/x_layers_{l}/...  layer l of expert j in block i
  blocks_{i}/gate/...                      the gate of block i (absent when N = 0)

With `scan_layers` the layers of each backbone sub-stack and of each expert are one praxis
`StackedTransformerRepeated` (a `nn.scan` over one layer: XLA compiles the layer once, not once
per layer), and `x_layers_{l}/...` above becomes `repeat/sub/x_layers_0/...` with a leading
dimension indexing l. A MoDE LM with N = 0 is exactly its backbone: with scanned layers it is how
the backbone itself is stored (the "blocked" layout: `blocked_backbone`,
`naming.BLOCKED_BACKBONE_RULES`).

`mode_pax.naming` holds the regexes for each role and the checkpoint rules built on them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Sequence

import jax
from jax import numpy as jnp
from praxis import base_layer
from praxis import pax_fiddle
from praxis import pytypes
from praxis.layers import activations
from praxis.layers import linears
from praxis.layers import repeats
from praxis.layers import transformer_models
from praxis.layers import transformers

JTensor = pytypes.JTensor
LayerTpl = pax_fiddle.Config[base_layer.BaseLayer]
template_field = base_layer.template_field


def mix_branches(gate_weights: JTensor, branch_outputs: Sequence[JTensor]) -> JTensor:
  """Eq. 1: sum_j gate_weights[..., j] * branch_outputs[j]; branch 0 is the backbone."""
  if gate_weights.shape[-1] != len(branch_outputs):
    raise ValueError(
        f'{gate_weights.shape[-1]} gate weights for {len(branch_outputs)} branches.')
  weights = gate_weights.astype(branch_outputs[0].dtype)
  mixed = weights[..., 0:1] * branch_outputs[0]
  for j, out in enumerate(branch_outputs[1:], start=1):
    mixed += weights[..., j:j + 1] * out
  return mixed


def gate_backbone_logit_offset(initial_backbone_weight: float | None, num_experts: int) -> float:
  """The constant a MoDEGate adds to the backbone's logit: softmax([c, 0, ..., 0]) puts weight p
  on the backbone for c = log(p N / (1 - p)); 0 for the paper's gate (p None)."""
  p = initial_backbone_weight
  return 0.0 if p is None else math.log(p * num_experts / (1.0 - p))


class MoDEGate(base_layer.BaseLayer):
  """Token-level gate softmax(Linear(x)) of paper Eq. 2.

  Attributes:
    input_dims: Depth of the block input x.
    num_outputs: N + 1: the backbone's weight first, then one per expert.
    initial_backbone_weight: None (the paper's, which does not say how gates start): the
      Linear's default random initialisation. A value p in (0, 1): the gate starts at weight p
      on the backbone for every token and (1 - p) / N on each expert, with zero weights and the
      backbone's logit offset by log(p N / (1 - p)) (a constant; the trainable bias starts at
      0), so a new expert starts as a small perturbation of the pre-trained model.
  """
  input_dims: int = 0
  num_outputs: int = 0
  initial_backbone_weight: float | None = None

  class ActivationSharding(base_layer.BaseLayer.ActivationSharding):
    """Activation sharding of the gate.

    Attributes:
      out: Sharding of the [batch, length, num_outputs] weights.
    """
    out: base_layer.SplitDimsMapping = None

  def setup(self) -> None:
    if self.num_outputs < 2:
      raise ValueError(
          f'MoDEGate needs at least 2 outputs (backbone + 1 expert), got {self.num_outputs}.')
    p = self.initial_backbone_weight
    if p is not None and not 0.0 < p < 1.0:
      raise ValueError(f'MoDEGate: initial_backbone_weight={p} must be in (0, 1), or None.')
    logits = pax_fiddle.Config(
        linears.FeedForward,
        input_dims=self.input_dims,
        output_dims=self.num_outputs,
        activation_tpl=pax_fiddle.Config(activations.Identity))
    if p is not None:
      logits.weight_init = base_layer.WeightInit.Constant(0.0)
    self.create_child('logits', logits)

  def backbone_logit_offset(self) -> float:
    """The constant added to the backbone's logit (0 unless initial_backbone_weight is set)."""
    return gate_backbone_logit_offset(self.initial_backbone_weight, self.num_outputs - 1)

  def __call__(self, inputs: JTensor) -> JTensor:
    """Returns [..., num_outputs] weights that sum to 1 over the last axis."""
    # Softmax in float32: bf16 weights would not sum to 1 closely enough to mix residual streams.
    logits = self.logits(inputs).astype(jnp.float32)
    if self.initial_backbone_weight is not None:
      logits = logits.at[..., 0].add(self.backbone_logit_offset())
    weights = jax.nn.softmax(logits, axis=-1)
    return base_layer.maybe_shard(
        weights, self.activation_split_dims_mapping.out, self.mesh_axis_names)


class MoDEBlock(base_layer.BaseLayer):
  """One MoDE block: the backbone's layers and N domain experts mixed by a gate (Eq. 1).

  Attributes:
    model_dims: Model dimension.
    num_experts: N, the number of domain experts; 0 makes the block its backbone layers alone.
    backbone_tpl: StackedTransformer template for the block's backbone layers.
    expert_tpl: StackedTransformer template for the layers of one expert.
    gate_tpl: MoDEGate template.
    vectorize_experts: Compute the N experts (one template, so the same shapes) as one expert
      under `jax.vmap` over their variables, stacked as the block runs: XLA compiles a block's
      experts once, not N times (their matmuls become batched ones). The variables stay one
      set per expert (checkpoints unchanged) and the function is the same to float rounding;
      each expert draws its own dropout masks, but not the ones it draws unvectorized, and
      summaries written inside the experts' layers are not collected. Needs N >= 2 (N = 1
      computes as without it).
  """
  model_dims: int = 0
  num_experts: int = 0
  backbone_tpl: LayerTpl = template_field(transformers.StackedTransformer)
  expert_tpl: LayerTpl = template_field(transformers.StackedTransformer)
  gate_tpl: LayerTpl = template_field(MoDEGate)
  vectorize_experts: bool = False

  class ActivationSharding(base_layer.BaseLayer.ActivationSharding):
    """Activation sharding of the block.

    Attributes:
      out: Sharding of the [batch, length, model_dims] block output.
    """
    out: base_layer.SplitDimsMapping = None

  def setup(self) -> None:
    self.create_child('backbone', self.backbone_tpl)
    if self.num_experts:
      self.create_children('experts', [self.expert_tpl] * self.num_experts)
      self.create_child('gate', self.gate_tpl.clone().set(
          input_dims=self.model_dims, num_outputs=self.num_experts + 1))

  def branch_outputs(self, inputs: JTensor, paddings: JTensor,
                     segment_mask: JTensor | None = None,
                     segment_pos: JTensor | None = None) -> list[JTensor]:
    """f_bb(x) followed by f_j(x) for each expert j, all on the same input."""
    kwargs = dict(segment_mask=segment_mask, segment_pos=segment_pos)
    outputs = [self.backbone(inputs, paddings, **kwargs)]
    # Initialisation creates each expert's variables by calling it.
    if self.vectorize_experts and self.num_experts > 1 and not self.is_initializing():
      return outputs + self._vectorized_expert_outputs(inputs, paddings, **kwargs)
    return outputs + [e(inputs, paddings, **kwargs)
                      for e in (self.experts if self.num_experts else [])]

  def _vectorized_expert_outputs(self, inputs: JTensor, paddings: JTensor,
                                 **kwargs) -> list[JTensor]:
    """[f_1(x), ..., f_N(x)] from one expert applied under jax.vmap to the N experts' variables
    (flax's lifted `nn.vmap` would need them stored stacked: another checkpoint layout)."""
    variables = [{c: v for c, v in e.variables.items() if not self.is_mutable_collection(c)}
                 for e in self.experts]
    stacked = jax.tree_util.tree_map(lambda *vs: jnp.stack(vs), *variables)
    expert = self.experts[0].clone(parent=None)  # unbound: applied to each set of variables
    keys = (jax.random.split(self.next_prng_key(), self.num_experts)
            if self.has_rng(base_layer.RANDOM) else None)

    def apply(expert_variables, key):
      rngs = None if key is None else {base_layer.RANDOM: key}
      return expert.apply(expert_variables, inputs, paddings, rngs=rngs, **kwargs)

    return list(jax.vmap(apply)(stacked, keys))

  def __call__(self, inputs: JTensor, paddings: JTensor,
               segment_mask: JTensor | None = None,
               segment_pos: JTensor | None = None) -> JTensor:
    outputs = self.branch_outputs(inputs, paddings, segment_mask, segment_pos)
    if not self.num_experts:
      return outputs[0]
    return self.merge(inputs, paddings, outputs)

  def merge(self, inputs: JTensor, paddings: JTensor, outputs: Sequence[JTensor]) -> JTensor:
    """Eq. 1 on the branch outputs (f_bb(x), f_1(x), ...); writes the gate summaries (the
    mean gate weight of each branch over non-padded tokens). The MPMD runtime calls it alone."""
    weights = self.gate(inputs)
    non_pad = (1.0 - paddings.astype(jnp.float32))[..., None]
    mean_weights = jnp.sum(weights * non_pad, axis=(0, 1)) / jnp.maximum(jnp.sum(non_pad), 1.0)
    self.add_summary('gate_weight_backbone', mean_weights[0])
    for j in range(self.num_experts):
      self.add_summary(f'gate_weight_expert_{j}', mean_weights[j + 1])
    mixed = mix_branches(weights, outputs)
    return base_layer.maybe_shard(
        mixed, self.activation_split_dims_mapping.out, self.mesh_axis_names)


# Fields a StackedTransformer has beyond BaseLayer's: what the sub-stacks inherit from MoDEStack.
_STACK_FIELDS = tuple(
    sorted({f.name for f in dataclasses.fields(transformers.StackedTransformer)}
           - {f.name for f in dataclasses.fields(base_layer.BaseLayer)}))


class MoDEStack(transformers.StackedTransformer):
  """A StackedTransformer of num_layers backbone layers cut into MoDE blocks.

  It keeps every StackedTransformer field (layer shape, dropout, layer template, sharding), so it
  drops into `TransformerLm.stacked_transformer_tpl` and paxml's sharding helpers unchanged; the
  backbone sub-stacks and the experts are StackedTransformers built from those same fields.
  (`num_experts` is StackedTransformer's MoE feed-forward setting, unrelated to MoDE.)

  Attributes:
    num_blocks: B; num_layers / num_blocks backbone layers go in each block.
    num_domain_experts: N, experts per block.
    expert_layers: k, transformer layers of each expert in each block.
    block_tpl: MoDEBlock template.
    gate_tpl: MoDEGate template.
    scan_layers: Scan the layers of each backbone sub-stack and each expert
      (StackedTransformerRepeated); variable paths then hold `repeat/sub/x_layers_0`.
    scan_checkpoint_policy: What the scanned layers keep for the backward pass (praxis
      AutodiffCheckpointType). SAVE_EVERYTHING recomputes nothing, the fastest where memory
      allows (CPU); SAVE_NOTHING is praxis' default (rematerialises each layer).
  """
  num_blocks: int = 1
  num_domain_experts: int = 0
  expert_layers: int = 1
  block_tpl: LayerTpl = template_field(MoDEBlock)
  gate_tpl: LayerTpl = template_field(MoDEGate)
  scan_layers: bool = False
  scan_checkpoint_policy: repeats.AutodiffCheckpointType = (
      repeats.AutodiffCheckpointType.SAVE_EVERYTHING)

  def _sub_stack(self, num_layers: int) -> LayerTpl:
    fields = {name: copy.deepcopy(getattr(self, name)) for name in _STACK_FIELDS}
    fields.update(num_layers=1 if self.scan_layers else num_layers, input_dropout_prob=0.0)
    stack = pax_fiddle.Config(transformers.StackedTransformer, **fields)
    if not self.scan_layers:
      return stack
    return pax_fiddle.Config(transformers.StackedTransformerRepeated, block=stack,
                             x_times=num_layers, checkpoint_policy=self.scan_checkpoint_policy)

  def setup(self) -> None:
    if self.num_blocks < 1 or self.num_layers % self.num_blocks:
      divisors = [b for b in range(1, self.num_layers + 1) if self.num_layers % b == 0]
      raise ValueError(
          f'MoDEStack: num_blocks={self.num_blocks} does not divide the backbone\'s '
          f'num_layers={self.num_layers}; each block must hold the same number of backbone '
          f'layers. Choose num_blocks from {divisors}.')
    if self.num_domain_experts < 0 or self.expert_layers < 1:
      raise ValueError(
          f'MoDEStack: num_domain_experts={self.num_domain_experts} must be >= 0 and '
          f'expert_layers={self.expert_layers} >= 1.')
    if self.use_cross_attention or self.moe_layers or self.ngrammer_tpls:
      raise ValueError('MoDEStack supports neither cross attention, MoE layers nor ngrammers.')
    block = self.block_tpl.clone().set(
        model_dims=self.model_dims,
        num_experts=self.num_domain_experts,
        backbone_tpl=self._sub_stack(self.num_layers // self.num_blocks),
        expert_tpl=self._sub_stack(self.expert_layers),
        gate_tpl=self.gate_tpl.clone())
    self.create_children('blocks', [block] * self.num_blocks)
    if self.input_dropout_prob > 0.0:
      self.create_child('input_dropout', pax_fiddle.Config(
          transformers.stochastics.Dropout, keep_prob=1.0 - self.input_dropout_prob))

  def __call__(self, inputs: JTensor, paddings: JTensor,
               segment_mask: JTensor | None = None,
               cross_inputs: JTensor | None = None,
               cross_paddings: JTensor | None = None,
               cross_segment_mask: JTensor | None = None,
               segment_pos: JTensor | None = None) -> JTensor:
    if cross_inputs is not None:
      raise ValueError('MoDEStack has no cross attention.')
    x = inputs
    if self.input_dropout_prob > 0.0:
      x = self.input_dropout(x)
    for block in self.blocks:
      x = block(x, paddings, segment_mask=segment_mask, segment_pos=segment_pos)
    return x


class MoDELm(transformer_models.TransformerLm):
  """A TransformerLm whose transformer is a MoDEStack: embeddings, blocks, final norm, softmax.

  It is the `lm_tpl` of praxis's `LanguageModel`, so Pax's LM losses and metrics (including
  next-token accuracy) apply unchanged.
  """
  stacked_transformer_tpl: LayerTpl = template_field(MoDEStack)


def to_mode_lm(lm_tpl: LayerTpl, *, num_blocks: int, num_domain_experts: int,
               expert_layers: int, scan_layers: bool | None = None) -> LayerTpl:
  """Turns a TransformerLm config into a MoDELm config with the same backbone.

  Args:
    lm_tpl: A `TransformerLm` config whose stacked_transformer_tpl is a StackedTransformer (as
      paxml's TransformerLmSpmdAdafactor builds it), or a blocked backbone (a MoDELm with
      num_domain_experts=0, see `blocked_backbone`), whose blocks and scanning are kept. It is
      not modified.
    num_blocks: B; must divide the backbone's number of layers (a blocked backbone must have B
      blocks: its checkpoint's layout).
    num_domain_experts: N.
    expert_layers: k, transformer layers per expert per block.
    scan_layers: MoDEStack.scan_layers; None keeps a blocked backbone's (False for a
      StackedTransformer).

  Returns:
    A MoDELm config; backbone layers keep their shapes, experts copy the backbone layer's shape.
  """
  stack = lm_tpl.stacked_transformer_tpl
  stack_cls = pax_fiddle.get_callable(stack)
  if stack_cls is MoDEStack:
    if stack.num_domain_experts:
      raise ValueError(f'to_mode_lm: the LM already has {stack.num_domain_experts} experts per '
                       'block; start from the backbone.')
    if stack.num_blocks != num_blocks:
      raise ValueError(
          f'to_mode_lm: the backbone is stored in {stack.num_blocks} blocks (its checkpoint\'s '
          f'layout, scanned layers), so num_blocks={num_blocks} cannot load it; use '
          f'NUM_BLOCKS={stack.num_blocks} or convert the backbone for {num_blocks} blocks.')
    if scan_layers is not None and scan_layers != stack.scan_layers:
      raise ValueError(f'to_mode_lm: scan_layers={scan_layers}, but the blocked backbone has '
                       f'scan_layers={stack.scan_layers}.')
  elif stack_cls is not transformers.StackedTransformer:
    raise ValueError(
        'to_mode_lm needs a plain StackedTransformer (no repeated or pipelined layers) or a '
        f'blocked backbone, got {stack_cls.__name__}.')
  mode_lm = copy.deepcopy(lm_tpl)
  pax_fiddle.update_callable(mode_lm, MoDELm)
  pax_fiddle.update_callable(mode_lm.stacked_transformer_tpl, MoDEStack)
  mode_lm.stacked_transformer_tpl.set(
      num_blocks=num_blocks, num_domain_experts=num_domain_experts, expert_layers=expert_layers)
  if scan_layers is not None:
    mode_lm.stacked_transformer_tpl.scan_layers = scan_layers
  return mode_lm


def blocked_backbone(lm_tpl: LayerTpl, *, num_blocks: int, scan_layers: bool = True,
                     checkpoint_policy: repeats.AutodiffCheckpointType | None = None
                     ) -> LayerTpl:
  """The backbone LM cut into `num_blocks` blocks with no experts (computes the same function).

  With scan_layers each block's layers are scanned: the compile time of a deep backbone then
  does not grow with its depth. Its variables are in the layout MoDE runs load by name
  (`naming.BLOCKED_BACKBONE_RULES`).
  """
  lm = to_mode_lm(lm_tpl, num_blocks=num_blocks, num_domain_experts=0, expert_layers=1,
                  scan_layers=scan_layers)
  if checkpoint_policy is not None:
    lm.stacked_transformer_tpl.scan_checkpoint_policy = checkpoint_policy
  return lm
