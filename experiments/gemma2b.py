"""The paper's procedure on Cloud TPU from Gemma-2B, a real PLM with the paper's 18 layers.

Registered as `mode.gemma2b.X` for every recipe. The backbone is google/gemma-2b (Hugging Face,
gated: accept its licence, then download config.json, *.safetensors and tokenizer.model),
converted once into this experiment's layout and pointed at with MODE_PAX_BACKBONE_CKPT; the
data is built with Gemma's own SentencePiece tokenizer (README: "Starting from a pre-trained LM
on Cloud TPU"). Per-chip memory on the v4-32 mesh: `python -m mode_pax.param_count --memory
--exp=mode.gemma2b.CodeExpert`. Gemma's 256k-token vocabulary makes the float32 logits of the
paper's batch (128 x 1024 tokens) the largest buffer: about 17 GiB per chip over 16 chips,
too much for v5e's 16 GiB, so the mesh is a TPU v4-32 (16 chips of 32 GiB).
"""

from mode import params
from mode import recipes
from mode_pax import backbones


class Gemma2BScale(backbones.Gemma2B):
  """Gemma-2B (18 layers) in the paper's 3 blocks x 2 expert layers; TPU v4-32; batch 128 x 1024."""
  TOKENIZER = 'gemma2b'  # data in $MODE_PAX_DATA_DIR/gemma2b, built with --spm_model
  PRETRAIN_BACKBONE_HERE = False
  TPU_CHIP = 'v4'  # 32 GiB HBM per chip
  ICI_MESH_SHAPE = [1, 4, 4]  # v4-32: 16 chips, data parallel 4 x model parallel 4
  DCN_MESH_SHAPE = [1, 1, 1]
  SCAN_LAYERS = True  # each block's 6 layers scanned, rematerialised (SCAN_CHECKPOINT_POLICY)
  NUM_BLOCKS = 3
  EXPERT_LAYERS = 2


# The paper's sweeps (experiments/params.py).
globals().update(recipes.register_all(
    Gemma2BScale, __name__, params.SWEEPS, stage_overrides={'Backbone': dict(MAX_STEPS=0)}))
