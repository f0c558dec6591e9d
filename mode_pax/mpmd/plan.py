"""Mesh plans: which devices run the backbone and each expert (paper Sections 3.3 and 4.4).

A plan assigns the backbone and every domain expert to a set of devices. Branches on the same set
of devices share one mesh; a mesh is model parallel over its devices (praxis's
`set_sharding_params_v1` annotations with mesh shape [1, 1, n], axes replica/data/mdl). The
backbone's mesh is the home mesh: it also runs the embeddings, the gates and merges (Eq. 1) and
the softmax, so activations cross meshes only at the merges.

Presets for 8 devices follow the paper: `mesh1` (SPMD model parallelism over all 8), `mesh3`
(backbone on 4, two experts per 2-device mesh), `mesh5` (backbone on 4, one expert per device),
`expert_size` (backbone on 6, each of 2 experts on 1) and `merges` (mesh5's placement; the study
varies the number of blocks). `validate` raises `PlanError` before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

MESH_AXIS_NAMES = ('replica', 'data', 'mdl')


class PlanError(ValueError):
  """A mesh plan that cannot run: the message says what is wrong and how to fix it."""


def _fmt(devices: Sequence[int]) -> str:
  return '[' + ','.join(str(d) for d in devices) + ']'


@dataclasses.dataclass(frozen=True)
class MeshPlan:
  """Placement of a MoDE model's branches on devices.

  Attributes:
    name: Short name (a preset's name, or 'custom').
    backbone: Device indices (into `jax.devices()`) of the backbone's (home) mesh.
    experts: One tuple of device indices per domain expert, in expert order.
    num_devices: Devices the plan is written for.
  """
  name: str
  backbone: tuple[int, ...]
  experts: tuple[tuple[int, ...], ...]
  num_devices: int = 8

  def __post_init__(self):
    object.__setattr__(self, 'backbone', tuple(int(d) for d in self.backbone))
    object.__setattr__(self, 'experts', tuple(tuple(int(d) for d in e) for e in self.experts))

  @property
  def num_experts(self) -> int:
    return len(self.experts)

  def meshes(self) -> list[tuple[int, ...]]:
    """Distinct device sets: the home (backbone) mesh first, then expert meshes in order."""
    out = [self.backbone]
    for devices in self.experts:
      if tuple(devices) not in out:
        out.append(tuple(devices))
    return out

  def mesh_index_of_expert(self, j: int) -> int:
    return self.meshes().index(self.experts[j])

  def experts_on(self, mesh_index: int) -> list[int]:
    """Experts whose branch runs on mesh `mesh_index` (possibly the home mesh)."""
    mesh = self.meshes()[mesh_index]
    return [j for j, devices in enumerate(self.experts) if devices == mesh]

  def devices_used(self) -> list[int]:
    """Every device that runs a branch, in order."""
    return sorted({d for devices in self.meshes() for d in devices})

  def unused_devices(self, num_devices: int) -> list[int]:
    """Devices among 0..num_devices-1 that run no branch (idle under this plan)."""
    return sorted(set(range(num_devices)) - set(self.devices_used()))

  @property
  def is_spmd(self) -> bool:
    """True when every branch is on the home mesh (one mesh: SPMD model parallelism)."""
    return len(self.meshes()) == 1

  def validate(self, num_devices: int | None = None,
               num_experts: int | None = None) -> 'MeshPlan':
    """Checks the plan against a device count and the model's number of experts.

    Raises:
      PlanError: a branch without devices, a device out of range or listed twice, branches that
        share only part of their devices, or a number of expert placements that differs from
        the model's number of experts.
    """
    n = self.num_devices if num_devices is None else num_devices
    where = f'mesh plan {self.name!r}'
    branches = [('backbone', self.backbone)] + [
        (f'expert {j}', devices) for j, devices in enumerate(self.experts)]
    if num_experts is not None and num_experts != self.num_experts:
      if num_experts > self.num_experts:
        missing = ', '.join(str(j) for j in range(self.num_experts, num_experts))
        raise PlanError(
            f'{where} places {self.num_experts} experts but the model has {num_experts} '
            f'(NUM_DOMAIN_EXPERTS): expert(s) {missing} are unplaced. Give every expert a '
            'device set (experts=(...) with one entry per expert).')
      raise PlanError(
          f'{where} places {self.num_experts} experts but the model has only {num_experts} '
          f'(NUM_DOMAIN_EXPERTS): drop the extra placements or add experts to the model.')
    for label, devices in branches:
      if not devices:
        raise PlanError(f'{where}: the {label} is unplaced (no devices). Give it at least one '
                        f'device in 0..{n - 1}.')
      bad = [d for d in devices if not 0 <= d < n]
      if bad:
        raise PlanError(
            f'{where}: the {label} uses device(s) {bad}, but there are only {n} devices '
            f'(0..{n - 1}). Use a plan written for {n} devices or run on more devices.')
      if len(set(devices)) != len(devices):
        raise PlanError(f'{where}: the {label} lists a device twice: {_fmt(devices)}.')
    meshes = self.meshes()
    for a in range(len(meshes)):
      for b in range(a + 1, len(meshes)):
        shared = sorted(set(meshes[a]) & set(meshes[b]))
        if shared:
          who_a = [l for l, d in branches if d == meshes[a]]
          who_b = [l for l, d in branches if d == meshes[b]]
          raise PlanError(
              f'{where}: {" and ".join(who_a)} on {_fmt(meshes[a])} and {" and ".join(who_b)} '
              f'on {_fmt(meshes[b])} overlap on device(s) {shared}. Branches must either share '
              'a whole mesh (the same device list) or use disjoint devices.')
    return self

  def check_divisibility(self, sharded_dims: dict[str, dict[str, int]]) -> None:
    """Checks that every model-parallel dimension divides by its mesh's size.

    Args:
      sharded_dims: role ('home' or 'expert') -> {variable path: size of its 'mdl' dimension}.
    """
    for mesh_index, devices in enumerate(self.meshes()):
      roles = (['home'] if mesh_index == 0 else []) + (
          ['expert'] if self.experts_on(mesh_index) else [])
      for role in roles:
        for path, size in sharded_dims.get(role, {}).items():
          if size % len(devices):
            raise PlanError(
                f'mesh plan {self.name!r}: {path} has a model-parallel dimension of {size}, '
                f'which does not divide over the {len(devices)} devices of mesh '
                f'{_fmt(devices)}. Use a mesh size that divides {size} (or change the model '
                'dims / number of heads).')

  def describe(self) -> str:
    """One line per mesh: its devices and the branches it runs."""
    lines = []
    for i, devices in enumerate(self.meshes()):
      branches = (['backbone', 'embeddings', 'gates', 'softmax'] if i == 0 else []) + [
          f'expert {j}' for j in self.experts_on(i)]
      lines.append(f'mesh {i}: devices {_fmt(devices)} (model parallel x{len(devices)}): '
                   + ', '.join(branches))
    return '\n'.join(lines)

  def spec(self) -> str:
    """The plan in `parse` syntax: backbone devices | expert 0 devices | ..."""
    return '|'.join(','.join(str(d) for d in devs) for devs in (self.backbone,) + self.experts)

  @classmethod
  def parse(cls, text: str, num_devices: int = 8, name: str = 'custom') -> 'MeshPlan':
    """Parses 'BACKBONE|EXPERT0|EXPERT1|...' with comma lists or ranges: '0-3|4|5|6|7'."""
    parts = text.split('|')

    def devices(part):
      out = []
      for item in filter(None, (s.strip() for s in part.split(','))):
        m = re.fullmatch(r'(\d+)(?:-(\d+))?', item)
        if not m:
          raise PlanError(f'mesh plan {text!r}: cannot read {item!r}; write device indices as '
                          '"0,1,2" or "0-3", placements separated by "|".')
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        out.extend(range(lo, hi + 1))
      return tuple(out)

    return cls(name, devices(parts[0]), tuple(devices(p) for p in parts[1:]), num_devices)


def mesh1(num_experts: int = 4, num_devices: int = 8) -> MeshPlan:
  """SPMD: backbone and experts model parallel over one mesh of all devices."""
  every = tuple(range(num_devices))
  return MeshPlan('mesh1', every, (every,) * num_experts, num_devices)


def mesh3(num_experts: int = 4, num_devices: int = 8) -> MeshPlan:
  """Backbone on half the devices; the other half split into 2 meshes, experts shared pairwise."""
  half = num_devices // 2
  quarter = (num_devices - half) // 2
  meshes = (tuple(range(half, half + quarter)), tuple(range(half + quarter, num_devices)))
  per_mesh = -(-num_experts // 2)
  return MeshPlan('mesh3', tuple(range(half)),
                  tuple(meshes[j // per_mesh] for j in range(num_experts)), num_devices)


def mesh5(num_experts: int = 4, num_devices: int = 8) -> MeshPlan:
  """Backbone on num_devices - num_experts devices, one expert per remaining device."""
  home = num_devices - num_experts
  return MeshPlan('mesh5' if num_experts == 4 else f'mesh{num_experts + 1}',
                  tuple(range(home)), tuple((home + j,) for j in range(num_experts)),
                  num_devices)


def expert_size(num_experts: int = 2, num_devices: int = 8) -> MeshPlan:
  """Figure 4(b): backbone on 6 devices, each of the 2 experts on one device."""
  plan = mesh5(num_experts, num_devices)
  return dataclasses.replace(plan, name='expert_size')


def merges(num_experts: int = 4, num_devices: int = 8) -> MeshPlan:
  """Figure 4(c): mesh5's placement (backbone on 4, one expert per device); blocks vary."""
  return dataclasses.replace(mesh5(num_experts, num_devices), name='merges')


PRESETS: dict[str, Callable[..., MeshPlan]] = {
    'mesh1': mesh1, 'spmd': mesh1, 'mesh3': mesh3, 'mesh5': mesh5,
    'expert_size': expert_size, 'merges': merges,
}


def get_plan(name_or_spec: str | MeshPlan, num_experts: int = 4,
             num_devices: int = 8) -> MeshPlan:
  """A preset by name ('mesh1', 'mesh3', 'mesh5', 'expert_size', 'merges') or a parsed spec."""
  if isinstance(name_or_spec, MeshPlan):
    return name_or_spec
  if name_or_spec in PRESETS:
    return PRESETS[name_or_spec](num_experts=num_experts, num_devices=num_devices)
  if re.fullmatch(r'[\d,\-| ]+', name_or_spec):
    return MeshPlan.parse(name_or_spec, num_devices)
  raise PlanError(f'unknown mesh plan {name_or_spec!r}: use one of {sorted(PRESETS)} or a spec '
                  'like "0-3|4|5|6|7" (backbone devices, then one device list per expert).')
