"""Errors raised by the MoDE data build and the seqio tasks."""

import os

from mode_pax import paths

BUILD_COMMAND = 'make data'


def build_fix(data_dir: str, then: str = '') -> str:
  """The fix for a missing or damaged build in data_dir: the command that (re)builds it."""
  default = paths.data_dir()
  is_default = data_dir == (default if '://' in default else os.path.abspath(default))
  make = BUILD_COMMAND if is_default else f'{BUILD_COMMAND} DATA_DIR={data_dir}'
  return f'run `{make}` (python -m mode_pax.data.build --data_dir={data_dir}){then}'


class DataError(RuntimeError):
  """A data problem; the message names the source and the command that fixes it."""

  def __init__(self, source: str, problem: str, fix: str | None = None):
    self.source = source
    self.problem = problem
    self.fix = fix or f'run `{BUILD_COMMAND}` (python -m mode_pax.data.build)'
    super().__init__(f'[{source}] {problem} To fix: {self.fix}.')


class SourceUnreachableError(DataError):
  """A package registry could not be reached or did not have the pinned file."""


class ChecksumMismatchError(DataError):
  """A downloaded file does not match the sha256 pinned in the manifest."""


class BadSourceTextError(DataError):
  """A source is empty, or holds text that is not UTF-8."""


class DataNotBuiltError(DataError):
  """The built data (or part of it) is missing or incomplete."""


class DataDamagedError(DataNotBuiltError):
  """A file of a finished build is missing, truncated or changed since the build wrote it.

  A DataNotBuiltError, so callers that build missing data (the pipeline) repair it too: the
  build verifies every part and rebuilds the damaged ones.
  """
