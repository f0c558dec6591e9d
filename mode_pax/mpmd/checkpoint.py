"""Reading a Pax checkpoint's model variables for the MPMD runtime.

Pax (orbax, zarr) saves each variable under `checkpoint_XXXXXXXX/state/mdl_vars.<dotted path>`,
e.g. `mdl_vars.params.lm.transformer.blocks_0.backbone.x_layers_0.layer_norm.scale`. This reads
them with tensorstore into the flat `{params/lm/...: array}` dict that `MpmdTrainer.init_state`
and `SpmdTrainer.init_state` take. Load rules (regex, format), as in Pax's
`CheckpointLoadingRules` (e.g. `mode_pax.naming.backbone_from_transformer_lm`), rename variables,
so a plain TransformerLm backbone checkpoint fills a MoDE model's backbone.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

import numpy as np
import tensorstore as ts

from mode_pax import paths

PREFIX = 'mdl_vars.'


def checkpoint_state_dir(ckpt_dir: str, step: int | None = None) -> str:
  """`<ckpt_dir>/checkpoint_<step>/state`, the latest step when `step` is None."""
  if step is None:
    step = paths.latest_checkpoint_step(ckpt_dir)
    if step is None:
      raise FileNotFoundError(f'{ckpt_dir} holds no checkpoint_XXXXXXXX folder.')
  state = os.path.join(ckpt_dir, f'checkpoint_{step:08d}', 'state')
  if not os.path.isdir(state):
    raise FileNotFoundError(f'{state} does not exist.')
  return state


def read_mdl_vars(state_dir: str) -> dict[str, np.ndarray]:
  """Every `mdl_vars.*` array of a checkpoint's state folder, keyed by its Pax path."""
  out = {}
  for name in sorted(os.listdir(state_dir)):
    if not name.startswith(PREFIX):
      continue
    store = ts.open({'driver': 'zarr', 'kvstore': {'driver': 'file',
                                                   'path': os.path.join(state_dir, name)}}).result()
    out[name[len(PREFIX):].replace('.', '/')] = np.asarray(store.read().result())
  return out


def write_mdl_vars(state_dir: str, flat: dict[str, np.ndarray]) -> None:
  """Writes arrays in the same layout (for tests and conversions)."""
  os.makedirs(state_dir, exist_ok=True)
  for path, value in flat.items():
    value = np.asarray(value)
    store = ts.open({'driver': 'zarr',
                     'kvstore': {'driver': 'file',
                                 'path': os.path.join(state_dir, PREFIX + path.replace('/', '.'))},
                     'metadata': {'shape': list(value.shape), 'dtype': value.dtype.str}},
                    create=True, delete_existing=True).result()
    store.write(value).result()


def load_into(init_vars: dict[str, np.ndarray], ckpt_dir: str, *,
              load_rules: Sequence[tuple[str, str]] = ((r'(.*)', '{}'),),
              step: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Fills `init_vars` from a Pax checkpoint, following Pax's load-rule semantics.

  Each target path is matched (whole path) against the rules in order; the first match names the
  source variable by `format.format(*groups)`. Unmatched targets keep their initial value.

  Returns:
    (variables, provenance): provenance maps each path to 'random_init' or '<ckpt_dir>:<step>'.
  """
  state = checkpoint_state_dir(ckpt_dir, step)
  source = read_mdl_vars(state)
  out, provenance = dict(init_vars), {}
  for path, value in init_vars.items():
    provenance[path] = 'random_init'
    for regex, fmt in load_rules:
      m = re.fullmatch(regex, path)
      if not m:
        continue
      src = fmt.format(*m.groups())
      if src not in source:
        raise KeyError(f'load rule {regex!r} maps {path} to {src}, which {state} does not hold.')
      if source[src].shape != value.shape:
        raise ValueError(f'{path}: shape {value.shape} but {src} in {state} is '
                         f'{source[src].shape}.')
      out[path] = source[src].astype(value.dtype)
      provenance[path] = state
      break
  return out, provenance
