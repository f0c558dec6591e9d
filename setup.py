"""mode_pax: Modular Domain Experts (arXiv 2410.10181) on Pax/Praxis."""

import pathlib

import setuptools


def _pins(section):
  """Requirement lines of one [section] of pins.txt, the project's only list of pins."""
  lines, current = [], None
  for line in (pathlib.Path(__file__).parent / 'pins.txt').read_text().splitlines():
    line = line.strip()
    if line.startswith('['):
      current = line.strip('[]')
    elif line and not line.startswith('#') and current == section:
      lines.append(line)
  return lines


setuptools.setup(
    name='mode_pax',
    version='0.1.0',
    description='Modular Domain Experts (MoDE) on Pax/Praxis',
    # The registered Pax experiments live in experiments/ and import as `mode`, so that
    # `python -m paxml.main --exp=mode.CodeExpert` finds them.
    packages=setuptools.find_packages(include=['mode_pax', 'mode_pax.*']) + ['mode'],
    package_dir={'mode': 'experiments'},
    python_requires='>=3.10',
    # paxml, praxis and lingvo (the [no-deps] section) are installed by tools/setup_env.sh with
    # --no-deps: their own pins cannot be met on Python 3.11.
    install_requires=_pins('resolved'),
    # Cloud TPU workers only (the MPMD launcher's --dry-run plan installs it); `make setup`
    # (tools/setup_env.sh) installs the CPU set: [resolved] and [no-deps].
    extras_require={'tpu': _pins('tpu')},
)
