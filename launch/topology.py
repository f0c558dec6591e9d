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


# Files and folders a TPU worker does not need (the code ships as a tarball of the rest).
_NOT_SHIPPED = ('.git', '.venv', 'results', 'runs', 'data/build', '__pycache__')
# libtpu for jax[tpu] (pins.txt [tpu]) comes from this index, not from PyPI.
LIBTPU_INDEX = 'https://storage.googleapis.com/jax-releases/libtpu_releases.html'


def worker_commands(tpu: TpuSlice, launcher_args: str, *, tpu_name: str, zone: str,
                    project: str | None = None, workdir: str = '~/mode_pax',
                    source: str = '.') -> list[str]:
  """Commands, run in order from this machine, that start the launcher on every host at once.

  1. pack the code (this checkout, without the environment, results and data build);
  2. copy it to every worker (`gcloud compute tpus tpu-vm scp --worker=all`);
  3. unpack it and create the environment on every worker (`ssh --worker=all`): the CPU pins
     (`tools/setup_env.sh`) and jax[tpu] at the same jax version (`pip install -e .[tpu]`);
  4. start one launcher process per host, all together (`ssh --worker=all`): each finds its
     process index and the coordinator from the TPU environment (`jax.distributed.initialize()`)
     and checks that the plan's devices are where `--tpu` says (`check_placement`).
  The data build is not shipped: every worker reads it where MODE_PAX_DATA_DIR (or the default
  data/build) says, e.g. a shared mount.
  """
  where = f' --zone={zone}' + (f' --project={project}' if project else '')
  excludes = ' '.join(f"--exclude='{x}'" for x in _NOT_SHIPPED)
  setup = (f'mkdir -p {workdir} && tar xzf ~/mode_pax.tgz -C {workdir} && cd {workdir} && '
           f"bash tools/setup_env.sh && .venv/bin/pip install -e '.[tpu]' -f {LIBTPU_INDEX}")
  worker = (f' --worker --tpu={tpu.accelerator_type}' if tpu.num_hosts > 1
            else f' --tpu={tpu.accelerator_type}')
  run = f'cd {workdir} && .venv/bin/python -m launch.mpmd_launch {launcher_args}{worker}'
  return [
      f'tar czf /tmp/mode_pax.tgz -C {source} {excludes} .',
      f'gcloud compute tpus tpu-vm scp /tmp/mode_pax.tgz {tpu_name}:~/{where} --worker=all',
      f'gcloud compute tpus tpu-vm ssh {tpu_name}{where} --worker=all --command="{setup}"',
      f'gcloud compute tpus tpu-vm ssh {tpu_name}{where} --worker=all --command="{run}"',
  ]


def check_placement(plan: plan_lib.MeshPlan, devices, process_of, coords_of=None) -> list[str]:
  """What differs between where the plan puts its devices and where they are (empty: all fits).

  Args:
    plan: the mesh plan; device i of a mesh is `devices[i]` (jax.devices() order).
    devices: jax.devices() (objects with id, process_index and, on TPU, coords).
    process_of: device index -> the process that should own it.
    coords_of: device index -> the (x, y) chip it should be, or None not to check coordinates.
  """
  problems = []
  for i in plan.devices_used():
    if i >= len(devices):
      problems.append(f'device {i}: JAX sees only {len(devices)} devices')
      continue
    d = devices[i]
    if d.process_index != process_of(i):
      problems.append(f'device {i} (id {d.id}) belongs to process {d.process_index}, the plan '
                      f'puts it on process {process_of(i)}')
    coords = getattr(d, 'coords', None)
    if coords_of is not None and coords is not None and tuple(coords[:2]) != coords_of(i):
      problems.append(f'device {i} (id {d.id}) is chip {tuple(coords[:2])}, the plan expects '
                      f'chip {coords_of(i)}')
  return problems


def describe(plan: plan_lib.MeshPlan, tpu: TpuSlice) -> str:
  lines = [f'{tpu.accelerator_type}: {tpu.num_chips} chips in a {tpu.topology[0]}x'
           f'{tpu.topology[1]} torus, {tpu.num_hosts} host(s) x {tpu.chips_per_host} chips '
           f'(one launcher process per host = JAX process)', f'plan {plan.name} ({plan.spec()}):']
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
