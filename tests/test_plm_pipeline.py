"""A converted pre-trained LM through the pipeline: conversion stage, Pax evaluation of it, and a
MoDE expert trained on it by `paxml.main` with scanned backbone layers (tiny Llama, fixture data).
"""

import os
import re

import numpy as np
import pytest
from safetensors.numpy import save_file
import transformers

from mode_pax import checkpoints
from mode_pax import convert
from mode_pax import naming
from mode_pax import paths
from mode_pax import pipeline
from mode_pax import registry
from mode_pax.data import build as build_lib
from tests import run_env
from tests import test_convert
from tests import test_data
from tests import tiny_plm_experiments

MODULE = 'tests.tiny_plm_experiments'


@pytest.fixture(scope='module')
def plm_runs(tmp_path_factory):
  """A random tiny HF Llama (the 'PLM'), converted as the Backbone run; CodeExpert on it."""
  hf = str(tmp_path_factory.mktemp('hf'))
  config = test_convert._llama_config(  # pylint: disable=protected-access
      vocab_size=640, num_hidden_layers=4, tie_word_embeddings=False)
  model = transformers.FlaxLlamaForCausalLM(config, seed=0)
  save_file(test_convert._pt_layout(model.params),  # pylint: disable=protected-access
            os.path.join(hf, 'model.safetensors'), metadata={'format': 'pt'})
  config.save_pretrained(hf)
  data_dir = tmp_path_factory.mktemp('data')
  build_lib.build(test_data._config(data_dir))  # pylint: disable=protected-access
  runs_dir = tmp_path_factory.mktemp('runs')
  with run_env.pointed_at(data_dir, runs_dir), pytest.MonkeyPatch.context() as env:
    env.setenv(tiny_plm_experiments.PLM_ENV, hf)
    with pytest.MonkeyPatch.context() as patch:  # (the module may be imported already)
      patch.setattr(registry.lookup(f'{MODULE}.Backbone'), 'PRETRAINED', hf)
      metrics = pipeline.run_stages(MODULE, ['CodeExpert'], ['Backbone'], jobs=1)
    yield hf, metrics


def _vars(name):
  return checkpoints.read_variables(paths.checkpoint_dir(paths.run_dir(f'{MODULE}.{name}')))


def test_backbone_run_is_the_converted_plm_in_scanned_blocks(plm_runs):
  hf, metrics = plm_runs
  backbone = _vars('Backbone')
  plain = convert.to_pax_variables(*convert.read_hf_checkpoint(hf))
  # Layer l of the HF model is row l % 2 of the stacked variables of block l // 2.
  compared = 0
  for path, value in backbone.items():
    m = re.fullmatch(r'params/lm/transformer/blocks_(\d)/backbone/repeat/sub/x_layers_0/(.*)', path)
    if m:
      assert value.shape[0] == 2, path
      for k in range(2):
        np.testing.assert_array_equal(
            value[k], plain[f'params/lm/transformer/x_layers_{2 * int(m[1]) + k}/{m[2]}'])
        compared += 1
    else:
      np.testing.assert_array_equal(value, plain[path], err_msg=path)
  assert compared == sum('/x_layers_' in k for k in plain)
  # Pax evaluated the converted checkpoint (no training): accuracies per domain, in percent.
  assert set(metrics['Backbone']) == {'math', 'code', 'english', 'average'}
  assert all(0.0 <= v <= 100.0 for v in metrics['Backbone'].values())


def test_expert_trained_by_paxml_on_the_converted_backbone_keeps_it_bit_identical(plm_runs):
  del plm_runs
  backbone, expert = _vars('Backbone'), _vars('CodeExpert')
  assert paths.latest_checkpoint_step(
      paths.checkpoint_dir(paths.run_dir(f'{MODULE}.CodeExpert'))) == 2
  frozen = {k: v for k, v in expert.items()
            if re.fullmatch(naming.BACKBONE_LAYERS, k)
            or re.fullmatch(naming.BACKBONE_OUTSIDE_LAYERS, k)}
  assert set(frozen) == set(backbone)
  for k, v in frozen.items():
    np.testing.assert_array_equal(v, backbone[k], err_msg=k)
  # The expert and the gates did train: they moved away from their values at step 0.
  start = checkpoints.read_variables(
      paths.checkpoint_dir(paths.run_dir(f'{MODULE}.CodeExpert')), step=0)
  trained = [k for k in expert if re.fullmatch(naming.experts(0), k)
             or re.fullmatch(naming.GATES, k)]
  assert trained and all(not np.array_equal(expert[k], start[k]) for k in trained)


def test_a_build_in_another_tokenizer_is_refused_naming_the_build_command(
    plm_runs, tmp_path, monkeypatch):
  """A PLM experiment reads $MODE_PAX_DATA_DIR/<TOKENIZER>; a build there whose vocabulary is
  not the PLM's (here the fixture's trained SentencePiece) stops before anything runs."""
  del plm_runs
  (tmp_path / 'tiny').symlink_to(os.environ['MODE_PAX_DATA_DIR'])
  monkeypatch.setenv('MODE_PAX_DATA_DIR', str(tmp_path))
  experiment = type('TinyTokenizerExpert', (registry.lookup(f'{MODULE}.CodeExpert'),),
                    {'TOKENIZER': 'tiny', '__module__': MODULE})()
  assert experiment.data_dir() == str(tmp_path / 'tiny')
  with pytest.raises(ValueError, match=r"built with a vocabulary the build trained \(\d+ tokens\)"
                     r".*its own tokenizer 'tiny' \(640 tokens\).*--tokenizer=tiny"):
    experiment.validate()
