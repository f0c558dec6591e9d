"""The paper's experiments at a scale that trains on a 2-core CPU in minutes per stage.

Registered as `mode.small.X` (e.g. `--exp=mode.small.CodeExpert`); same recipes as paper scale,
with a 6-layer, 128-wide backbone pre-trained here on English (`mode.small.Backbone`).

Layers are scanned (SCAN_LAYERS): compiling a train step took 36 s scanned and 309 s unrolled
on this 2-core CPU (`python benchmarks/compile_time.py mode.small.Backbone`). Every run then
stores the backbone in its 3 blocks; Table 3's runs in 2 and 6 blocks start from the Backbone run
relaid out into theirs (`mode.small.BackboneB2`, `BackboneB6`: `mode_pax.convert --run`, which
the pipeline runs after the Backbone run).
"""

from jax import numpy as jnp
from praxis.layers import repeats

from mode import recipes
from mode import studies
from mode_pax.data import tasks


class SmallScale:
  """A 6-layer backbone (divisible into the 2, 3 and 6 blocks of Table 3); 3 blocks x 1 layer."""
  NUM_LAYERS = 6
  MODEL_DIMS = 128
  HIDDEN_DIMS = 512
  DIMS_PER_HEAD = 32
  NUM_HEADS = 4
  VOCAB_SIZE = 8192  # the data build's default vocabulary
  FPROP_DTYPE = jnp.float32  # bfloat16 is slow on CPUs
  SCAN_LAYERS = True  # each block's layers compile once (see above)
  SCAN_CHECKPOINT_POLICY = repeats.AutodiffCheckpointType.SAVE_EVERYTHING  # no recompute (CPU)
  # The output layer, computed for a CPU (same model and loss; mode_pax.experiment): about half
  # the train step went to [tokens, vocab] passes (one-hot lookup matmuls, softmax, a transposed
  # gradient copy). Looked up by index and chunked into 16 positions, the Backbone step took
  # 598 ms instead of 749 (median, one interleaved run on the loaded machine; 19% instead of
  # 15% of the matmul peak): `python benchmarks/train_step.py --out '' --configs
  # 'pax:Backbone,pax:Backbone[EMBEDDING_LOOKUP_STYLE=None,SOFTMAX_CHUNK_SIZE=None]'`.
  # With a chunk, Pax's predictions carry no logits/log_probs (per-token xent and argmax only).
  EMBEDDING_LOOKUP_STYLE = 'index'
  SOFTMAX_CHUNK_SIZE = 16
  # No per-variable norm summaries: they were a quarter of the train step's compile time (the
  # Backbone's 32.5 s with them, 24.7 s without; step 260 -> 242 ms; idle machine, one run each:
  # `python benchmarks/compile_time.py mode.small.Backbone '{"VARIABLE_NORM_SUMMARY": true}'`
  # and without the override); the same training (tests/test_softmax_computation.py).
  VARIABLE_NORM_SUMMARY = False
  # No clipped/applied gradient norm or total variable norm summaries (the raw gradient norm is
  # still written, mode_pax.learners.ConditionalSkipLearner): they were a third of a train step's
  # compile time (ComposeMathCode 41.6 s with them, 26.2 without, medians of 2 interleaved
  # rounds; 41.3 against 27.7 in another run), the same training bit for bit:
  # `python benchmarks/compile_time.py mode.small.ComposeMathCode '{}'
  # '{"LEARNER_NORM_SUMMARIES": false}' --rounds 2`.
  LEARNER_NORM_SUMMARIES = False
  # The optimizer update in XLA conditionals, one per shape of variable (mode_pax.learners): the
  # same training to float rounding (bit for bit here, except LoRA's), well under half the compile
  # time (ComposeMathCode 49.6 s against 154.2, the Backbone 18.5 against 41.8;
  # results/compile_time_small.md:
  # `python benchmarks/compile_time.py mode.small.ComposeMathCode '{}'
  # '{"CONDITIONAL_OPTIMIZER_UPDATE": false}'`).
  CONDITIONAL_OPTIMIZER_UPDATE = True
  # A composition's experts computed as one under jax.vmap (MoDEBlock.vectorize_experts; the
  # same variables, the same training to float rounding): ComposeMathCode compiled in 54.2 s
  # instead of 60.5 and its step took 511 ms instead of 591 (one run; 50.2 against 59.7 s and
  # 441-466 against 535-635 ms in 3 interleaved rounds; results/compile_time_small.md:
  # `python benchmarks/compile_time.py mode.small.ComposeMathCode '{"VECTORIZE_EXPERTS": false}'
  # '{}'`).
  VECTORIZE_EXPERTS = True
  NUM_BLOCKS = 3
  EXPERT_LAYERS = 1
  ICI_MESH_SHAPE = [1, 1, 1]
  TRAIN_BATCH_SIZE = 8
  EVAL_BATCH_SIZE = 64
  # Pax's own eval (--mode=eval) reads the first 4 x 64 rows; the tables score a fixed sample of
  # each split's examples holding half of its tokens (mode_pax.evaluate).
  EVAL_NUM_BATCHES = 4
  EVAL_TOKEN_FRACTION = 0.5
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
                        mixture_sizes=(100,), expert_layer_counts=(1, 2, 3),
                        gate_init_weights=(0.5, 0.9, 0.99),
                        backbone_learning_rates=(1e-3, 3e-3, 1e-2),
                        backbone_pretrain_data=(tasks.ENGLISH_PRETRAIN, tasks.ENGLISH),
                        backbone_steps=(2000,))
globals().update(recipes.register_all(
    SmallScale, __name__, SWEEPS,
    # The backbone's settings, each chosen on the validation splits (results/README.md): learning
    # rate 1e-2 (English 13.39% after 500 steps against 11.65% at 1e-3 and 13.23% at 3e-3:
    # `python -m mode_pax.studies --study=backbone_lr`), English-only pre-training data (14.64%
    # against 13.39% on English + SOTU at 500 steps: --study=backbone_data), and as many steps as
    # the main job's 45 minutes allow (about 19 of them here; --study=backbone_steps compares).
    # Checkpoints every 500 steps: each costs about 0.3 s, and a resumed run loses at most 2 min.
    stage_overrides={
        'Backbone': dict(MAX_STEPS=4000, WARMUP_STEPS=50, LEARNING_RATE=1e-2,
                         TRAIN_DATA=tasks.ENGLISH, CHECKPOINT_EVERY_N_STEPS=500),
        # Gates that start at the backbone: weight 0.5, chosen on the validation splits with the
        # earlier backbone (gate_init study); with this one 0.5 and 0.9 tie (10.47 and 10.52,
        # results/gate_init_small.md). Its expert runs are reused. The composition's gates start
        # from theirs (GATES_FROM_EXPERTS, the recipe's): chosen with the earlier backbone
        # (14.42 against 14.07 with zero weights); a tie with this one (12.91 and 12.90,
        # results/compose_gates_small.md).
        'ComposeMathCodeGateInit': dict(GATE_INITIAL_BACKBONE_WEIGHT=0.5,
                                        EXPERTS=('MathExpertGate50', 'CodeExpertGate50')),
        'CodeExpertGateInit': dict(GATE_INITIAL_BACKBONE_WEIGHT=0.5),
        'MathExpertGateInit': dict(GATE_INITIAL_BACKBONE_WEIGHT=0.5),
    },
    # Table 1's decisive rows with two more seeds (`make seeds`).
    seeds=(1, 2)))
