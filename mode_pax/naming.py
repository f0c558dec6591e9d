"""Regexes for the roles of MoDE variables, and checkpoint rules built on them.

Variable paths look like
`params/lm/transformer/blocks_1/experts_0/x_layers_0/ff_layer/ffn_layer1/linear/w`
(see `mode_pax.layers.mode` for the layout). Pax matches the role regexes against whole paths in
`bprop_variable_inclusion` / `bprop_variable_exclusion`, and load rules from the start of the
path (`re.match`) in `CheckpointLoadingRules`; every load rule here ends in `(.*)`, so both
readings agree.
"""

from __future__ import annotations

# The pre-trained LM's transformer layers inside the MoDE blocks.
BACKBONE_LAYERS = r'.*/transformer/blocks_\d+/backbone/.*'
# Everything of the pre-trained LM outside the transformer: embeddings, softmax, final norm.
BACKBONE_OUTSIDE_LAYERS = r'.*/lm/(?!transformer/).*'
# The gates of all blocks.
GATES = r'.*/transformer/blocks_\d+/gate/.*'


def experts(index: int | None = None) -> str:
  """Regex for the layers of expert `index` in every block (all experts when None)."""
  j = r'\d+' if index is None else str(int(index))
  return rf'.*/transformer/blocks_\d+/experts_{j}/.*'


# What trains in each stage of the paper's procedure (Section 3.2), for bprop_variable_inclusion.
TRAIN_EXPERTS_AND_GATES = (experts(), GATES)  # expert training and composition
TRAIN_GATES = (GATES,)  # composition with frozen experts


def backbone_from_transformer_lm(num_layers: int, num_blocks: int) -> list[tuple[str, str]]:
  """Load rules that fill a MoDE LM's backbone from a plain praxis TransformerLm checkpoint.

  Layer l of the TransformerLm becomes layer l % (L/B) of block l // (L/B); embeddings, softmax and
  final norm keep their names. Experts and gates match no rule and keep their initial values.
  """
  if num_layers % num_blocks:
    raise ValueError(f'num_blocks={num_blocks} does not divide num_layers={num_layers}.')
  per_block = num_layers // num_blocks
  rules = [(rf'params/lm/transformer/blocks_{l // per_block}/backbone/'
            rf'x_layers_{l % per_block}/(.*)', f'params/lm/transformer/x_layers_{l}/{{}}')
           for l in range(num_layers)]
  rules.append((r'params/lm/((?!transformer/).*)', 'params/lm/{}'))
  return rules


# Load rules that fill a MoDE LM's backbone from a blocked backbone's checkpoint (a MoDE LM with
# no experts and the same blocks, `mode.blocked_backbone`): the same names, experts and gates left
# at their initial values.
BLOCKED_BACKBONE_RULES = (
    (r'params/lm/transformer/blocks_(\d+)/backbone/(.*)',
     'params/lm/transformer/blocks_{}/backbone/{}'),
    (r'params/lm/((?!transformer/).*)', 'params/lm/{}'),
)


def expert_from_mode_lm(source_index: int, target_index: int) -> list[tuple[str, str]]:
  """Load rules that fill expert `target_index` from expert `source_index` of another MoDE run."""
  return [(rf'params/lm/transformer/blocks_(\d+)/experts_{int(target_index)}/(.*)',
           f'params/lm/transformer/blocks_{{}}/experts_{int(source_index)}/{{}}')]
