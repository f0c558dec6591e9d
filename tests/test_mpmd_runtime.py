"""The MPMD train step equals the SPMD step (loss, gradients, updated variables) on 8 devices."""

import numpy as np
import optax
import pytest

from mode_pax import checkpoints
from mode_pax import naming
from mode_pax.mpmd import build
from mode_pax.mpmd import model as model_lib
from mode_pax.mpmd import transfer
from mode_pax.mpmd import testing

EXP = testing.TinyMoDE
STEPS = 2


def _optimizer():
  # SGD with momentum: the second step exercises optimizer state kept on each mesh. (Adam's first
  # step divides gradients by their own magnitude, which amplifies fp32 noise in tiny gradients.)
  return optax.sgd(0.1, momentum=0.9)


def _batches():
  return [model_lib.synthetic_batch(EXP.TRAIN_BATCH_SIZE, EXP.SEQUENCE_LENGTH, EXP.VOCAB_SIZE,
                                    seed=s) for s in range(STEPS)]


@pytest.fixture(scope='module')
def init_vars():
  pieces, specs = build.pieces_of(EXP)
  return pieces.init(specs, seed=7)


@pytest.fixture(scope='module')
def spmd_run(init_vars):
  trainer = build.spmd_trainer(EXP, optimizer=_optimizer())
  trainer.recorder.enabled = True
  state, losses, grads = trainer.init_state(init_vars), [], []
  for batch in _batches():
    state, loss, _, g = trainer.step(state, batch)
    losses.append(float(loss))
    grads.append({k: np.asarray(v) for k, v in g.items()})
    trainer.recorder.enabled = False
  params = {k: np.asarray(v) for part in ('train', 'frozen') for k, v in state[part].items()}
  return dict(losses=losses, grads=grads, params=params, recorder=trainer.recorder)


def _mpmd_run(init_vars, plan, transport=None):
  trainer = build.mpmd_trainer(EXP, plan, optimizer=_optimizer(), transport=transport)
  trainer.recorder.enabled = True
  state, losses, grads, moved = trainer.init_state(init_vars), [], [], []
  for batch in _batches():
    trainer.transport.reset_counters()
    state, loss, _, g = trainer.step(state, batch)
    losses.append(float(loss))
    grads.append({k: np.asarray(v) for mesh in g.values() for k, v in mesh.items()})
    moved.append(trainer.transport.bytes_moved)
    trainer.recorder.enabled = False
  return dict(losses=losses, grads=grads, params=trainer.host_params(state), moved=moved,
              recorder=trainer.recorder, trainer=trainer)


@pytest.fixture(scope='module')
def mesh5_run(init_vars):
  return _mpmd_run(init_vars, 'mesh5')


def _assert_same(mpmd, spmd, init_vars):
  np.testing.assert_allclose(mpmd['losses'], spmd['losses'], rtol=1e-6)
  for step in range(STEPS):
    assert set(mpmd['grads'][step]) == set(spmd['grads'][step])
    for path, g in spmd['grads'][step].items():
      np.testing.assert_allclose(mpmd['grads'][step][path], g, rtol=1e-4, atol=1e-6,
                                 err_msg=f'step {step}: {path}')
  assert set(mpmd['params']) == set(spmd['params'])
  changed = 0
  for path, value in spmd['params'].items():
    np.testing.assert_allclose(mpmd['params'][path], value, rtol=1e-5, atol=1e-6, err_msg=path)
    changed += not np.array_equal(value, init_vars[path])
  assert changed > 0


def test_mesh5_step_equals_spmd_step(mesh5_run, spmd_run, init_vars):
  _assert_same(mesh5_run, spmd_run, init_vars)
  # Loss decreases on the repeated distribution; trainable = experts and gates only.
  grads = mesh5_run['grads'][0]
  assert grads and all('/experts_' in p or '/gate/' in p for p in grads)
  for path, value in init_vars.items():
    if '/backbone/' in path or '/transformer/' not in path:
      np.testing.assert_array_equal(mesh5_run['params'][path], value)  # frozen stays put


def test_mesh3_with_collective_permute_equals_spmd_step(spmd_run, init_vars):
  run = _mpmd_run(init_vars, 'mesh3', transport=transfer.PermuteTransport())
  _assert_same(run, spmd_run, init_vars)
  # Per block, forward: x to 2 meshes of 2 devices, 4 expert outputs to the 4 home devices;
  # backward: 4 output cotangents to 2 devices each, 2 input cotangents to the 4 home devices.
  act = EXP.TRAIN_BATCH_SIZE * EXP.SEQUENCE_LENGTH * EXP.MODEL_DIMS * 4
  assert run['moved'][0] == EXP.NUM_BLOCKS * ((2 * 2 + 4 * 4) + (4 * 2 + 2 * 4)) * act


def test_gradients_and_updates_stay_on_their_mesh(mesh5_run):
  trainer = mesh5_run['trainer']
  names = list(mesh5_run['recorder'].programs)
  assert any(n.startswith('update@mesh4') for n in names)
  assert {n.split('@')[0] for n in names} >= {
      'embed_fwd', 'experts_fwd', 'backbone_fwd', 'merge_fwd', 'head', 'merge_bwd',
      'experts_bwd', 'backbone_bwd', 'embed_bwd', 'update'}
  # One compiled program per piece and mesh: block programs are shared by both blocks.
  assert mesh5_run['recorder'].programs['backbone_fwd@mesh0'].calls == EXP.NUM_BLOCKS
  assert len(trainer.meshes) == 5


def test_five_meshes_move_fewer_bytes_than_one(mesh5_run, spmd_run):
  one = spmd_run['recorder'].collective_bytes()
  five = mesh5_run['recorder'].collective_bytes() + mesh5_run['moved'][0]
  assert one > 0 and 0 < five < one, (one, five)
  # Experts on one device each have no collectives of their own.
  assert mesh5_run['recorder'].programs['experts_fwd@mesh1'].stats.get('count', 0) == 0


def test_starts_from_a_pax_checkpoint(tmp_path, init_vars):
  """A plain TransformerLm backbone checkpoint fills the MoDE backbone (Pax's load rules)."""
  plain = {}
  for path, value in init_vars.items():
    if '/backbone/' in path:
      block = int(path.split('/blocks_')[1].split('/')[0])
      layer = int(path.split('/x_layers_')[1].split('/')[0])
      rest = path.split(f'/x_layers_{layer}/')[1]
      plain[f'params/lm/transformer/x_layers_{block * 2 + layer}/{rest}'] = value + 1.0
    elif '/transformer/' not in path:
      plain[path] = value + 1.0
  checkpoints.write_variables(str(tmp_path / 'checkpoint_00000005' / 'state'), plain)
  loaded, provenance = checkpoints.load_into(
      init_vars, str(tmp_path), load_rules=naming.backbone_from_transformer_lm(4, 2))
  for path, value in init_vars.items():
    if '/backbone/' in path or '/transformer/' not in path:
      np.testing.assert_array_equal(loaded[path], value + 1.0)
      assert provenance[path].endswith('checkpoint_00000005')
    else:
      np.testing.assert_array_equal(loaded[path], value)
      assert provenance[path] == 'random_init'
  trainer = build.mpmd_trainer(EXP, 'mesh5', optimizer=_optimizer())
  state = trainer.init_state(loaded)
  _, loss, _, _ = trainer.step(state, _batches()[0])
  assert np.isfinite(float(loss))
