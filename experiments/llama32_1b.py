"""The paper's procedure on Cloud TPU from Llama-3.2-1B (16 layers, RoPE with Llama 3 scaling).

Registered as `mode.llama32_1b.X` for every recipe. The backbone is meta-llama/Llama-3.2-1B
(Hugging Face, gated: accept its licence, then download config.json, model.safetensors and
tokenizer.json), converted once into this experiment's layout and pointed at with
MODE_PAX_BACKBONE_CKPT; the data is built with its own byte-level BPE tokenizer (README: "Starting
from a pre-trained LM on Cloud TPU"). Per-chip memory on the v5e-16 mesh: `python -m
mode_pax.param_count --memory --exp=mode.llama32_1b.CodeExpert`.
"""

from mode import params
from mode import recipes
from mode_pax import backbones


class Llama32_1BScale(backbones.Llama32_1B):  # pylint: disable=invalid-name
  """Llama-3.2-1B (16 layers) in 2 blocks x 3 expert layers (about the paper's 1/3 of the
  backbone's depth); TPU v5e-16; batch 128 x 1024."""
  TOKENIZER = 'llama32_1b'  # data in $MODE_PAX_DATA_DIR/llama32_1b, built with --tokenizer
  PRETRAIN_BACKBONE_HERE = False
  TPU_CHIP = 'v5e'  # 16 GiB HBM per chip
  ICI_MESH_SHAPE = [1, 4, 4]  # 16 chips: data parallel 4 x model parallel 4
  DCN_MESH_SHAPE = [1, 1, 1]
  SCAN_LAYERS = True  # each block's 8 layers scanned, rematerialised (SCAN_CHECKPOINT_POLICY)
  NUM_BLOCKS = 2
  EXPERT_LAYERS = 3


# The paper's sweeps (experiments/params.py).
globals().update(recipes.register_all(
    Llama32_1BScale, __name__, params.SWEEPS, stage_overrides={'Backbone': dict(MAX_STEPS=0)}))
