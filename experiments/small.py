"""The paper's experiments at a scale that trains on a 2-core CPU in minutes per stage.

Registered as `mode.small.X` (e.g. `--exp=mode.small.CodeExpert`); same recipes as paper scale,
with a 6-layer, 128-wide backbone pre-trained here on English (`mode.small.Backbone`).
"""

from jax import numpy as jnp

from mode import recipes
from mode import studies


class SmallScale:
  """A 6-layer backbone (divisible into the 2, 3 and 6 blocks of Table 3); 3 blocks x 1 layer."""
  NUM_LAYERS = 6
  MODEL_DIMS = 128
  HIDDEN_DIMS = 512
  DIMS_PER_HEAD = 32
  NUM_HEADS = 4
  VOCAB_SIZE = 8192  # the data build's default vocabulary
  FPROP_DTYPE = jnp.float32  # bfloat16 is slow on CPUs
  NUM_BLOCKS = 3
  EXPERT_LAYERS = 1
  ICI_MESH_SHAPE = [1, 1, 1]
  TRAIN_BATCH_SIZE = 8
  EVAL_BATCH_SIZE = 64
  # A CPU step costs ~1 s here: evaluate the first 4 x 64 rows (~32k tokens) of each split.
  EVAL_NUM_BATCHES = 4
  SEQUENCE_LENGTH = 128
  WARMUP_STEPS = 20
  MAX_STEPS = 150
  CHECKPOINT_EVERY_N_STEPS = 50
  EVAL_INTERVAL_STEPS = 1000  # evaluation runs after training (mode_pax.pipeline)
  SUMMARY_INTERVAL_STEPS = 10


# Sweeps thinned to what the studies train on 2 cores in about 1.5 hours (~25 new runs of ~4 min,
# two at a time). With 150 steps x 8 rows a run sees ~1,200 examples, so sizes above that differ
# little from the whole split; the all-examples point of Figures 3 and 5 is the unsuffixed recipe.
SWEEPS = studies.Sweeps(lora_ranks=(4, 16, 64), code_sizes=(100, 300, 1000),
                        mixture_sizes=(100,), expert_layer_counts=(1, 2, 3))
globals().update(recipes.register_all(
    SmallScale, __name__, SWEEPS,
    # Pre-training from scratch needs more steps than adapting.
    stage_overrides={'Backbone': dict(MAX_STEPS=500, WARMUP_STEPS=50)}))
