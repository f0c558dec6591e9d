"""Reading what Pax wrote: model variables of a checkpoint and the run's provenance.

Pax (orbax) saves each model variable as a zarr array `checkpoint_XXXXXXXX/state/mdl_vars.<a.b.c>`;
tensorstore reads it without building the model. `train_state_provenance.txt` records, for every
variable, `random_init` or the `<ckpt_dir>:<step>` it was warm-started from. `load_into` fills
the MPMD runtime's flat variables from such a checkpoint with Pax's load-rule semantics.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

from etils import epath
import numpy as np
import tensorstore as ts

from mode_pax import paths


_PREFIX = 'mdl_vars.'


def step_dir(ckpt_dir: str, step: int | None = None) -> epath.Path:
  step = paths.latest_checkpoint_step(ckpt_dir) if step is None else step
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {ckpt_dir}.')
  return epath.Path(ckpt_dir) / f'checkpoint_{step:08d}'


def read_variables(ckpt_dir: str, step: int | None = None) -> dict[str, np.ndarray]:
  """Model variables of a checkpoint (newest step by default), keyed by '/'-separated path."""
  state = step_dir(ckpt_dir, step) / 'state'
  out = {}
  for entry in sorted(state.iterdir()):
    if not entry.name.startswith(_PREFIX) or not (entry / '.zarray').exists():
      continue
    spec = {'driver': 'zarr', 'kvstore': {'driver': 'file', 'path': os.fspath(entry)}}
    out[entry.name[len(_PREFIX):].replace('.', '/')] = ts.open(spec).result().read().result()
  if not out:
    raise FileNotFoundError(f'No model variables under {state}.')
  return out


def write_variables(state_dir: str, flat: dict[str, np.ndarray]) -> None:
  """Writes arrays in Pax's layout under `state_dir` (conversions and tests)."""
  os.makedirs(state_dir, exist_ok=True)
  for path, value in flat.items():
    value = np.asarray(value)
    spec = {'driver': 'zarr',
            'kvstore': {'driver': 'file',
                        'path': os.path.join(state_dir, _PREFIX + path.replace('/', '.'))},
            'metadata': {'shape': list(value.shape), 'dtype': value.dtype.str}}
    ts.open(spec, create=True, delete_existing=True).result().write(value).result()


def load_into(init_vars: dict[str, np.ndarray], ckpt_dir: str, *,
              load_rules: Sequence[tuple[str, str]] = ((r'(.*)', '{}'),),
              step: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Fills `init_vars` from a Pax checkpoint, following Pax's load-rule semantics.

  Each target path is matched (whole path) against the rules in order; the first match names the
  source variable by `format.format(*groups)` (e.g. `naming.backbone_from_transformer_lm`).
  Unmatched targets keep their initial value.

  Returns:
    (variables, provenance): provenance maps each path to 'random_init' or the checkpoint step's
    folder it came from.
  """
  source = read_variables(ckpt_dir, step)
  where = os.fspath(step_dir(ckpt_dir, step))
  out, provenance = dict(init_vars), {}
  for path, value in init_vars.items():
    provenance[path] = 'random_init'
    for regex, fmt in load_rules:
      m = re.fullmatch(regex, path)
      if not m:
        continue
      src = fmt.format(*m.groups())
      if src not in source:
        raise KeyError(f'load rule {regex!r} maps {path} to {src}, which {where} does not hold.')
      if source[src].shape != value.shape:
        raise ValueError(f'{path}: shape {value.shape} but {src} in {where} is '
                         f'{source[src].shape}.')
      out[path] = np.asarray(source[src]).astype(value.dtype)
      provenance[path] = where
      break
  return out, provenance


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
