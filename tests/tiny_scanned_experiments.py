"""The recipes with scanned layers at a size that trains in seconds (test-only).

Laid out as `mode.small` (experiments/small.py): each block's layers are scanned, so every run
stores the backbone in its NUM_BLOCKS blocks, and Table 3's runs in other blocks start from the
Backbone run relaid out into theirs (`BackboneB2`, `BackboneB6`, registered by
`studies.with_backbone_relayouts`).
"""

from praxis.layers import repeats

from mode import recipes
from tests import tiny_experiments


class TinyScannedScale(tiny_experiments.TinyScale):
  NUM_LAYERS = 6  # Table 3's 2, 3 and 6 blocks divide it
  NUM_BLOCKS = 3
  SCAN_LAYERS = True
  SCAN_CHECKPOINT_POLICY = repeats.AutodiffCheckpointType.SAVE_EVERYTHING
  MAX_STEPS = 2


SWEEPS = tiny_experiments.SWEEPS
globals().update(recipes.register_all(TinyScannedScale, __name__, SWEEPS))
