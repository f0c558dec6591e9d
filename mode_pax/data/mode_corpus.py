"""`mode_corpus`: the MoDE corpora as a TensorFlow Datasets builder.

One config per dataset (`english`, `sotu`, `code`, `math`), each with the splits `train`,
`validation` and `test` and the features `text`, `doc_id` and `num_tokens`. TFDS stores each
split in a fixed pseudo-random order (it shuffles examples by key when writing), so the first
N training examples are a random sample, and the size variants are TFDS slices of one training
split: `mode_code_n{N}` trains on `mode_corpus/code` `train[:N]`, and `mode_math_code_n{N}` on
`train[:N/2]` of `math` and of `code`.

The examples come out of the data build (`make data`, i.e. `python -m mode_pax.data.build`),
which fetches the pinned sources, splits, deduplicates, trains the vocabulary and cuts the
documents into examples for all four configs at once, then hands each config its examples
(`prepare`). Reading works like for any prepared TFDS dataset:

  tfds.load('mode_corpus/code', data_dir='data/build', split='train[:100]')

with or without this module imported (`tfds.builder_from_directory` works too). The build's
fingerprint and per-split statistics are in each config's `metadata.json`; the build's marker
`_COMPLETE.json` beside it records the size and sha256 of every file of the config.
"""

import contextlib
import io
import os
import posixpath
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from mode_pax.data import errors

NAME = 'mode_corpus'
VERSION = tfds.core.Version('1.0.0')
SPLITS = ('train', 'validation', 'test')
METADATA_FILE = 'metadata.json'  # written by TFDS with the rest of a config's files

DESCRIPTIONS = {
    'english': 'Public-domain English literature (Austen, Shakespeare, Milton); validation '
               'and test are whole works held out of training (English retention).',
    'sotu': 'State of the Union addresses (general English for backbone pre-training), split '
            'by address.',
    'code': 'Python source of the pinned packages (tests, migrations and locale excluded), '
            'split by package folder so no module is in two splits.',
    'math': 'Grade-school math word problems with worked answers (reasoning-gym '
            'gsm_symbolic), split by problem template: test templates are unseen in training.',
}


class ModeCorpus(tfds.core.GeneratorBasedBuilder):
  """The MoDE English, State of the Union, Code and Math corpora."""

  VERSION = VERSION
  RELEASE_NOTES = {
      '1.0.0': 'First TFDS release: the datasets of the MoDE data build (pinned sources, '
               'unit-level splits, cross-split deduplication, examples cut to the build\'s '
               'example_length under its SentencePiece vocabulary).',
  }
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=description)
                     for name, description in DESCRIPTIONS.items()]

  def __init__(self, *, examples: Mapping[str, Sequence[Any]] | None = None,
               metadata: Mapping[str, Any] | None = None, **kwargs):
    """A builder that reads a prepared config, or with `examples` prepares one.

    Args:
      examples: split -> this config's examples (objects with text, doc_id and num_tokens);
        given by the data build. Without them the builder can read but not prepare.
      metadata: stored as the config's metadata.json (build fingerprint, statistics).
      **kwargs: tfds.core.DatasetBuilder arguments (data_dir, config, version).
    """
    self._examples = examples
    self._metadata = dict(metadata or {})
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=('MoDE (Modular Domain Experts) training and evaluation text: '
                     + self.builder_config.description),
        features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(doc='The example text, whitespace kept.'),
            'doc_id': tfds.features.Text(
                doc='Source document, e.g. "austen/emma" or "networkx/algorithms/dag.py".'),
            'num_tokens': tfds.features.Scalar(
                np.int64, doc='Tokens of text under the build\'s vocabulary (vocab/spm.model '
                'in the same data_dir), EOS not counted.'),
        }),
        homepage='https://arxiv.org/abs/2410.10181',
        metadata=tfds.core.MetadataDict(self._metadata),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # the build fetches the sources (package registries, pinned sha256)
    if self._examples is None:
      raise errors.DataNotBuiltError(
          f'{NAME}/{self.builder_config.name}',
          f'is not prepared in {self.data_dir_root}; TFDS cannot make it on its own because '
          'the four configs are built together (shared vocabulary, cross-split deduplication).',
          errors.build_fix(os.fspath(self.data_dir_root), ' and load from that data_dir'))
    return {split: self._generate_examples(self._examples[split]) for split in SPLITS}

  def _generate_examples(self, examples: Sequence[Any]):
    # Keys are positions in the build's order; TFDS stores examples in the order of their hash.
    for index, ex in enumerate(examples):
      yield index, {'text': ex.text, 'doc_id': ex.doc_id, 'num_tokens': ex.num_tokens}


def _join(*parts: str) -> str:
  return posixpath.join(*parts) if '://' in parts[0] else os.path.join(*parts)


def relative_dir(config: str) -> str:
  """A prepared config's folder in its data_dir: 'mode_corpus/<config>/<version>'."""
  return f'{NAME}/{config}/{VERSION}'


def dataset_dir(data_dir: str, config: str) -> str:
  """Where a prepared config lives: <data_dir>/mode_corpus/<config>/<version>."""
  return _join(data_dir, *relative_dir(config).split('/'))


def tfds_name(config: str) -> str:
  """The versioned TFDS name of a config, e.g. 'mode_corpus/code:1.0.0'."""
  return f'{NAME}/{config}:{VERSION}'


def prepare(config: str, examples: Mapping[str, Sequence[Any]], metadata: Mapping[str, Any],
            data_dir: str) -> str:
  """Writes one config into the TFDS data_dir `data_dir` (local); returns its dataset dir."""
  builder = ModeCorpus(config=config, data_dir=data_dir, examples=examples, metadata=metadata)
  # TFDS prints its "Downloading and preparing" lines on stdout and progress bars on stderr;
  # the build logs its own progress, so they go to the log (stdout stays for results). (The
  # bars are a process-wide TFDS setting: off in a process that prepares.)
  tfds.display_progress_bar(False)
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    builder.download_and_prepare(
        download_dir=_join(data_dir, 'downloads'),
        download_config=tfds.download.DownloadConfig(
            # Nothing to look up on TFDS's GCS mirror or to recompute: the build has the stats.
            try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP))
  for line in printed.getvalue().splitlines():
    logging.info('tfds: %s', line)
  return os.fspath(builder.data_dir)
