"""Mapping a mesh plan onto a Cloud TPU slice: chips, hosts, processes and per-worker commands.

JAX numbers a slice's devices host by host (process i owns devices
[i * chips_per_host, (i + 1) * chips_per_host)), and within a host in row-major order of the
host's chip block; `chip_coords` follows that convention. The multi-controller launcher runs one
process per host; a mesh whose devices sit on several hosts is run by all of them.
"""

from __future__ import annotations

import dataclasses

from mode_pax.mpmd import plan as plan_lib


@dataclasses.dataclass(frozen=True)
class TpuSlice:
  """A Cloud TPU accelerator type.

  Attributes:
    accelerator_type: e.g. 'v5litepod-8'.
    topology: chips along x and y.
    chips_per_host: chips attached to one TPU VM host.
  """
  accelerator_type: str
  topology: tuple[int, int]
  chips_per_host: int

  @property
  def num_chips(self) -> int:
    return self.topology[0] * self.topology[1]

  @property
  def num_hosts(self) -> int:
    return self.num_chips // self.chips_per_host

  @property
  def host_block(self) -> tuple[int, int]:
    """The (x, y) extent of one host's chips."""
    x = min(self.topology[0], 2 if self.chips_per_host <= 4 else 4)
    return x, self.chips_per_host // x

  def host_of(self, device: int) -> int:
    return device // self.chips_per_host

  def chip_coords(self, device: int) -> tuple[int, int]:
    """(x, y) of a device in the slice's 2D torus."""
    bx, by = self.host_block
    host, local = divmod(device, self.chips_per_host)
    hosts_x = self.topology[0] // bx
    hx, hy = host % hosts_x, host // hosts_x
    return hx * bx + local % bx, hy * by + local // bx


# v5e: single-host slices up to 8 chips; multi-host slices have 4 chips per host (2x2).
_V5E = {1: ((1, 1), 1), 4: ((2, 2), 4), 8: ((2, 4), 8), 16: ((4, 4), 4), 32: ((4, 8), 4),
        64: ((8, 8), 4), 128: ((8, 16), 4), 256: ((16, 16), 4)}
SLICES = {f'v5litepod-{n}': TpuSlice(f'v5litepod-{n}', topo, cph)
          for n, (topo, cph) in _V5E.items()}
# v4: 4 chips (8 cores) per host; the name counts TensorCores. 2D view of the 3D torus.
SLICES.update({'v4-8': TpuSlice('v4-8', (2, 2), 4), 'v4-16': TpuSlice('v4-16', (2, 4), 4),
               'v4-32': TpuSlice('v4-32', (4, 4), 4)})


def get_slice(accelerator_type: str) -> TpuSlice:
  if accelerator_type not in SLICES:
    raise ValueError(f'unknown TPU type {accelerator_type!r}; known: {sorted(SLICES)}.')
  return SLICES[accelerator_type]


def mapping(plan: plan_lib.MeshPlan, tpu: TpuSlice) -> list[dict]:
  """One entry per mesh: devices, chips (x, y), hosts (= processes), branches."""
  plan.validate(num_devices=tpu.num_chips)
  out = []
  for i, devices in enumerate(plan.meshes()):
    branches = (['backbone', 'embeddings', 'gates', 'softmax'] if i == 0 else []) + [
        f'expert {j}' for j in plan.experts_on(i)]
    coords = [tpu.chip_coords(d) for d in devices]
    xs, ys = {c[0] for c in coords}, {c[1] for c in coords}
    contiguous = len(coords) == (max(xs) - min(xs) + 1) * (max(ys) - min(ys) + 1)
    out.append(dict(mesh=i, devices=list(devices), chips=coords,
                    hosts=sorted({tpu.host_of(d) for d in devices}), branches=branches,
                    contiguous=contiguous))
  return out


def worker_commands(tpu: TpuSlice, launcher_args: str, *, tpu_name: str, zone: str,
                    project: str | None = None, workdir: str = '~/mode_pax') -> list[str]:
  """gcloud commands that start one launcher process per host of the slice."""
  proj = f' --project={project}' if project else ''
  cmds = []
  for w in range(tpu.num_hosts):
    inner = (f'cd {workdir} && .venv/bin/python -m launch.mpmd_launch {launcher_args}'
             + (f' --worker --process_id={w} --num_processes={tpu.num_hosts}'
                if tpu.num_hosts > 1 else ''))
    cmds.append(f'gcloud compute tpus tpu-vm ssh {tpu_name} --zone={zone}{proj} '
                f'--worker={w} --command="{inner}"')
  return cmds


def describe(plan: plan_lib.MeshPlan, tpu: TpuSlice) -> str:
  lines = [f'{tpu.accelerator_type}: {tpu.num_chips} chips in a {tpu.topology[0]}x'
           f'{tpu.topology[1]} torus, {tpu.num_hosts} host(s) x {tpu.chips_per_host} chips '
           f'(one launcher process per host)', f'plan {plan.name} ({plan.spec()}):']
  for m in mapping(plan, tpu):
    lines.append(
        f"  mesh {m['mesh']}: devices {m['devices']} chips {m['chips']} host(s) {m['hosts']}"
        f"{'' if m['contiguous'] else ' (not a contiguous block)'}: {', '.join(m['branches'])}")
  if tpu.num_hosts == 1:
    lines.append('  one host: a single process runs every mesh (single controller).')
  return '\n'.join(lines)
