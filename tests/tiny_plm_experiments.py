"""The recipes on a converted pre-trained LM, at a size that trains in seconds (test-only).

Like `mode.smollm2` (experiments/smollm2.py): a Llama-family backbone whose Backbone run is a
conversion (PRETRAINED; here the Hugging Face folder a test writes and names in PLM_ENV), layers
scanned in blocks, on the fixture corpus (its SentencePiece vocabulary fits VOCAB_SIZE).
"""

import os

from jax import numpy as jnp

from mode import recipes
from mode_pax import backbones

PLM_ENV = 'MODE_PAX_TEST_PLM'


class TinyLlamaScale(backbones.LlamaFamily):
  NUM_LAYERS = 4
  MODEL_DIMS = 32
  HIDDEN_DIMS = 64
  NUM_HEADS = 4
  NUM_KV_HEADS = 2
  DIMS_PER_HEAD = 8
  VOCAB_SIZE = 640  # the fixture build's vocabulary fits
  TIE_EMBEDDINGS = False
  PRETRAIN_BACKBONE_HERE = False
  SCAN_LAYERS = True
  NUM_BLOCKS = 2
  EXPERT_LAYERS = 1
  FPROP_DTYPE = jnp.float32
  ICI_MESH_SHAPE = [1, 1, 1]
  TRAIN_BATCH_SIZE = 4
  EVAL_BATCH_SIZE = 16
  EVAL_NUM_BATCHES = 1
  SEQUENCE_LENGTH = 64
  LEARNING_RATE = 1e-2
  WARMUP_STEPS = 1
  MAX_STEPS = 2
  CHECKPOINT_EVERY_N_STEPS = 2
  EVAL_INTERVAL_STEPS = 100
  SUMMARY_INTERVAL_STEPS = 1


# The Backbone run is the test's HF folder, converted (the pipeline reads it where it runs).
globals().update(recipes.register_all(
    TinyLlamaScale, __name__, None,
    stage_overrides={'Backbone': dict(MAX_STEPS=0, PRETRAINED=os.environ.get(PLM_ENV))}))
