"""A stated cost model of one MoDE training step under a mesh plan (projection for TPU v5e).

  step = sum over blocks of [ max over meshes (compute + model-parallel all-reduces of the
         branches on that mesh) + activation moves at the merge ] + embeddings/softmax (home mesh)

- compute = FLOPs / (devices x peak FLOP/s). A transformer layer's forward on T = batch x seq
  tokens is F = 2T(4 d H dh + 2 d ff) + 4 T seq H dh. A frozen backbone layer costs 2F per step
  (forward and input gradients), a trainable expert layer 3F (plus weight gradients). The
  softmax (tied embedding, frozen) costs 4 T d V.
- model parallelism on n > 1 devices (Megatron layout, praxis's set_sharding_params_v1): 2
  all-reduces of T x d activations per layer forward and 2 backward, plus 2 for the
  embedding/softmax; a ring all-reduce of S bytes takes 2 (n-1)/n S / BW.
- moves: x to every expert mesh and the experts' outputs back (forward), their cotangents the
  other way (backward), each replicated on the destination mesh, sources round-robin over the
  source mesh's devices as in `transfer.py`; a phase takes max over chips of max(bytes sent,
  bytes received) / BW.
- SPMD (one mesh) runs every branch one after the other on all devices.

No overlap of communication with compute, no MFU below 1: projections are lower bounds.
"""

from __future__ import annotations

import collections
import dataclasses

from mode_pax.mpmd import plan as plan_lib


@dataclasses.dataclass(frozen=True)
class Hardware:
  name: str
  peak_flops: float  # per chip, FLOP/s
  ici_bandwidth: float  # per chip, bytes/s


# Google's TPU v5e spec: 197 TFLOP/s bf16 and 1,600 Gbit/s inter-chip interconnect per chip.
TPU_V5E = Hardware('TPU v5e', 197e12, 1600e9 / 8)


@dataclasses.dataclass(frozen=True)
class Arch:
  """Shapes of a MoDE model and batch (an experiment's class attributes)."""
  num_layers: int
  model_dims: int
  hidden_dims: int
  num_heads: int
  dims_per_head: int
  vocab_size: int
  num_blocks: int
  num_experts: int
  expert_layers: int
  batch_size: int
  seq_len: int
  act_bytes: int = 2  # bf16 activations

  @classmethod
  def of(cls, exp) -> 'Arch':
    import numpy as np  # pylint: disable=g-import-not-at-top
    return cls(exp.NUM_LAYERS, exp.MODEL_DIMS, exp.HIDDEN_DIMS, exp.NUM_HEADS,
               exp.DIMS_PER_HEAD, exp.VOCAB_SIZE, exp.NUM_BLOCKS, exp.NUM_DOMAIN_EXPERTS,
               exp.EXPERT_LAYERS, exp.TRAIN_BATCH_SIZE, exp.SEQUENCE_LENGTH,
               np.dtype(exp.FPROP_DTYPE).itemsize)

  @property
  def tokens(self) -> int:
    return self.batch_size * self.seq_len

  @property
  def act(self) -> float:
    """Bytes of one [batch, seq, d] activation."""
    return self.tokens * self.model_dims * self.act_bytes

  def layer_flops(self) -> float:
    t, d, h = self.tokens, self.model_dims, self.num_heads * self.dims_per_head
    return 2 * t * (4 * d * h + 2 * d * self.hidden_dims) + 4 * t * self.seq_len * h


def _allreduce(size: float, n: int, hw: Hardware) -> float:
  return 0.0 if n <= 1 else 2 * (n - 1) / n * size / hw.ici_bandwidth


def _phase_time(moves, hw: Hardware, act: float) -> float:
  """moves: (src chip, dst chip) pairs of one activation each, concurrent."""
  sent, received = collections.Counter(), collections.Counter()
  for src, dst in moves:
    sent[src] += act
    received[dst] += act
  return max([0.0] + list(sent.values()) + list(received.values())) / hw.ici_bandwidth


def _moves(plan: plan_lib.MeshPlan):
  """The four move phases of one block (forward scatter/gather, backward scatter/gather)."""
  meshes = plan.meshes()
  home = meshes[0]
  remote = [i for i in range(1, len(meshes)) if plan.experts_on(i)]

  def pairs(src, dst, copies):
    return [(src[k % len(src)], d) for _ in range(copies) for k, d in enumerate(dst)]
  fwd_out = [p for i in remote for p in pairs(home, meshes[i], 1)]
  fwd_back = [p for i in remote for p in pairs(meshes[i], home, len(plan.experts_on(i)))]
  bwd_out = [p for i in remote for p in pairs(home, meshes[i], len(plan.experts_on(i)))]
  bwd_back = [p for i in remote for p in pairs(meshes[i], home, 1)]
  return fwd_out, fwd_back, bwd_out, bwd_back


def project(arch: Arch, plan: plan_lib.MeshPlan, hw: Hardware = TPU_V5E) -> dict[str, float]:
  """Projected step time (seconds) and its parts for `arch` under `plan` on `hw`."""
  f = arch.layer_flops()
  backbone_layers = arch.num_layers // arch.num_blocks
  meshes = plan.meshes()

  def branch(n_layers, per_layer_flops, n):
    compute = n_layers * per_layer_flops / (n * hw.peak_flops)
    comm = n_layers * 4 * _allreduce(arch.act, n, hw)
    return compute, comm

  per_mesh = []
  for i, devices in enumerate(meshes):
    n = len(devices)
    compute = comm = 0.0
    if i == 0:
      c, m = branch(backbone_layers, 2 * f, n)
      compute, comm = compute + c, comm + m
    for _ in plan.experts_on(i):
      c, m = branch(arch.expert_layers, 3 * f, n)
      compute, comm = compute + c, comm + m
    per_mesh.append((compute, comm))
  block_critical = max(c + m for c, m in per_mesh)
  moves = sum(_phase_time(p, hw, arch.act) for p in _moves(plan))
  n_home = len(meshes[0])
  head = 4 * arch.tokens * arch.model_dims * arch.vocab_size / (n_home * hw.peak_flops) + (
      2 * _allreduce(arch.act, n_home, hw))
  step = arch.num_blocks * (block_critical + moves) + head
  critical = max(range(len(per_mesh)), key=lambda i: sum(per_mesh[i]))
  return dict(step=step, head=head, moves=arch.num_blocks * moves,
              compute=arch.num_blocks * per_mesh[critical][0],
              allreduce=arch.num_blocks * per_mesh[critical][1],
              critical_mesh=float(critical))
