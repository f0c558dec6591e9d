"""The paper's recipes at a size that trains in seconds, on the fixture corpus (test-only)."""

from jax import numpy as jnp

from mode import recipes


class TinyScale:
  NUM_LAYERS = 2
  MODEL_DIMS = 32
  HIDDEN_DIMS = 64
  DIMS_PER_HEAD = 16
  NUM_HEADS = 2
  VOCAB_SIZE = 640  # the fixture build's vocabulary fits
  FPROP_DTYPE = jnp.float32
  NUM_BLOCKS = 2
  EXPERT_LAYERS = 1
  ICI_MESH_SHAPE = [1, 1, 1]
  TRAIN_BATCH_SIZE = 4
  EVAL_BATCH_SIZE = 16
  SEQUENCE_LENGTH = 64
  LEARNING_RATE = 1e-2
  WARMUP_STEPS = 1
  MAX_STEPS = 4
  CHECKPOINT_EVERY_N_STEPS = 2
  EVAL_INTERVAL_STEPS = 100
  SUMMARY_INTERVAL_STEPS = 2
  LORA_RANK = 4


globals().update(recipes.register_all(
    TinyScale, __name__, lora_ranks=(2,), code_sizes=(10,), mixture_sizes=(20,),
    expert_layer_counts=(1,)))
