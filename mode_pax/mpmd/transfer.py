"""Moving activations between meshes, and counting the bytes moved.

Two transports with the same interface, `move(x, src, dst, like)`:

- `DevicePutTransport` (single controller): `jax.device_put` onto the destination mesh.
- `PermuteTransport` (single or multi controller): for every destination device, a
  `shard_map` + `lax.ppermute` over a 2-device mesh {source device, destination device} (one
  collective-permute); the destination shards are then assembled into an array on the destination
  mesh. In a multi-controller run only the two processes owning the pair call the program, and a
  process that holds no part of `x` passes None (the shape comes from `like`).

Moved activations are replicated on the destination mesh, so a move costs `x.nbytes` per
destination device; `bytes_moved` adds that up (a deterministic metric).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax import numpy as jnp
from jax.experimental import shard_map
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


class Transport:
  """Base transport: counts moves and bytes."""

  def __init__(self):
    self.bytes_moved = 0
    self.moves = 0

  def reset_counters(self):
    self.bytes_moved, self.moves = 0, 0

  def _count(self, like, dst: Mesh):
    self.moves += 1
    self.bytes_moved += int(np.prod(like.shape)) * jnp.dtype(like.dtype).itemsize * dst.size

  def move(self, x, src: Mesh, dst: Mesh, like):
    raise NotImplementedError


class DevicePutTransport(Transport):
  """Single controller: one device_put onto the destination mesh (replicated)."""

  def move(self, x, src: Mesh, dst: Mesh, like):
    if src is dst:
      return x
    self._count(like, dst)
    return jax.device_put(x, replicated(dst))


@functools.lru_cache(maxsize=None)
def _pair_program(src_device, dst_device):
  mesh = Mesh(np.array([src_device, dst_device]), ('pair',))
  fn = shard_map.shard_map(lambda a: jax.lax.ppermute(a, 'pair', [(0, 1)]), mesh=mesh,
                           in_specs=P('pair'), out_specs=P('pair'), check_rep=False)
  return mesh, jax.jit(fn)


class PermuteTransport(Transport):
  """A collective-permute per destination device over the mesh {source device, dest device}."""

  def __init__(self):
    super().__init__()
    self._zeros = {}

  def _zeros_on(self, like, device):
    key = (tuple(like.shape), jnp.dtype(like.dtype).name, device.id)
    if key not in self._zeros:
      self._zeros[key] = jax.device_put(np.zeros((1,) + tuple(like.shape), like.dtype), device)
    return self._zeros[key]

  def move(self, x, src: Mesh, dst: Mesh, like):
    if src is dst:
      return x
    self._count(like, dst)
    src_devices = list(src.devices.flat)
    received = []
    for k, dst_device in enumerate(dst.devices.flat):
      src_device = src_devices[k % len(src_devices)]
      here_src = src_device.process_index == jax.process_index()
      here_dst = dst_device.process_index == jax.process_index()
      if not (here_src or here_dst):
        continue
      pair_mesh, program = _pair_program(src_device, dst_device)
      shards = []
      if here_src:
        local = next(s.data for s in x.addressable_shards if s.device == src_device)
        shards.append(jnp.expand_dims(local, 0))
      if here_dst:
        shards.append(self._zeros_on(like, dst_device))
      pair = jax.make_array_from_single_device_arrays(
          (2,) + tuple(like.shape), NamedSharding(pair_mesh, P('pair')), shards)
      out = program(pair)
      if here_dst:
        data = next(s.data for s in out.addressable_shards if s.device == dst_device)
        received.append(data[0])
    if not received:
      return None
    return jax.make_array_from_single_device_arrays(
        tuple(like.shape), replicated(dst), received)
