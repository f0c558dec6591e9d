"""Lists mode_pax's registered Pax experiments: what each is and what it sets.

  python -m mode                      every experiment, grouped by scale
  python -m mode small                the experiments whose name contains 'small'
  python -m mode mode.small.CodeExpertB6L2
                                      one experiment: its description and every setting

Each line gives the name to pass to `paxml.main --exp=`, the method, the first line of the
docstring and the class attributes the experiment sets on top of its method and scale (the
scale's own settings are shown once, above its experiments).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys

from paxml import experiment_registry

from mode_pax import experiment
from mode_pax import methods
from mode_pax import registry

# The modules that register experiments (paxml prints a line per registration: kept quiet).
MODULES = ('mode.params', 'mode.small', 'mode.smollm2', 'mode.gemma2b', 'mode.llama32_1b',
           'mode.sharding')
_METHOD_CLASSES = (methods.Pretrain, methods.FullFinetune, methods.Lora, methods.MoDE,
                   experiment.LmExperiment)


def _settings(classes) -> dict[str, object]:
  """Upper-case class attributes of `classes`, the first class in the list winning."""
  out = {}
  for cls in reversed(classes):
    out.update({k: v for k, v in vars(cls).items() if k.isupper()})
  return out


def _scale_classes(cls) -> list[type]:
  """The scale mixins in an experiment's MRO (classes that are not experiments themselves)."""
  return [c for c in cls.__mro__[1:-1] if not issubclass(c, experiment.LmExperiment)
          and c.__module__ != 'paxml.base_experiment' and c.__module__.startswith('mode')]


def _own_classes(cls) -> list[type]:
  """The experiment's own classes in its MRO: the registered class and its recipe, not the
  method, the scale or paxml's bases."""
  stop = set(_METHOD_CLASSES) | set(_scale_classes(cls))
  own = []
  for c in cls.__mro__:
    if c in stop or not issubclass(c, experiment.LmExperiment) or c.__name__ == 'Recipe':
      continue
    own.append(c)
  return own


def _fmt(settings: dict[str, object]) -> str:
  return ' '.join(f'{k}={getattr(v, "__name__", v)!r}' if not isinstance(v, (int, float, str))
                  else f'{k}={v!r}' for k, v in sorted(settings.items()))


def _method(cls) -> str:
  return cls.METHOD_NAME or 'MoDE'


def describe(name: str) -> str:
  """Every setting of one experiment, with where it comes from."""
  cls = registry.lookup(name)
  doc = (cls.__doc__ or '').strip()
  lines = [f'{registry.experiment_name(cls)}  ({_method(cls)})', '', doc, '']
  resolved = {k: getattr(cls, k) for k in dir(cls) if k.isupper()}
  lines.append('Settings:')
  lines += [f'  {k} = {getattr(v, "__name__", v)!r}' if not isinstance(v, (int, float, str))
            else f'  {k} = {v!r}' for k, v in sorted(resolved.items())]
  return '\n'.join(lines)


def listing(pattern: str = '') -> str:
  """One line per registered experiment whose name contains `pattern`."""
  lines, scale_seen = [], set()
  every = sorted(experiment_registry.get_all().items())
  for key, cls in every:
    name = registry.experiment_name(cls)
    if not key.startswith('mode.') or pattern not in name:
      continue
    scales = tuple(_scale_classes(cls))
    if scales not in scale_seen:
      scale_seen.add(scales)
      where = cls.__module__
      header = ' + '.join(c.__name__ for c in scales) or 'paper-scale defaults'
      lines += ['', f'== {where}: {header}', f'   {_fmt(_settings(scales))}' if scales else '']
    summary = (cls.__doc__ or '').strip().splitlines()[0] if cls.__doc__ else ''
    lines.append(f'{name}  [{_method(cls)}]  {summary}')
    own = _settings(_own_classes(cls))
    if own:
      lines.append(f'    {_fmt(own)}')
  return '\n'.join(line for line in lines if line is not None)


def main(argv: list[str]) -> int:
  with contextlib.redirect_stderr(io.StringIO()):
    for module in MODULES:
      importlib.import_module(module)
  args = argv[1:]
  if args and args[0] in ('-h', '--help'):
    print(__doc__)
    return 0
  if args and experiment_registry.get(args[0]) is not None:
    print(describe(args[0]))
    return 0
  out = listing(args[0] if args else '')
  if not out.strip():
    print(f'No registered experiment name contains {args[0]!r}.', file=sys.stderr)
    return 2
  print(out.lstrip('\n'))
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
