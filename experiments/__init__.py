"""mode_pax's registered Pax experiments, importable as the package `mode`.

  python -m paxml.main --exp=mode.CodeExpert ...        paper scale (TPU): experiments/params.py
  python -m paxml.main --exp=mode.small.CodeExpert ...  CPU scale: experiments/small.py

Both scales register the same names (see experiments/recipes.py); paxml finds `mode.params.X` as
`mode.X`, the Pax convention for a package's `params` module.
"""

from mode import params  # pylint: disable=unused-import
