"""Variables as flat dicts keyed by their Pax path ('params/lm/softmax/logits_ffn/linear/w').

Pax names variables by '/'-joined paths in checkpoints, provenance files and learner regexes;
the one flatten/unflatten used across mode_pax.
"""

from __future__ import annotations

from typing import Any

from flax import traverse_util


def flatten(tree) -> dict[str, Any]:
  """Nested variables (dicts or NestedMaps) -> {'a/b/c': leaf}."""
  return traverse_util.flatten_dict(dict(tree), sep='/')


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  """{'a/b/c': leaf} -> nested dicts, as flax's `apply` takes them."""
  return traverse_util.unflatten_dict(flat, sep='/')
