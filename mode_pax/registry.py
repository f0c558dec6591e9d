"""Finding experiments: the one lookup from a name to an experiment class, and back.

Names are those of paxml's registry (`mode.small.CodeExpert`; `mode.CodeExpert` for the
paper-scale `mode.params.CodeExpert`), or `module.Class` for an unregistered experiment class
(e.g. the MPMD tests' `mode_pax.mpmd.testing.TinyMoDE`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys

from paxml import experiment_registry


def experiment_name(experiment_cls: type) -> str:
  """The registry name of an experiment class, e.g. 'mode.small.CodeExpert'."""
  module = experiment_cls.__module__
  # experiments/params.py registers as mode.params.X, which paxml also finds as mode.X.
  if module == 'mode.params':
    module = 'mode'
  return f'{module}.{experiment_cls.__name__}'


def register(classes: list[type]) -> dict[str, type]:
  """Registers experiment classes with paxml; returns name -> class.

  paxml prints a line per registration to stderr; a scale registers hundreds, so one line
  summarises them (a failed registration still raises).
  """
  with contextlib.redirect_stderr(io.StringIO()):
    out = {cls.__name__: experiment_registry.register(cls) for cls in classes}
  if classes:
    print(f'Registered {len(classes)} experiments of {classes[0].__module__} '
          '(list them: python -m mode)', file=sys.stderr)
  return out


def lookup(name: str) -> type:
  """The experiment class named `name`, importing its module when needed."""
  cls = experiment_registry.get(name)
  if cls is None and '.' in name:
    module, attr = name.rsplit('.', 1)
    try:
      cls = getattr(importlib.import_module(module), attr, None)
    except ImportError:
      cls = None
    cls = cls or experiment_registry.get(name)
  if cls is None:
    raise ValueError(f'No experiment {name!r}: give a registered name (list them with '
                     '`python -m mode`) or module.Class.')
  return cls
