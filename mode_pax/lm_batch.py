"""Pax language-model batches: the one place that builds them and their input specs.

A Pax LM batch is a NestedMap of [batch, length] arrays: `ids` (inputs), `labels` (next tokens),
`weights` (1 where a label counts), `paddings` (1 - weights), `segment_ids` (which packed example
a token belongs to, 0 for padding) and `segment_pos` (position within its example).
"""

from __future__ import annotations

import jax
from jax import numpy as jnp
import numpy as np
from praxis import base_input
from praxis import py_utils


def lm_batch(ids, labels, paddings=None, segment_ids=None,
             segment_pos=None) -> py_utils.NestedMap:
  """A batch from ids and labels; by default one example per row, no padding.

  Args:
    ids: [b, t] int input ids.
    labels: [b, t] int next-token ids.
    paddings: [b, t] 1.0 where a position is padding (default none).
    segment_ids: default 1 for every real token, 0 for padding (one example per row).
    segment_pos: default the position in the row (0 for padding).
  """
  ids = jnp.asarray(ids, jnp.int32)
  paddings = (jnp.zeros(ids.shape, jnp.float32) if paddings is None
              else jnp.asarray(paddings, jnp.float32))
  real = (paddings == 0).astype(jnp.int32)
  if segment_ids is None:
    segment_ids = real
  if segment_pos is None:
    segment_pos = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape) * real
  return py_utils.NestedMap(
      ids=ids, labels=jnp.asarray(labels, jnp.int32), weights=1.0 - paddings, paddings=paddings,
      segment_ids=jnp.asarray(segment_ids, jnp.int32),
      segment_pos=jnp.asarray(segment_pos, jnp.int32))


def lm_batch_specs(batch_size: int, seq_len: int) -> py_utils.NestedMap:
  """ShapeDtypeStructs of an LM batch (what the model is initialised from)."""
  zeros = np.zeros((batch_size, seq_len), np.int32)
  return jax.eval_shape(lambda: lm_batch(zeros, zeros))


class LmInputSpecs(base_input.BaseInputSpecsProvider):
  """Shapes of an LM batch, so that a model initialises without opening its data.

  Attributes:
    batch_size: Per-process batch size.
    seq_len: Sequence length.
  """
  batch_size: int = 1
  seq_len: int = 8

  def get_input_specs(self) -> py_utils.NestedMap:
    return lm_batch_specs(self.batch_size, self.seq_len)
