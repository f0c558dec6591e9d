"""A stated cost model of one MoDE training step under a mesh plan (projection for TPU v5e).

  step = sum over blocks of [ max over meshes (compute + collectives of the branches on that
         mesh) + activation moves at the merge ] + head (final norm, softmax; home mesh)
         + optimizer update (max over meshes)

Every constant is below with its source; `efficiency` (achieved fraction of peak FLOP/s) is the
one free parameter, fitted by `fit_efficiency` so that the 1-mesh (SPMD) step of the paper-scale
study equals the paper's 329 ms (Section 4.4).

- compute = FLOPs / (devices x peak x efficiency). A transformer layer's forward on T = batch x
  seq tokens is F = 2T(4 d H dh + 2 d ff) + 4 T seq H dh. Backward, as the runtime runs it
  (`runtime._plan_cotangents`, like jax.grad of the whole model): a frozen backbone layer costs
  F (its input's cotangent) except in block 0, which has no backward (nothing trainable
  upstream); an expert layer 2F (weights and, past block 0, input; block 0 saves only the input
  norm's backward: its norm scale needs the cotangent at the first projection's input). The
  softmax (tied embedding, frozen) costs 2 T d V forward and 2 T d V for the input cotangent.
- collectives on a mesh of n > 1 chips (model parallel, Megatron layout of praxis's
  set_sharding_params_v1): bandwidth: 2 all-reduces of a T x d activation per layer forward and
  per layer backward, 1 for the softmax's input cotangent; a ring all-reduce of S bytes takes
  2 (n-1)/n S / (links x per-link bandwidth). Latency: `latency` per collective, counted per
  layer pass from the compiled programs (`CollectiveCounts`), not one per all-reduce above.
- moves: x to every expert mesh and the experts' outputs back (forward), their cotangents the
  other way (backward; block 0 sends no input cotangent back), each replicated on the
  destination mesh, sources round-robin over the source mesh's devices as in `transfer.py`; a
  phase takes max over chips of the bytes a chip sends or receives / (2 links x per-link
  bandwidth) plus one latency per move.
- optimizer update: HBM bound, `update_bytes_per_param` per trainable parameter of a mesh over its
  chips' HBM bandwidth.
- SPMD (one mesh) runs every branch one after the other on all devices.

No overlap of communication with compute (XLA on TPU overlaps some: asynchronous collectives),
so a fitted efficiency absorbs what overlap hides.
"""

from __future__ import annotations

import collections
import dataclasses

from mode_pax.mpmd import plan as plan_lib

GB = 1e9


@dataclasses.dataclass(frozen=True)
class Hardware:
  """One chip kind and its slice (constants with their sources)."""
  name: str
  # Peak bf16 FLOP/s per chip. Google Cloud TPU v5e documentation (cloud.google.com/tpu/docs/v5e,
  # "Peak compute per chip (bf16): 197 TFLOPs").
  peak_flops: float
  # HBM bandwidth per chip (same page: "HBM2 capacity and bandwidth: 16 GB, 819 GBps"). Used for
  # the optimizer update only: a layer's matmuls at T = 16k tokens do ~T FLOP per byte of
  # weights, far above 197e12 / 819e9 = 240, so they are compute bound.
  hbm_bandwidth: float
  hbm_bytes: float
  # ICI bandwidth per link and direction. Same page: "Interchip Interconnect BW: 1600 Gbps" per
  # chip, given in the page's newer table as "Bidirectional ICI bandwidth (per chip): 400 GBps"
  # with "ICI ports per chip: 4": 400 GB/s / 2 directions / 4 ports = 50 GB/s per link and
  # direction.
  link_bandwidth: float
  links_per_chip: int
  # The paper's 8 chips (Section 4.4: "8 TPUv5e accelerators"): a v5litepod-8, a 2x4 slice. A
  # 2D mesh (the 2D torus's wrap-around links close only in the full 16x16 pod: an assumption):
  # every n in {4, 6, 8} of the plans is a 2 x n/2 sub-grid with a ring through it, so a ring
  # all-reduce drives 2 links per chip (one each way round); n = 2 has the one link between them.
  topology: tuple[int, int]
  # Fixed cost of one collective or move (launch, synchronisation, ICI hops). ASSUMPTION, no
  # published v5e figure: 10 us, the order of small-message all-reduce latencies reported for
  # TPU ICI; projection.md shows the projection at 5 and 20 us too.
  latency: float


TPU_V5E = Hardware('TPU v5e (v5litepod-8, 2x4)', peak_flops=197e12, hbm_bandwidth=819 * GB,
                   hbm_bytes=16 * GB, link_bandwidth=400 * GB / 2 / 4, links_per_chip=4,
                   topology=(2, 4), latency=10e-6)

# Paper Section 4.4: 1-mesh step 329 ms (Figure 4(a)); 5 mesh 204 ms.
PAPER_SPMD_MS = 329.0

# Bytes the optimizer reads and writes per trainable parameter: fp32 weight, gradient and two
# moments read, weight and moments written (Adam; 4 x 4 + 3 x 4). ASSUMPTION: Pax's Adafactor
# keeps factored second moments (less).
UPDATE_BYTES_PER_PARAM = 28


@dataclasses.dataclass(frozen=True)
class CollectiveCounts:
  """Collectives per layer pass in the compiled programs (model parallel, n > 1 chips).

  Defaults: counted in the compiled HLO (XLA's SPMD partitioner, as XLA:CPU compiles it) of
  `mode.sharding.ShardingMesh3Small`'s MPMD programs (backbone on 4 devices, experts on 2) by
  `benchmarks/mpmd_sharding.py --projection`, which counts them again and writes them to
  results/mpmd/projection.md. XLA on TPU may combine some (all-reduce combiner) and overlaps
  others; the count is an upper bound of what a TPU program launches.
  """
  forward: float = 22 / 3  # backbone_fwd[no grad]: 22 collectives for 3 layers
  backward_x: float = 31 / 3  # backbone_bwd[d:x]: frozen layer, input cotangent
  expert_forward: float = 16 / 2  # experts_fwd: 2 experts x 1 layer
  expert_backward: float = 29 / 2  # experts_bwd: weights and input
  expert_backward_w: float = 22 / 2  # experts_bwd[d:w]: block 0, weights only
  head: float = 7  # head (value_and_grad of the softmax loss)
  merge: float = 2  # merge_fwd + merge_bwd per block
  update_per_layer: float = 88 / 4  # update@mesh1: 4 expert layers (2 experts x 2 blocks)


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
  # ASSUMPTION: the paper does not give Figure 4's batch; the studies use 16 x 1024
  # (experiments/sharding.py).
  batch_size: int
  seq_len: int
  act_bytes: int = 2  # bf16 activations (FPROP_DTYPE)

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

  def layer_params(self) -> float:
    d, h = self.model_dims, self.num_heads * self.dims_per_head
    return 4 * d * h + 2 * d * self.hidden_dims


def _links(n: int) -> int:
  return 1 if n == 2 else 2


def _allreduce(size: float, n: int, hw: Hardware) -> float:
  return 0.0 if n <= 1 else 2 * (n - 1) / n * size / (_links(n) * hw.link_bandwidth)


def _phase_time(moves, hw: Hardware, act: float) -> float:
  """moves: (src chip, dst chip) pairs of one activation each, concurrent."""
  if not moves:
    return 0.0
  sent, received = collections.Counter(), collections.Counter()
  for src, dst in moves:
    sent[src] += act
    received[dst] += act
  busiest = max(list(sent.values()) + list(received.values()))
  return busiest / (2 * hw.link_bandwidth) + hw.latency * max(
      collections.Counter(s for s, _ in moves).most_common(1)[0][1],
      collections.Counter(d for _, d in moves).most_common(1)[0][1])


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


@dataclasses.dataclass
class _Cost:
  compute: float = 0.0  # seconds at peak (divide by efficiency)
  bandwidth: float = 0.0
  latency: float = 0.0

  def time(self, efficiency: float) -> float:
    return self.compute / efficiency + self.bandwidth + self.latency


def _parts(arch: Arch, plan: plan_lib.MeshPlan, hw: Hardware,
           counts: CollectiveCounts) -> dict:
  """Step parts with compute at peak: per block and mesh, moves, head and update."""
  f = arch.layer_flops()
  bb_layers = arch.num_layers // arch.num_blocks
  meshes = plan.meshes()
  blocks = []
  for b in range(arch.num_blocks):
    per_mesh = []
    for i, devices in enumerate(meshes):
      n, c = len(devices), _Cost()
      ar = _allreduce(arch.act, n, hw)
      mp = n > 1  # collectives only under model parallelism
      if i == 0:
        # Block 0's backbone has no backward (nothing trainable upstream).
        passes, bwd = (1, 0) if b == 0 else (2, 1)
        c.compute += bb_layers * passes * f / (n * hw.peak_flops)
        c.bandwidth += bb_layers * 2 * (1 + bwd) * ar
        c.latency += mp * hw.latency * bb_layers * (counts.forward + bwd * counts.backward_x)
        c.latency += mp * hw.latency * counts.merge
      for _ in plan.experts_on(i):
        c.compute += arch.expert_layers * 3 * f / (n * hw.peak_flops)
        c.bandwidth += arch.expert_layers * 4 * ar
        back = counts.expert_backward_w if b == 0 else counts.expert_backward
        c.latency += mp * hw.latency * arch.expert_layers * (counts.expert_forward + back)
      per_mesh.append(c)
    blocks.append(per_mesh)
  phases = _moves(plan)
  moves = []
  for b in range(arch.num_blocks):
    used = phases if b else phases[:3]  # block 0 sends no input cotangent home
    moves.append(sum(_phase_time(p, hw, arch.act) for p in used))
  n_home = len(meshes[0])
  head = _Cost(4 * arch.tokens * arch.model_dims * arch.vocab_size / (n_home * hw.peak_flops),
               _allreduce(arch.act, n_home, hw),
               (n_home > 1) * hw.latency * counts.head)
  update = 0.0
  for i, devices in enumerate(meshes):
    layers = len(plan.experts_on(i)) * arch.expert_layers * arch.num_blocks
    update = max(update, layers * arch.layer_params() * UPDATE_BYTES_PER_PARAM /
                 (len(devices) * hw.hbm_bandwidth) +
                 (len(devices) > 1) * hw.latency * counts.update_per_layer * layers)
  return dict(blocks=blocks, moves=moves, head=head, update=update)


def project(arch: Arch, plan: plan_lib.MeshPlan, efficiency: float, hw: Hardware = TPU_V5E,
            counts: CollectiveCounts = CollectiveCounts()) -> dict[str, float]:
  """Projected step time (seconds) and its parts for `arch` under `plan` on `hw`."""
  p = _parts(arch, plan, hw, counts)
  step = compute = bandwidth = latency = 0.0
  critical = collections.Counter()
  for per_mesh in p['blocks']:
    k = max(range(len(per_mesh)), key=lambda i: per_mesh[i].time(efficiency))
    critical[k] += 1
    step += per_mesh[k].time(efficiency)
    compute += per_mesh[k].compute / efficiency
    bandwidth += per_mesh[k].bandwidth
    latency += per_mesh[k].latency
  head = p['head'].time(efficiency)
  moves = sum(p['moves'])
  step += moves + head + p['update']
  return dict(step=step, compute=compute, allreduce=bandwidth, latency=latency, moves=moves,
              head=head, update=p['update'], critical_mesh=float(critical.most_common(1)[0][0]))


def fit_efficiency(arch: Arch, plan: plan_lib.MeshPlan, step_seconds: float,
                   hw: Hardware = TPU_V5E, counts: CollectiveCounts = CollectiveCounts()) -> float:
  """The efficiency (fraction of peak FLOP/s) at which `plan`'s projected step takes
  `step_seconds`: step = compute_at_peak / efficiency + the rest, solved exactly for a one-mesh
  plan (no max over meshes).

  Raises:
    ValueError: the plan has several meshes, or the communication alone exceeds step_seconds.
  """
  if not plan.is_spmd:
    raise ValueError('fit on the one-mesh (SPMD) step: its time is linear in 1/efficiency.')
  p = _parts(arch, plan, hw, counts)
  costs = [per_mesh[0] for per_mesh in p['blocks']] + [p['head']]
  compute = sum(c.compute for c in costs)
  rest = sum(c.bandwidth + c.latency for c in costs) + sum(p['moves']) + p['update']
  if rest >= step_seconds:
    raise ValueError(f'communication alone takes {1e3 * rest:.0f} ms > {1e3 * step_seconds} ms')
  return compute / (step_seconds - rest)
