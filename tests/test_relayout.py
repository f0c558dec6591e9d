"""A backbone run relaid out into other blocks (`mode_pax.convert --run`, PRETRAINED='run:...').

With scanned layers every run stores the backbone in its own blocks, and Pax's warm-start rules
cannot split or stack a variable, so Table 3's runs in other blocks start from the Backbone run
relaid out (`BackboneB{b}`). Here a tiny scanned Backbone is trained by `paxml.main` (through
the pipeline, which schedules the relayout after it), relaid out into 1, 2 and 6 blocks and into
a plain (unscanned) TransformerLm, and each layout's praxis model must compute the same logits as
the trained run's on the same batch; a MoDE expert trained by Pax on the relayout keeps it
bit-identical; bad inputs are refused, naming the problem, before anything is written.
"""

import re

import jax
from jax import numpy as jnp
import numpy as np
from praxis import base_layer
from praxis import pax_fiddle
from praxis.layers import activations
import pytest

from mode import studies
from mode_pax import checkpoints
from mode_pax import convert
from mode_pax import lm_batch
from mode_pax import naming
from mode_pax import paths
from mode_pax import pipeline
from mode_pax import registry
from mode_pax import trees
from mode_pax.data import build as build_lib
from mode_pax.layers import mode as mode_layers
from tests import run_env
from tests import test_data
from tests import tiny_scanned_experiments  # pylint: disable=unused-import

MODULE = 'tests.tiny_scanned_experiments'


def _cls(name):
  return registry.lookup(f'{MODULE}.{name}')


def _ckpt_dir(name):
  return paths.checkpoint_dir(paths.run_dir(f'{MODULE}.{name}'))


# ---- configuration: which runs start from a relayout, and in which order they run --------------


def test_only_scanned_variants_in_other_blocks_start_from_a_relayout():
  for blocks in (2, 6):
    backbone = _cls(f'BackboneB{blocks}')
    assert (backbone.NUM_BLOCKS, backbone.MAX_STEPS, backbone.PRETRAINED) == (
        blocks, 0, 'run:Backbone')
    assert convert.pretrained_run(backbone) is _cls('Backbone')
    for layers in (1, 2):
      assert _cls(f'CodeExpertB{blocks}L{layers}').BACKBONE == f'BackboneB{blocks}'
  assert _cls('CodeExpertB3L1').BACKBONE == 'Backbone'  # the Backbone run's own blocks
  # The small scale scans; paper scale and the unscanned tiny scale are as before.
  assert registry.lookup('mode.small.CodeExpertB6L2').BACKBONE == 'BackboneB6'
  assert registry.lookup('mode.small.BackboneB2').PRETRAINED == 'run:Backbone'
  for unscanned in ('mode', 'tests.tiny_experiments'):
    assert registry.lookup(f'{unscanned}.CodeExpertB6L2').BACKBONE == 'Backbone'
    with pytest.raises(ValueError, match='No experiment'):
      registry.lookup(f'{unscanned}.BackboneB6')
  variants = {'X': ('CodeExpert', dict(NUM_BLOCKS=2))}
  assert studies.with_backbone_relayouts(variants, None) == variants


def test_the_relayout_runs_after_its_run_and_is_no_row_of_table3():
  from mode_pax import studies as study_runner  # pylint: disable=g-import-not-at-top
  assert pipeline.upstream_stages(MODULE, 'BackboneB6') == ['Backbone']
  assert pipeline.upstream_stages(MODULE, 'CodeExpertB6L1') == ['BackboneB6']
  order, deps = pipeline.schedule(MODULE, ['CodeExpertB6L1', 'CodeExpertB2L2'])
  assert [name for _, name in order] == [
      'Backbone', 'BackboneB6', 'CodeExpertB6L1', 'BackboneB2', 'CodeExpertB2L2']
  assert deps[('train', 'BackboneB6')] == {('train', 'Backbone')}
  runs = study_runner.study_runs('table3', MODULE)
  assert runs == [f'CodeExpertB{b}L{l}' for b in (2, 3, 6) for l in (1, 2)]


def test_a_run_name_that_resolves_to_nothing_is_named():
  bad = type('BadRelayout', (_cls('BackboneB2'),), {'PRETRAINED': 'run:NoSuchRun',
                                                    '__module__': MODULE})
  with pytest.raises(ValueError, match=r"PRETRAINED='run:NoSuchRun': no experiment 'NoSuchRun'"):
    convert.pretrained_run(bad)
  assert convert.pretrained_run(_cls('Backbone')) is None


@pytest.mark.parametrize('scan', [True, False])
@pytest.mark.parametrize('blocks', [1, 2, 3, 6])
def test_to_plain_layout_inverts_to_layout(blocks, scan):
  plain_lm = _cls('Backbone')().backbone_lm()
  blocked = mode_layers.blocked_backbone(plain_lm, num_blocks=blocks, scan_layers=scan)
  rng = np.random.default_rng(0)
  plain = {k: rng.standard_normal(v.shape).astype(np.float32)
           for k, v in convert.backbones.abstract_variables(plain_lm).items()}
  laid_out = convert.to_layout(dict(plain), blocked)
  assert any(f'/blocks_{blocks - 1}/backbone/' in k for k in laid_out)
  assert not any(k.startswith('params/lm/transformer/x_layers_') for k in laid_out)
  assert any('/repeat/sub/' in k for k in laid_out) == scan
  back = convert.to_plain_layout(laid_out, blocked)
  assert set(back) == set(plain)
  for k, v in plain.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


# ---- runs: a scanned Backbone trained by paxml.main, relaid out ---------------------------------


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The fixture data; the pipeline trains Backbone, relays it out as BackboneB2 and trains
  CodeExpertB2L1 on it (paxml.main and mode_pax.convert subprocesses), then BackboneB6."""
  data_dir = tmp_path_factory.mktemp('data')
  build_lib.build(test_data._config(data_dir))  # pylint: disable=protected-access
  runs_dir = tmp_path_factory.mktemp('runs')
  with run_env.pointed_at(data_dir, runs_dir):
    pipeline.run_stages(MODULE, ['CodeExpertB2L1'], jobs=1)
    pipeline.train_stage(MODULE, 'BackboneB6')
    yield runs_dir


def _logits(experiment_cls, variables, ids):
  """The logits of `experiment_cls`'s stored backbone (praxis apply) with `variables`."""
  lm_tpl = experiment_cls().stored_backbone_lm()
  lm_tpl.name = 'lm'
  lm_tpl.ici_mesh_shape = lm_tpl.dcn_mesh_shape = lm_tpl.mesh_axis_names = None
  lm = pax_fiddle.instantiate(lm_tpl)
  params = trees.unflatten({k.removeprefix('params/lm/'): jnp.asarray(v)
                            for k, v in variables.items()})
  batch = lm_batch.lm_batch(ids, ids)
  fn = lambda p: lm.apply({'params': p}, batch.ids, batch.paddings,
                          segment_ids=batch.segment_ids, segment_pos=batch.segment_pos,
                          rngs={base_layer.RANDOM: jax.random.PRNGKey(0)}).logits
  return np.asarray(jax.jit(fn)(params))


def test_relaid_out_backbones_compute_the_trained_runs_logits(runs, tmp_path):
  del runs
  ids = np.random.default_rng(1).integers(3, 600, (2, 16)).astype(np.int32)
  trained = checkpoints.read_variables(_ckpt_dir('Backbone'))
  assert paths.latest_checkpoint_step(_ckpt_dir('Backbone')) == 2
  # The trained run is stored scanned in its 3 blocks (the layout every run of the scale loads).
  assert any(k.startswith('params/lm/transformer/blocks_2/backbone/repeat/sub/x_layers_0/')
             for k in trained)
  reference = _logits(_cls('Backbone'), trained, ids)
  scale = float(np.max(np.abs(reference)))
  assert scale > 0
  # The pipeline's relayouts (2 and 6 blocks), and 1 block and a plain LM written here.
  layouts = {f'BackboneB{b}': (_cls(f'BackboneB{b}'), _ckpt_dir(f'BackboneB{b}')) for b in (2, 6)}
  for name, attrs in (('OneBlock', dict(NUM_BLOCKS=1)), ('Plain', dict(SCAN_LAYERS=False))):
    target = type(name, (_cls('BackboneB2'),), dict(attrs, __module__=MODULE))
    convert.relayout(run=f'{MODULE}.Backbone', out=str(tmp_path / name), experiment=target())
    layouts[name] = (target, str(tmp_path / name))
  for name, (target, ckpt) in layouts.items():
    variables = checkpoints.read_variables(ckpt)
    assert paths.latest_checkpoint_step(ckpt) == 0, name
    assert set(variables) == set(convert.backbones.abstract_variables(
        target().stored_backbone_lm())), name
    if name == 'Plain':
      assert not any('/blocks_' in k for k in variables)
    else:
      per_block = 6 // target.NUM_BLOCKS
      first = 'params/lm/transformer/blocks_0/backbone/repeat/sub/x_layers_0/layer_norm/scale'
      assert variables[first].shape[0] == per_block, name
    ours = _logits(target, variables, ids)
    diff = float(np.max(np.abs(ours - reference)))
    assert diff <= 1e-5 * scale, (name, diff, scale)


def test_an_expert_trained_by_pax_on_the_relayout_keeps_it_bit_identical(runs):
  del runs
  relaid_out = checkpoints.read_variables(_ckpt_dir('BackboneB2'))
  expert = checkpoints.read_variables(_ckpt_dir('CodeExpertB2L1'))
  frozen = {k: v for k, v in expert.items() if re.fullmatch(naming.BACKBONE_LAYERS, k)
            or re.fullmatch(naming.BACKBONE_OUTSIDE_LAYERS, k)}
  assert set(frozen) == set(relaid_out)
  for k, v in frozen.items():
    np.testing.assert_array_equal(v, relaid_out[k], err_msg=k)
  provenance = checkpoints.read_provenance(paths.run_dir(f'{MODULE}.CodeExpertB2L1'))
  assert any(_ckpt_dir('BackboneB2') in where for where in provenance.values())


# ---- bad inputs: refused naming the problem, nothing written -----------------------------------


def _refused(args, match, tmp_path, capsys=None):
  out = tmp_path / 'out'
  with pytest.raises(SystemExit) as error:
    convert.main(args + [f'--out={out}'])
  message = str(error.value) + (capsys.readouterr().err if capsys else '')
  assert re.search(match, message), message
  assert not out.exists()


@pytest.mark.parametrize('field,value', [('NUM_LAYERS', 4), ('MODEL_DIMS', 64),
                                         ('VOCAB_SIZE', 1024)])
def test_a_target_with_another_architecture_is_refused_naming_the_field(tmp_path, field, value):
  # Checked from the configs alone, before any checkpoint is read.
  target = type('Other', (_cls('BackboneB2'),), {field: value, '__module__': MODULE})
  with pytest.raises(convert.ConversionError,
                     match=rf'{field}: Backbone {getattr(_cls("Backbone"), field)!r}, Other '
                     rf'{value!r}'):
    convert.relayout(run=f'{MODULE}.Backbone', out=str(tmp_path / 'out'), experiment=target())
  assert not (tmp_path / 'out').exists()


def test_a_config_difference_the_settings_do_not_show_is_named(tmp_path):
  target = type('Gelu', (_cls('BackboneB2'),), {'ACTIVATION_CLS': activations.GELU,
                                                '__module__': MODULE})
  with pytest.raises(convert.ConversionError,
                     match=r'lm\.stacked_transformer_tpl\.transformer_layer_params_tpl\.'
                     r'tr_fflayer_tpl\.activation_tpl: ReLU vs GELU'):
    convert.relayout(run=f'{MODULE}.Backbone', out=str(tmp_path / 'out'), experiment=target())
  assert not (tmp_path / 'out').exists()


def test_bad_runs_are_refused_naming_the_problem(runs, tmp_path, monkeypatch, capsys):
  del runs
  exp = f'--exp={MODULE}.BackboneB2'
  _refused([f'--run={MODULE}.NoSuchRun', exp], r"No experiment 'tests\.tiny_scanned_experiments"
           r"\.NoSuchRun'", tmp_path)
  _refused([f'--run={MODULE}.Backbone'], r'--run needs --exp', tmp_path, capsys)
  # A run with experts is not a backbone.
  _refused([f'--run={MODULE}.CodeExpertB2L1', exp],
           r'the run of tests\.tiny_scanned_experiments\.CodeExpertB2L1 is not a backbone run '
           r'.*extra .*experts_0', tmp_path)
  # An unfinished run.
  monkeypatch.setattr(_cls('Backbone'), 'MAX_STEPS', 10)
  _refused([f'--run={MODULE}.Backbone', exp], r'newest checkpoint is step 2 of 10 in .*finish '
           r'it first: python -m paxml\.main --exp=tests\.tiny_scanned_experiments\.Backbone',
           tmp_path)
  monkeypatch.undo()
  # No run there.
  monkeypatch.setenv('MODE_PAX_RUNS', str(tmp_path / 'elsewhere'))
  _refused([f'--run={MODULE}.Backbone', exp], r'the run of tests\.tiny_scanned_experiments\.'
           r'Backbone: no checkpoint in .*elsewhere', tmp_path)
  assert not (tmp_path / 'elsewhere').exists()
  # An existing checkpoint is not overwritten.
  monkeypatch.undo()
  with pytest.raises(FileExistsError):
    convert.relayout(run=f'{MODULE}.Backbone', out=_ckpt_dir('BackboneB2'),
                     experiment=_cls('BackboneB2')())
