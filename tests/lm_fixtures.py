"""Small LM configs and helpers shared by the layer tests."""

import jax
import numpy as np
from jax import numpy as jnp
from paxml.tasks.lm import model_params
from praxis import base_layer
from praxis import py_utils

NestedMap = py_utils.NestedMap


class TinyLm(model_params.TransformerLmSpmdAdafactor):
  """paxml's SPMD LM experiment at a size that runs in a second on a CPU."""
  NUM_LAYERS = 4
  VOCAB_SIZE = 64
  MODEL_DIMS = 32
  HIDDEN_DIMS = 64
  DIMS_PER_HEAD = 8
  FPROP_DTYPE = jnp.float32
  ICI_MESH_SHAPE = None

  def datasets(self):
    return []


def tiny_lm_tpl(**overrides):
  """The praxis TransformerLm config of TinyLm."""
  exp = TinyLm()
  for k, v in overrides.items():
    setattr(exp, k, v)
  return exp.task().model.lm_tpl


def lm_inputs(batch=2, length=12, vocab=64, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, size=(batch, length), dtype=np.int32)
  paddings = np.zeros((batch, length), np.float32)
  paddings[-1, -3:] = 1.0
  labels = NestedMap(class_ids=np.roll(ids, -1, axis=1),
                     class_weights=1.0 - paddings)
  return jnp.asarray(ids), jnp.asarray(paddings), labels


def init_vars(layer, *args, seed=1, **kwargs):
  return layer.init(jax.random.PRNGKey(seed), *args, **kwargs)


def apply(layer, variables, *args, **kwargs):
  return layer.apply(variables, *args, rngs={base_layer.RANDOM: jax.random.PRNGKey(3)},
                     **kwargs)

