"""The paper's experiments at paper scale: a 1.58B-parameter, 18-layer PLM on 128 TPU v3 cores.

Registered as `mode.X` (e.g. `--exp=mode.CodeExpert`). The backbone is an existing pre-trained
checkpoint: point MODE_PAX_BACKBONE_CKPT at its folder of checkpoint_XXXXXXXX (a praxis
TransformerLm with the architecture of `mode.Backbone`), or pre-train `mode.Backbone` itself.
"""

from mode import recipes
from mode import studies
from mode_pax.data import build as data_build


class PaperScale:
  """Section 4.1: batch 128, learning rate 1e-3, 50k steps; MoDE with 3 blocks x 2 layers."""
  ICI_MESH_SHAPE = [1, 16, 8]  # 128 TPU v3 cores: data parallel x model parallel
  DCN_MESH_SHAPE = [1, 1, 1]
  PRETRAIN_BACKBONE_HERE = False  # the backbone is an existing PLM: MODE_PAX_BACKBONE_CKPT
  # LmExperiment's defaults are the paper's architecture and training settings.


SWEEPS = studies.Sweeps(
    lora_ranks=(8, 16, 32, 64, 128, 256, 512, 1024, 2048),
    code_sizes=data_build.DEFAULT_CODE_SIZES,
    mixture_sizes=data_build.DEFAULT_MIXTURE_SIZES,
    expert_layer_counts=(1, 2, 3, 4))
globals().update(recipes.register_all(PaperScale, __name__, SWEEPS))
