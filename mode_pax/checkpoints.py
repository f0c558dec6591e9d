"""Reading what Pax wrote: model variables of a checkpoint and the run's provenance.

Pax (orbax) saves each model variable as a zarr array `checkpoint_XXXXXXXX/state/mdl_vars.<a.b.c>`;
tensorstore reads it without building the model. `train_state_provenance.txt` records, for every
variable, `random_init` or the `<ckpt_dir>:<step>` it was warm-started from. `load_into` fills
the MPMD runtime's flat variables from such a checkpoint with Pax's load rules (`var_mapping`).
"""

from __future__ import annotations

import json
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


def read_shapes(step_folder: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
  """Variable path -> shape of a checkpoint step folder, from the arrays' metadata only."""
  out = {}
  for entry in (epath.Path(step_folder) / 'state').iterdir():
    if entry.name.startswith(_PREFIX) and (entry / '.zarray').exists():
      shape = json.loads((entry / '.zarray').read_text())['shape']
      out[entry.name[len(_PREFIX):].replace('.', '/')] = tuple(shape)
  return out


def read_array(entry: str | os.PathLike[str]) -> np.ndarray:
  """One saved array of a checkpoint: `<step folder>/state/<name>` (a zarr array)."""
  spec = {'driver': 'zarr', 'kvstore': {'driver': 'file', 'path': os.fspath(entry)}}
  return ts.open(spec).result().read().result()


def read_variables(ckpt_dir: str, step: int | None = None) -> dict[str, np.ndarray]:
  """Model variables of a checkpoint (newest step by default), keyed by '/'-separated path."""
  state = step_dir(ckpt_dir, step) / 'state'
  out = {}
  for entry in sorted(state.iterdir()):
    if not entry.name.startswith(_PREFIX) or not (entry / '.zarray').exists():
      continue
    out[entry.name[len(_PREFIX):].replace('.', '/')] = read_array(entry)
  if not out:
    raise FileNotFoundError(f'No model variables under {state}.')
  return out


def var_mapping(paths: Sequence[str], load_rules: Sequence[tuple[str, str]],
                ignore_rules: Sequence[str] = (), safe_load: bool = False) -> dict[str, str]:
  """Target path -> checkpoint path under Pax's load rules (`tasks_lib._get_var_mapping`).

  As in Pax, each path is tried against the load rules in order with `re.match`, which anchors
  at the start only (a rule also matches a path that goes on after it); the first rule that
  matches names the source, `format.format(*groups)`. A path that matches an ignore rule (also
  `re.match`) maps to nothing. With `safe_load`, a load rule that was tried but mapped no path is
  an error; as in Pax, a rule is tried on a path only until an earlier rule maps it, so a rule
  after one that maps every path is never tried and not reported.

  Raises:
    ValueError: with safe_load, for rules that map no path.
  """
  rules = [(re.compile(regex), fmt) for regex, fmt in load_rules]
  ignores = [re.compile(regex) for regex in ignore_rules]
  tried, used, out = set(), set(), {}
  for path in paths:
    for regex, fmt in rules:
      tried.add(regex.pattern)
      m = regex.match(path)
      if m is None or any(ignore.match(path) for ignore in ignores):
        continue
      out[path] = fmt.format(*m.groups())
      used.add(regex.pattern)
      break
  if safe_load and tried - used:
    raise ValueError(f'load rule(s) {sorted(tried - used)} match no variable (safe_load): they '
                     'would leave variables meant to be loaded at their initial values.')
  return out


def load_into(init_vars: dict[str, np.ndarray], ckpt_dir: str, *,
              load_rules: Sequence[tuple[str, str]] = ((r'(.*)', '{}'),),
              ignore_rules: Sequence[str] = (), safe_load: bool = False,
              step: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Fills `init_vars` from a Pax checkpoint as Pax's `CheckpointLoadingRules` would.

  Variables map to the checkpoint's by `var_mapping` (Pax's rule matching, ignore rules and
  safe_load); the others keep their initial value. Unlike Pax's init_from_checkpoint_rules, this
  reads one checkpoint (Pax also skips variables that an earlier checkpoint of its dict filled),
  model variables only (no step or optimizer state), and casts values to the target's dtype.

  Returns:
    (variables, provenance): provenance maps each path to 'random_init' or the checkpoint step's
    folder it came from.

  Raises:
    KeyError: a rule maps a variable to a name the checkpoint does not hold.
    ValueError: a shape differs from the checkpoint's, or (safe_load) a rule maps nothing.
  """
  source = read_variables(ckpt_dir, step)
  where = os.fspath(step_dir(ckpt_dir, step))
  mapping = var_mapping(list(init_vars), load_rules, ignore_rules, safe_load)
  out, provenance = dict(init_vars), {path: 'random_init' for path in init_vars}
  for path, src in mapping.items():
    value = init_vars[path]
    if src not in source:
      raise KeyError(f'the load rules map {path} to {src}, which {where} does not hold.')
    if source[src].shape != value.shape:
      raise ValueError(f'{path}: shape {value.shape} but {src} in {where} is '
                       f'{source[src].shape}.')
    out[path] = np.asarray(source[src]).astype(value.dtype)
    provenance[path] = where
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
