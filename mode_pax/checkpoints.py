"""Reading what Pax wrote: model variables of a checkpoint and the run's provenance.

Pax (orbax) saves each model variable as a zarr array `checkpoint_XXXXXXXX/state/mdl_vars.<a.b.c>`;
tensorstore reads it without building the model. `train_state_provenance.txt` records, for every
variable, `random_init` or the `<ckpt_dir>:<step>` it was warm-started from.
"""

from __future__ import annotations

import os

from etils import epath
import numpy as np
import tensorstore as ts

from mode_pax import paths


def step_dir(ckpt_dir: str, step: int | None = None) -> epath.Path:
  step = paths.latest_checkpoint_step(ckpt_dir) if step is None else step
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {ckpt_dir}.')
  return epath.Path(ckpt_dir) / f'checkpoint_{step:08d}'


def read_variables(ckpt_dir: str, step: int | None = None) -> dict[str, np.ndarray]:
  """Model variables of a checkpoint (newest step by default), keyed by '/'-separated path."""
  state = step_dir(ckpt_dir, step) / 'state'
  prefix = 'mdl_vars.'
  out = {}
  for entry in sorted(state.iterdir()):
    if not entry.name.startswith(prefix) or not (entry / '.zarray').exists():
      continue
    spec = {'driver': 'zarr', 'kvstore': {'driver': 'file', 'path': os.fspath(entry)}}
    out[entry.name[len(prefix):].replace('.', '/')] = ts.open(spec).result().read().result()
  if not out:
    raise FileNotFoundError(f'No model variables under {state}.')
  return out


def read_provenance(job_log_dir: str) -> dict[str, str]:
  """Variable path -> where its initial value came from, from train_state_provenance.txt."""
  path = os.path.join(job_log_dir, 'train_state_provenance.txt')
  with open(path) as f:
    lines = f.read().splitlines()
  start = lines.index('Mdl vars') + 1
  out, stack = {}, []
  for line in lines[start:]:
    if not line.strip():
      continue
    if not line.startswith(' '):  # the next section (optimizer states)
      break
    depth = (len(line) - len(line.lstrip(' '))) // 4 - 1
    key, _, value = line.strip().partition(':')
    stack[depth:] = [key]
    if value.strip():
      out['/'.join(stack)] = value.strip().strip('"')
  return out
