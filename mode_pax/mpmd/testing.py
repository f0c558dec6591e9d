"""A tiny MoDE experiment for the MPMD tests and the local multi-process launcher test."""

from jax import numpy as jnp

from mode_pax import methods


class TinyMoDE(methods.MoDE):
  """d=32, 8 heads (model parallel over up to 8 devices), 2 blocks x (2 backbone layers,
  4 experts of 1 layer); no checkpoint to warm-start from."""
  NUM_LAYERS = 4
  MODEL_DIMS = 32
  HIDDEN_DIMS = 64
  NUM_HEADS = 8
  DIMS_PER_HEAD = 4
  VOCAB_SIZE = 64
  FPROP_DTYPE = jnp.float32
  NUM_BLOCKS = 2
  NUM_DOMAIN_EXPERTS = 4
  EXPERT_LAYERS = 1
  ICI_MESH_SHAPE = [1, 1, 8]
  TRAIN_BATCH_SIZE = 2
  SEQUENCE_LENGTH = 8
  MESH_PLAN = 'mesh5'
  NUM_DEVICES = 8

  def datasets(self):
    return []

  def warm_start_rules(self):
    return {}


class TinyMoDE2(TinyMoDE):
  """Two experts: the local multi-process plan (backbone on 2 processes, experts on a third)."""
  NUM_DOMAIN_EXPERTS = 2
  MESH_PLAN = '0,1|2|2'
  NUM_DEVICES = 3
