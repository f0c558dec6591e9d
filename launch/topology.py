"""Mapping a mesh plan onto a Cloud TPU slice: chips, hosts, processes and per-worker commands.

JAX numbers a slice's devices host by host (process i owns devices
[i * chips_per_host, (i + 1) * chips_per_host)), and within a host in row-major order of the
host's chip block; `chip_coords` follows that convention. The multi-controller launcher runs one
process per host; a mesh whose devices sit on several hosts is run by all of them. A plan may
leave chips idle (e.g. an 8-chip study on a v5litepod-16): `describe` names them and their hosts,
which still start a launcher process (every process of the slice joins jax.distributed).
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


def unknown_type_message(accelerator_type: str) -> str:
  """What is wrong with an accelerator type that is not in SLICES, and the choices."""
  hint = (' (Cloud TPU names v5e slices v5litepod-N, N chips)'
          if accelerator_type.lower().startswith('v5e') else '')
  return (f'unknown TPU type {accelerator_type!r}{hint}; choose one of: '
          f'{", ".join(SLICES)}.')


def get_slice(accelerator_type: str) -> TpuSlice:
  if accelerator_type not in SLICES:
    raise ValueError(unknown_type_message(accelerator_type))
  return SLICES[accelerator_type]


def smallest_slice_for(num_devices: int, like: TpuSlice) -> TpuSlice | None:
  """The smallest known slice of `like`'s generation with at least `num_devices` chips."""
  family = like.accelerator_type.rsplit('-', 1)[0]
  fits = [s for name, s in SLICES.items()
          if name.rsplit('-', 1)[0] == family and s.num_chips >= num_devices]
  return min(fits, key=lambda s: s.num_chips, default=None)


def idle(plan: plan_lib.MeshPlan, tpu: TpuSlice) -> tuple[list[int], list[int]]:
  """(chips, hosts) of the slice that run no branch of the plan."""
  chips = plan.unused_devices(tpu.num_chips)
  hosts = [h for h in range(tpu.num_hosts)
           if all(tpu.host_of(d) != h for d in plan.devices_used())]
  return chips, hosts


def _ranges(values: list[int]) -> str:
  """[8, 9, 10, 12] -> '8-10, 12'."""
  out, start = [], None
  for i, v in enumerate(values):
    start = v if start is None else start
    if i + 1 == len(values) or values[i + 1] != v + 1:
      out.append(str(v) if start == v else f'{start}-{v}')
      start = None
  return ', '.join(out)


def idle_message(plan: plan_lib.MeshPlan, tpu: TpuSlice) -> str | None:
  """A note naming the chips and hosts that get no work under the plan, or None."""
  chips, hosts = idle(plan, tpu)
  if not chips:
    return None
  used = plan.devices_used()
  where = (f'host(s) {_ranges(hosts)} hold no mesh: their launcher processes only join '
           'jax.distributed' if hosts else
           f'on host(s) {_ranges(sorted({tpu.host_of(c) for c in chips}))}')
  fit = smallest_slice_for(max(used) + 1, tpu)
  # A smaller slice helps only when the plan fills it (devices 0..k-1 of a k-chip slice).
  smaller = (f'run on --tpu={fit.accelerator_type} ({fit.num_chips} chips), or '
             if fit and len(used) == fit.num_chips < tpu.num_chips else '')
  return (f'idle: chips {_ranges(chips)} get no work ({where}); plan {plan.name} uses '
          f'{len(used)} of the {tpu.num_chips} chips. To leave none idle, {smaller}give --plan '
          f'a spec for {tpu.num_chips} devices.')


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
  note = idle_message(plan, tpu)
  if note:
    lines.append(note)
  return '\n'.join(lines)
