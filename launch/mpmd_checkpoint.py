"""Pax checkpoints of an MPMD run: save (every process), resume, and the checks before a resume.

A checkpoint is paxml's own: `<job_log_dir>/checkpoints/checkpoint_XXXXXXXX`, a TrainState saved
by `paxml.checkpoints.save_checkpoint` (`mode_pax.convert.write_pax_checkpoint`) with

  step        the steps trained,
  mdl_vars    every variable of the model, named as the Pax experiment names them (what
              `paxml.main --mode=eval`, `mode_pax.evaluate` and Pax warm-start rules read),
  opt_states  [{'mesh_<i>': {'<leaf name>': array}}]: each mesh's optimizer state, an opaque
              pytree flattened with `jax.tree_util` (leaf names are its key paths). It is not
              paxml's learner state (Pax's own resume cannot continue an MPMD run; eval and
              warm starts read mdl_vars only).

Multi-controller: each process holds only its meshes' state. Gathered to every process: each
mesh's state goes to the host of the mesh's first process, and one `process_allgather` hands every
process the whole state; then every process calls orbax's save together (its barriers need all of
them) and orbax writes the host arrays from process 0. Chosen over each process writing its part
through orbax because paxml's TrainState save needs global arrays in every process, and an array
of a mesh a process does not own has no shard there (orbax takes a process's replica id from its
first shard). The cost: the whole state passes through every host's memory at each save.

Resume reads the newest checkpoint with tensorstore (as `mode_pax.checkpoints` does): every process
places the variables of its meshes and the optimizer leaves of its meshes, matched by name.
`RUN_INFO` records what must not change across a resume (experiment, plan, optimizer flags), so a
mismatch is named before any work.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from typing import Any

import numpy as np

from mode_pax import paths

# What a run's checkpoints were written by; a resume must match it.
RUN_INFO = 'mpmd_run.json'
_MESH = 'mesh_{}'
# orbax (0.5.9) names the opt_states list's entry 'opt_states_0': names are 'opt_states_0.<mesh>.<leaf>'.
_OPT_PREFIX = 'opt_states'


class ResumeError(Exception):
  """A job_log_dir's checkpoints do not fit this run; the message says how to fix it."""


def run_info(experiment: str, plan_spec: str, optimizer: str,
             learning_rate: float | None) -> dict[str, str]:
  """What a run writes to RUN_INFO (and what a resume compares)."""
  return {'experiment': experiment, 'plan': plan_spec, 'optimizer': optimizer,
          'learning_rate': str(learning_rate)}


def latest_step(job_log_dir: str | None) -> int | None:
  if not job_log_dir:
    return None
  return paths.latest_checkpoint_step(paths.checkpoint_dir(job_log_dir))


def check_resume(job_log_dir: str | None, info: dict[str, str]) -> int | None:
  """The step to resume from (None: a fresh start); ResumeError when the folder's checkpoints
  were written by another experiment, plan or optimizer. Reads two small files only."""
  step = latest_step(job_log_dir)
  if step is None:
    return None
  path = os.path.join(job_log_dir, RUN_INFO)
  if not os.path.exists(path):
    raise ResumeError(
        f'{job_log_dir} holds checkpoints (newest: step {step}) that no MPMD launcher run wrote '
        f'(no {RUN_INFO}); the launcher resumes only its own runs. Give a new --job_log_dir, or '
        'start from those variables with --init_from='
        f'{paths.checkpoint_dir(job_log_dir)}.')
  with open(path) as f:
    saved = json.load(f)
  diffs = [f'{k}: checkpoint {saved.get(k)!r}, this run {v!r}' for k, v in info.items()
           if saved.get(k) != v]
  if diffs:
    flags = {'experiment': '--exp', 'plan': '--plan', 'optimizer': '--optimizer',
             'learning_rate': '--learning_rate'}
    fix = ' '.join(f'{flags[k]}={saved.get(k)}' for k, v in info.items() if saved.get(k) != v)
    raise ResumeError(
        f'cannot resume from {job_log_dir} (step {step}): its checkpoints were written by '
        f'another run ({"; ".join(diffs)}). Resume it with {fix}, or give a new --job_log_dir.')
  return step


def write_run_info(job_log_dir: str, info: dict[str, str], experiment_marker: str) -> None:
  """RUN_INFO, and the experiment marker paxml.main and mode_pax.evaluate read."""
  os.makedirs(job_log_dir, exist_ok=True)
  with open(os.path.join(job_log_dir, RUN_INFO), 'w') as f:
    json.dump(info, f, indent=1)
  marker = os.path.join(job_log_dir, experiment_marker)
  if not os.path.exists(marker):
    with open(marker, 'w') as f:
      f.write(info['experiment'] + '\n')


def check_variables(job_log_dir: str, step: int, shapes: dict[str, tuple[int, ...]]) -> None:
  """ResumeError unless the checkpoint holds exactly the model's variables, in its shapes."""
  from mode_pax import checkpoints  # pylint: disable=g-import-not-at-top
  found = checkpoints.read_shapes(checkpoints.step_dir(paths.checkpoint_dir(job_log_dir), step))
  missing = sorted(set(shapes) - set(found))
  unexpected = sorted(set(found) - set(shapes))
  reshaped = [f'{p}: model {shapes[p]}, checkpoint {found[p]}'
              for p in sorted(set(shapes) & set(found)) if tuple(shapes[p]) != tuple(found[p])]
  if missing or unexpected or reshaped:
    raise ResumeError(
        f'cannot resume from {job_log_dir} (step {step}): its variables do not fit the '
        f'experiment\'s model (the experiment changed since?): missing {missing[:3]}, '
        f'unexpected {unexpected[:3]}, other shapes {reshaped[:3]}. Give a new --job_log_dir.')


# ---- optimizer state as named leaves ------------------------------------------------------------
def leaf_name(key_path) -> str:
  """A file-name-safe name of a pytree leaf from its jax key path."""
  import jax  # pylint: disable=g-import-not-at-top
  return re.sub(r'[^A-Za-z0-9_]+', '_', jax.tree_util.keystr(key_path)).strip('_') or 'leaf'


def named_leaves(tree) -> dict[str, Any]:
  """{leaf name: leaf} of a pytree (names numbered in flattening order: unique, stable)."""
  import jax  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {f'{k:04d}_{leaf_name(path)}': leaf for k, (path, leaf) in enumerate(leaves)}


# ---- saving -------------------------------------------------------------------------------------
def _to_host(mesh_state) -> dict[str, Any]:
  """{'params': {path: numpy}, 'opt': {leaf name: numpy}} of one mesh's state; a collective over
  the mesh's processes (its arrays are replicated on the mesh first)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_leaves(mesh_state)
  mesh = leaves[0].sharding.mesh
  replicated = jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, P()))(mesh_state)
  host = jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_data(0)), replicated)
  return {'params': dict(host['params']), 'opt': named_leaves(host['opt'])}


def _gather(state, meshes) -> dict[int, dict[str, Any]]:
  """Every mesh's host state, in every process."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  mine = {}
  for i, mesh in enumerate(meshes):
    if i in state:
      host = _to_host(state[i])
      # The mesh's first process sends it (the others of the mesh hold the same values).
      if min(d.process_index for d in mesh.devices.flat) == jax.process_index():
        mine[i] = host
  if jax.process_count() == 1:
    return mine
  # process_allgather moves arrays of one shape: the pickled host states, padded to the longest
  # (a pickle carries the leaf names and dtypes of meshes the receiver does not own).
  blob = np.frombuffer(pickle.dumps(mine, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
  sizes = multihost_utils.process_allgather(np.array([blob.size], np.int32))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[:blob.size] = blob
  blobs = multihost_utils.process_allgather(padded)
  out = {}
  for size, data in zip(np.asarray(sizes).reshape(-1), np.asarray(blobs)):
    out.update(pickle.loads(data[:int(size)].tobytes()))
  return out


def save(job_log_dir: str, step: int, state, meshes) -> str:
  """Writes the Pax checkpoint of `step`; every process calls it. Returns its folder."""
  from mode_pax import convert  # pylint: disable=g-import-not-at-top
  gathered = _gather(state, meshes)
  missing = [i for i in range(len(meshes)) if i not in gathered]
  if missing:
    raise RuntimeError(f'no process sent the state of meshes {missing}')
  variables = {p: v for i in sorted(gathered) for p, v in gathered[i]['params'].items()}
  opt = {_MESH.format(i): gathered[i]['opt'] for i in sorted(gathered)}
  return convert.write_pax_checkpoint(variables, paths.checkpoint_dir(job_log_dir), step,
                                      opt_states=[opt], on_host=True, exist_ok=True)


# ---- restoring ----------------------------------------------------------------------------------
def restore_opt(job_log_dir: str, step: int, state) -> dict:
  """`state` with each local mesh's optimizer state replaced by the checkpoint's.

  ResumeError when a leaf is missing or has another shape or dtype (the optimizer changed)."""
  import jax  # pylint: disable=g-import-not-at-top
  from mode_pax import checkpoints  # pylint: disable=g-import-not-at-top
  folder = os.fspath(checkpoints.step_dir(paths.checkpoint_dir(job_log_dir), step))
  saved_names = {e.split('.', 1)[1]: e for e in os.listdir(os.path.join(folder, 'state'))
                 if e.startswith(_OPT_PREFIX) and '.' in e}
  out = {}
  for i, mesh_state in state.items():
    leaves, treedef = jax.tree_util.tree_flatten(mesh_state['opt'])
    names = list(named_leaves(mesh_state['opt']))
    new = []
    for name, leaf in zip(names, leaves):
      entry = saved_names.get(f'{_MESH.format(i)}.{name}')
      if entry is None:
        raise ResumeError(
            f'cannot resume from {job_log_dir} (step {step}): its optimizer state of mesh {i} has '
            f'no {name!r} (another optimizer?). Give a new --job_log_dir.')
      value = checkpoints.read_array(os.path.join(folder, 'state', entry))
      if value.shape != leaf.shape or value.dtype != leaf.dtype:
        raise ResumeError(
            f'cannot resume from {job_log_dir} (step {step}): optimizer state {entry} is '
            f'{value.dtype}{list(value.shape)}, this run has {leaf.dtype}{list(leaf.shape)}. '
            'Give a new --job_log_dir.')
      new.append(jax.make_array_from_callback(value.shape, leaf.sharding,
                                              lambda index, v=value: v[index]))
    out[i] = {**mesh_state, 'opt': jax.tree_util.tree_unflatten(treedef, new)}
  return out
