"""Sharding-study experiments of paper Section 4.4 / Figure 4, run by the MPMD launcher.

  python -m launch.mpmd_launch --exp=mode.sharding.ShardingMesh5Small --local_processes=8
  python -m launch.mpmd_launch --exp=mode.sharding.ShardingMesh5 --tpu=v5litepod-8 --dry-run

Paper scale (`ShardingMesh{1,3,5}`, ...): the 1.58B, 18-layer backbone with 4 experts of 6 layers
in 2 blocks on 8 TPU v5e. CPU scale (`...Small`): a 6-layer, 48-wide backbone (24 heads, so every
mesh size of the studies, 1, 2, 4, 6 and 8, divides the model-parallel dimensions), synthetic
batches of 4 x 32 tokens; its 1/3/5-mesh experiments have 1 layer per expert block instead of 3
(XLA:CPU takes minutes to compile the one-mesh program of 30 layers). Extra class attributes: MESH_PLAN (preset name or spec, see
`mode_pax.mpmd.plan`) and NUM_DEVICES. The studies time training speed, so they start from a
random initialisation unless BACKBONE names a stage (or the launcher gets --init_from).
"""

from jax import numpy as jnp

from mode_pax import methods
from mode_pax import registry


class ShardingStudy(methods.MoDE):
  """Figure 4(a) at paper scale: 4 experts x 6 layers in 2 blocks; backbone frozen."""
  NUM_DOMAIN_EXPERTS = 4
  NUM_BLOCKS = 2
  EXPERT_LAYERS = 3
  ICI_MESH_SHAPE = [1, 1, 8]  # praxis's model-parallel annotations; each mesh uses [1, 1, n]
  DCN_MESH_SHAPE = None
  BACKBONE = None
  MESH_PLAN = 'mesh5'
  NUM_DEVICES = 8
  TPU_TYPE = 'v5litepod-8'
  TRAIN_BATCH_SIZE = 16  # the paper does not give Figure 4's batch; see benchmarks/mpmd_sharding.py

  def warm_start_rules(self):
    return {} if self.BACKBONE is None else super().warm_start_rules()


class SmallShardingScale:
  """CPU scale of the sharding studies (8 virtual devices)."""
  NUM_LAYERS = 6
  MODEL_DIMS = 48
  HIDDEN_DIMS = 192
  NUM_HEADS = 24
  DIMS_PER_HEAD = 2
  VOCAB_SIZE = 192
  FPROP_DTYPE = jnp.float32
  TRAIN_BATCH_SIZE = 4
  SEQUENCE_LENGTH = 32
  TPU_TYPE = None


def _variants():
  """Name -> overrides for Figure 4(a), (b) and (c)."""
  v = {'ShardingMesh1': dict(MESH_PLAN='mesh1'), 'ShardingMesh3': dict(MESH_PLAN='mesh3'),
       'ShardingMesh5': dict(MESH_PLAN='mesh5')}
  # (b) expert size: 2 experts in 2 blocks, k layers per expert block (4k layers added).
  for k in (1, 2, 3, 4, 5):
    for plan, tag in (('mesh1', 'Spmd'), ('expert_size', 'Mpmd')):
      v[f'ShardingExpertSize{4 * k}{tag}'] = dict(
          NUM_DOMAIN_EXPERTS=2, EXPERT_LAYERS=k, MESH_PLAN=plan)
  # (c) merges: 4 experts x 6 layers, backbone on 4 devices, one expert per device; B blocks.
  for blocks in (1, 2, 3, 6):
    for plan, tag in (('mesh1', 'Spmd'), ('merges', 'Mpmd')):
      v[f'ShardingMerges{blocks}{tag}'] = dict(
          NUM_BLOCKS=blocks, EXPERT_LAYERS=6 // blocks, MESH_PLAN=plan)
  return v


def _register():
  out = []
  for name, overrides in _variants().items():
    for suffix, bases in (('', (ShardingStudy,)), ('Small', (SmallShardingScale, ShardingStudy))):
      cls_name = name + suffix
      doc = f'Sharding study {name} ({"CPU" if suffix else "paper"} scale): {overrides}.'
      attrs = dict(overrides)
      if suffix and name in FIGURE_4A:
        # XLA:CPU compiles the one-mesh program of 6 + 24 layers for minutes: 1 layer per block.
        attrs['EXPERT_LAYERS'] = 1
      out.append(type(cls_name, bases, dict(attrs, __module__=__name__, __qualname__=cls_name,
                                            __doc__=doc)))
  return registry.register(out)


FIGURE_4A = ('ShardingMesh1', 'ShardingMesh3', 'ShardingMesh5')
globals().update(_register())


class ShardingTwoProcess(SmallShardingScale, ShardingStudy):
  """Measured MPMD on 2 CPU processes, one core each (`benchmarks/mpmd_two_process.py`).

  Backbone (home) on device 0, one expert on device 1, 2 blocks. Balanced per step, not per
  block: the frozen backbone runs 3 layers forward in both blocks and their input cotangent in
  block 1 only (9 layer passes); the trainable expert runs 2 layers forward and their weight
  gradients in both blocks and the input cotangent in block 1 (10). d = 256 and 4 x 128 tokens:
  the one-process step takes ~0.4 s on one core, so compute dominates per-program overheads.
  """
  NUM_LAYERS = 6
  MODEL_DIMS = 256
  HIDDEN_DIMS = 1024
  NUM_HEADS = 8
  DIMS_PER_HEAD = 32
  VOCAB_SIZE = 512
  TRAIN_BATCH_SIZE = 4
  SEQUENCE_LENGTH = 128
  NUM_DOMAIN_EXPERTS = 1
  NUM_BLOCKS = 2
  EXPERT_LAYERS = 2
  ICI_MESH_SHAPE = [1, 1, 2]
  MESH_PLAN = '0|1'
  NUM_DEVICES = 2


class ShardingTwoProcessTiny(ShardingTwoProcess):
  """The CI size of `ShardingTwoProcess` (tests/test_mpmd_two_process.py): compiles in seconds."""
  NUM_LAYERS = 4
  MODEL_DIMS = 32
  HIDDEN_DIMS = 64
  NUM_HEADS = 4
  DIMS_PER_HEAD = 8
  VOCAB_SIZE = 64
  TRAIN_BATCH_SIZE = 2
  SEQUENCE_LENGTH = 16
  EXPERT_LAYERS = 1


globals().update(registry.register([ShardingTwoProcess, ShardingTwoProcessTiny]))
