"""Errors raised by the MoDE data build and the seqio tasks."""

BUILD_COMMAND = 'make data'


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
