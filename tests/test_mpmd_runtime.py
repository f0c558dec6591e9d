"""The MPMD train step equals the SPMD step (loss, gradients, updated variables) on 8 devices,
and with the experiment's learner, paxml's own train step."""

import functools
import re

import jax
from jax import numpy as jnp
import numpy as np
import optax
from paxml import checkpoints as pax_checkpoints
from paxml import tasks_lib
from paxml import trainer_lib
from paxml.tasks.lm import model_params
from praxis import base_hyperparams
from praxis import py_utils
import pytest

from mode_pax import checkpoints
from mode_pax import naming
from mode_pax.mpmd import build
from mode_pax.mpmd import common
from mode_pax.mpmd import flops
from mode_pax.mpmd import model as model_lib
from mode_pax.mpmd import transfer
from mode_pax.mpmd import testing
from mode_pax.trees import flatten

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
  return dict(losses=losses, grads=grads, params=params, recorder=trainer.recorder,
              trainer=trainer, state=state)


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
  params = trainer.host_params(state)
  # The loss of the first batch again, now after training (a step returns its loss before the
  # update).
  _, loss_after, _, _ = trainer.step(state, _batches()[0])
  return dict(losses=losses, grads=grads, params=params, moved=moved, recorder=trainer.recorder,
              trainer=trainer, loss_after=float(loss_after))


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
  # Training lowered the loss of a batch it trained on (the steps change the loss by far more
  # than fp32 noise: 4.58 -> 4.12 here; a skipped update leaves it equal).
  assert mesh5_run['loss_after'] < mesh5_run['losses'][0] - 0.1, (
      mesh5_run['losses'], mesh5_run['loss_after'])
  # Trainable = experts and gates only.
  grads = mesh5_run['grads'][0]
  assert grads and all('/experts_' in p or '/gate/' in p for p in grads)
  for path, value in init_vars.items():
    if '/backbone/' in path or '/transformer/' not in path:
      np.testing.assert_array_equal(mesh5_run['params'][path], value)  # frozen stays put


def test_mesh3_with_collective_permute_equals_spmd_step(spmd_run, init_vars):
  run = _mpmd_run(init_vars, 'mesh3', transport=transfer.PermuteTransport())
  _assert_same(run, spmd_run, init_vars)
  # Per block, forward: x to 2 meshes of 2 devices, 4 expert outputs to the 4 home devices;
  # backward: 4 output cotangents to 2 devices each, 2 input cotangents to the 4 home devices
  # except in block 0, whose input cotangent nothing trainable needs (frozen embedding).
  act = EXP.TRAIN_BATCH_SIZE * EXP.SEQUENCE_LENGTH * EXP.MODEL_DIMS * 4
  per_block = (2 * 2 + 4 * 4) + (4 * 2 + 2 * 4)
  assert run['moved'][0] == (EXP.NUM_BLOCKS * per_block - 2 * 4) * act


def test_gradients_and_updates_stay_on_their_mesh(mesh5_run):
  trainer = mesh5_run['trainer']
  programs = mesh5_run['recorder'].programs
  names = list(programs)
  assert any(n.startswith('update@mesh4') for n in names)
  kinds = {n.split('@')[0].split('[')[0] for n in names}
  assert kinds >= {'embed_fwd', 'experts_fwd', 'backbone_fwd', 'merge_fwd', 'head', 'merge_bwd',
                   'experts_bwd', 'backbone_bwd', 'update'}
  # The embedding is frozen: no embedding backward; block 0 (nothing trainable upstream) runs its
  # backbone forward without a pullback and has no backbone backward (a frozen backbone's only
  # cotangent is its input's); the experts' pullbacks of block 0 are w.r.t. their weights only.
  assert 'embed_bwd' not in kinds and 'embed_fwd[no grad]@mesh0' in programs
  assert programs['backbone_fwd[no grad]@mesh0'].calls == 1
  assert programs['backbone_bwd[d:x]@mesh0'].calls == EXP.NUM_BLOCKS - 1
  for m in range(1, 5):
    assert programs[f'experts_bwd[d:w]@mesh{m}'].calls == 1
    assert programs[f'experts_bwd@mesh{m}'].calls == EXP.NUM_BLOCKS - 1
  # One compiled program per piece, variant and mesh: block programs are shared by blocks.
  assert sum(p.calls for n, p in programs.items()
             if n.startswith('backbone_fwd')) == EXP.NUM_BLOCKS
  assert len(trainer.meshes) == 5


def test_five_meshes_move_fewer_bytes_than_one(mesh5_run, spmd_run):
  one = spmd_run['recorder'].collective_bytes()
  five = mesh5_run['recorder'].collective_bytes() + mesh5_run['moved'][0]
  assert one > 0 and 0 < five < one, (one, five)
  # Experts on one device each have no collectives of their own.
  assert mesh5_run['recorder'].programs['experts_fwd@mesh1'].stats.get('count', 0) == 0


def _lowered_flops(fn, *args) -> float:
  return flops.cost_flops(jax.jit(fn).lower(*args))


def _block0_waste(init_vars) -> dict[str, float]:
  """Independent of the runtime: logical FLOPs of block 0's backward pieces with jax.vjp, with
  and without the input cotangent: {'expert': (with x, without x), 'backbone': with x}."""
  pieces, _ = build.pieces_of(EXP)
  batch = _batches()[0]
  inputs = pieces.inputs(model_lib.batch_to_map(batch))
  trainable = build.experiment_instance(EXP).trainable_variables()
  x = np.zeros((EXP.TRAIN_BATCH_SIZE, EXP.SEQUENCE_LENGTH, EXP.MODEL_DIMS), np.float32)

  def branch(name):
    prefix = model_lib.branch_prefix(0, name)
    rel = {p[len(prefix):]: v for p, v in init_vars.items() if p.startswith(prefix)}
    train = {k: v for k, v in rel.items() if common.is_trainable(prefix + k, trainable)}
    return train, {k: v for k, v in rel.items() if k not in train}

  def backward(apply, train, frozen, wrt_x):
    """FLOPs of applying jax.vjp's pullback (w.r.t. the weights, and x when wrt_x)."""
    f = lambda tr, x: apply({**tr, **frozen}, x, *inputs)  # pylint: disable=unnecessary-lambda-assignment
    if wrt_x:
      _, pullback = jax.jit(lambda tr, x: jax.vjp(f, tr, x))(train, x)
    else:
      _, pullback = jax.jit(lambda tr, x: jax.vjp(lambda tr: f(tr, x), tr))(train, x)
    return _lowered_flops(lambda pb, g: pb(g), pullback, x)

  expert = branch('experts_0')
  bb_train, bb_frozen = branch('backbone')
  assert expert[0] and not bb_train  # MoDE: experts train, the backbone is frozen
  return dict(expert=(backward(pieces.expert, *expert, True),
                      backward(pieces.expert, *expert, False)),
              backbone=backward(pieces.backbone, bb_train, bb_frozen, True))


def test_backward_computes_no_cotangent_of_frozen_variables(mesh5_run, spmd_run, init_vars):
  """The MPMD backward does no more work than the SPMD step's (jax.grad of the whole model)."""
  batch = _batches()[0]
  mpmd = flops.mpmd_step_flops(mesh5_run['trainer'], mesh5_run['trainer'].init_state(init_vars),
                               batch, counts=('lowered',))['lowered']
  spmd = flops.spmd_step_flops(spmd_run['trainer'], spmd_run['state'], batch,
                               counts=('lowered',))['lowered']
  waste = _block0_waste(init_vars)
  (with_x, without_x), backbone = waste['expert'], waste['backbone']
  # Block 0's input cotangent is real work: the whole backbone block's backward, and through
  # each expert the input norm's backward (only that: the norm's trainable scale needs the
  # cotangent at the first projection's input anyway).
  block0_waste = EXP.NUM_DOMAIN_EXPERTS * (with_x - without_x) + backbone
  assert with_x > without_x > 0 and block0_waste > 0.05 * spmd.backward, (waste, spmd)
  # The experts' block-0 pullbacks are w.r.t. their weights only (the independent count) ...
  programs = mesh5_run['recorder'].programs
  np.testing.assert_allclose(programs['experts_bwd[d:w]@mesh1'].lowered_flops, without_x,
                             rtol=0.02)
  # ... and the step's backward is the SPMD step's, not block0_waste above it (fusion and
  # program boundaries leave well under 1% apart).
  assert mpmd.backward <= 1.005 * spmd.backward, (mpmd, spmd)
  assert mpmd.backward + 0.5 * block0_waste > spmd.backward, (mpmd, spmd, block0_waste)
  assert abs(mpmd.forward - spmd.forward) < 0.02 * spmd.forward, (mpmd, spmd)


def _save_with_paxml(ckpt_dir: str, step: int) -> dict[str, np.ndarray]:
  """A plain praxis TransformerLm of EXP's size, initialised and saved by paxml's own code.

  paxml's LM experiment builds the model (no MoDE layers), `trainer_lib` its train state and
  `checkpoints.save_checkpoint` the GDA (Orbax/tensorstore) checkpoint a pjit run of paxml.main
  writes. Returns the model variables as saved (the train state in memory), keyed by path.
  """
  exp = build.experiment_instance(EXP)
  task = base_hyperparams.instantiate(model_params.TransformerLmSpmdAdafactor.task(exp))
  specs = model_lib.input_specs(EXP.TRAIN_BATCH_SIZE, EXP.SEQUENCE_LENGTH)
  state, _ = trainer_lib.initialize_model_state(task, jax.random.PRNGKey(5), specs,
                                                do_init_checkpoint_rules=False)
  state = state.replace(step=state.step + step)
  pax_checkpoints.save_checkpoint(state, ckpt_dir,
                                  checkpoint_type=pax_checkpoints.CheckpointType.GDA)
  return {k.replace('.', '/'): np.asarray(v)
          for k, v in py_utils.NestedMap(state.mdl_vars).FlattenItems()}


def _plain_lm_path(path: str) -> str | None:
  """Where a MoDE backbone variable lives in the plain LM (None: experts, gates).

  Layer l of block b is layer b * L/B + l of the plain LM; the rest keeps its name.
  """
  m = re.fullmatch(r'params/lm/transformer/blocks_(\d+)/backbone/x_layers_(\d+)/(.*)', path)
  if m:
    per_block = EXP.NUM_LAYERS // EXP.NUM_BLOCKS
    return f'params/lm/transformer/x_layers_{int(m[1]) * per_block + int(m[2])}/{m[3]}'
  return None if '/transformer/' in path else path


def test_starts_from_a_checkpoint_paxml_wrote(tmp_path, init_vars):
  """paxml's plain TransformerLm checkpoint fills the MoDE backbone (Pax's load rules)."""
  saved = _save_with_paxml(str(tmp_path), step=5)
  rules = naming.backbone_from_transformer_lm(EXP.NUM_LAYERS, EXP.NUM_BLOCKS)
  loaded, provenance = checkpoints.load_into(init_vars, str(tmp_path), load_rules=rules,
                                             safe_load=True)
  sources = set()
  for path, value in init_vars.items():
    src = _plain_lm_path(path)
    if src is None:
      np.testing.assert_array_equal(loaded[path], value, err_msg=path)
      assert provenance[path] == 'random_init'
      continue
    sources.add(src)
    np.testing.assert_array_equal(loaded[path], saved[src], err_msg=path)
    assert provenance[path] == str(tmp_path / 'checkpoint_00000005')
    if value.ndim >= 2:  # random weights: paxml drew other values than our initialisation
      assert not np.array_equal(loaded[path], value), path
  assert sources == set(saved)  # every variable paxml saved went somewhere

  # An ignore rule is a prefix match in Pax (re.match): it keeps block 1 at its initial values.
  loaded, _ = checkpoints.load_into(init_vars, str(tmp_path), load_rules=rules,
                                    ignore_rules=[r'params/lm/transformer/blocks_1/'])
  for path, value in init_vars.items():
    expected = value if '/blocks_1/' in path or _plain_lm_path(path) is None else (
        saved[_plain_lm_path(path)])
    np.testing.assert_array_equal(loaded[path], expected, err_msg=path)

  trainer = build.mpmd_trainer(EXP, 'mesh5', optimizer=_optimizer())
  state = trainer.init_state(loaded)
  _, loss, _, _ = trainer.step(state, _batches()[0])
  assert np.isfinite(float(loss))


def _pax_mapping(names, load_rules, ignore_rules, safe_load=False) -> dict[str, str]:
  """paxml's own mapping (tasks_lib._get_var_mapping, Pax's dotted names) for '/' paths."""
  mapping, _ = tasks_lib._get_var_mapping(  # pylint: disable=protected-access
      [n.replace('/', '.') for n in names], [(re.compile(r), f) for r, f in load_rules],
      [re.compile(r) for r in ignore_rules], {}, 'ckpt', 'Var', safe_load)
  return {k.replace('.', '/'): v.replace('.', '/') for k, v in mapping.items()}


def _fullmatch_mapping(names, load_rules, ignore_rules) -> dict[str, str]:
  """What whole-path matching would map instead (the semantics Pax does not have)."""
  out = {}
  for name in names:
    if any(re.fullmatch(r, name) for r in ignore_rules):
      continue
    for regex, fmt in load_rules:
      m = re.fullmatch(regex, name)
      if m:
        out[name] = fmt.format(*m.groups())
        break
  return out


@pytest.mark.parametrize('load_rules,ignore_rules', [
    # An ignore rule that is a prefix of the paths of block 1.
    (naming.backbone_from_transformer_lm(4, 2), [r'params/lm/transformer/blocks_1/']),
    # A rule matching the start of the softmax paths, ahead of a rule matching every path: the
    # first rule that matches wins, with the rest of the path dropped from its groups.
    ([(r'params/lm/softmax/logits_ffn/(\w+)', 'params/lm/emb/{}'), (r'(params/lm/.*)', '{}')],
     []),
])
def test_load_rules_map_variables_as_pax_does(init_vars, load_rules, ignore_rules):
  names = list(init_vars)
  mapping = checkpoints.var_mapping(names, load_rules, ignore_rules)
  assert mapping == _pax_mapping(names, load_rules, ignore_rules)
  assert mapping != _fullmatch_mapping(names, load_rules, ignore_rules)  # the case tells them apart


@pytest.mark.parametrize('load_rules,refused', [
    # The first rule maps nothing (a MoDE LM has no transformer/x_layers_0).
    ([(r'params/lm/transformer/x_layers_0/(.*)', 'params/lm/{}'), (r'(params/lm/.*)', '{}')],
     True),
    # The second rule is never tried: the first matches every path first.
    ([(r'(params/lm/.*)', '{}'), (r'params/lm/transformer/x_layers_0/(.*)', 'params/lm/{}')],
     False),
])
def test_safe_load_refuses_rules_that_map_nothing_as_pax_does(init_vars, load_rules, refused):
  names = list(init_vars)
  for mapping_fn in (checkpoints.var_mapping, _pax_mapping):
    if refused:
      with pytest.raises(ValueError, match='x_layers_0'):
        mapping_fn(names, load_rules, [], safe_load=True)
    else:
      assert mapping_fn(names, load_rules, [], safe_load=True) == {n: n for n in names}


class TinyMoDELearner(testing.TinyMoDE):
  """TinyMoDE (2 backbone layers, 2 experts) on 3 meshes (backbone on devices 0-1, one expert on
  device 2, one on 3) with a learner whose every part acts within 4 steps: learning rate 0
  (warm-up), 1e-2, 1e-2, 1e-3 (decay); weight decay 0.5; clipping at 0.5 (norms are ~1.5)."""
  NUM_LAYERS = 2
  NUM_DOMAIN_EXPERTS = 2
  MESH_PLAN = '0,1|2|3'
  NUM_DEVICES = 4
  LEARNING_RATE = 1e-2
  WARMUP_STEPS = 1
  MAX_STEPS = 3
  WEIGHT_DECAY = 0.5
  CLIP_GRADIENT_NORM_TO_VALUE = 0.5

  def task(self):
    task_p = super().task()
    # Fewer summaries for paxml's step (compile time): the gates' (verbosity 2) stay.
    task_p.summary_verbosity = 2
    task_p.train.variable_norm_summary = False
    # Adafactor's momentum in float32, not int8: an int8 rounding boundary turns a 1-ulp gradient
    # difference (other program boundaries than paxml's) into 1/127 of the momentum's scale
    # (2e-5 in the variables after 4 steps, against 4e-8 in float32).
    task_p.train.learner.optimizer.quantized_dtype = 'float32'
    return task_p


LEARNER_STEPS = 4


def _paxml_steps(batches):
  """paxml's own train step (trainer_lib.train_step_single_learner) of TinyMoDELearner from
  paxml's initial state: (initial variables, [(loss, summaries, variables) per step])."""
  exp = TinyMoDELearner()
  task = base_hyperparams.instantiate(exp.task())
  specs = model_lib.input_specs(exp.TRAIN_BATCH_SIZE, exp.SEQUENCE_LENGTH)
  state, _ = trainer_lib.initialize_model_state(task, jax.random.PRNGKey(5), specs,
                                                do_init_checkpoint_rules=False)
  init = {k: np.asarray(v) for k, v in flatten(state.mdl_vars).items()}
  step = jax.jit(functools.partial(trainer_lib.train_step_single_learner, task,
                                   fprop_dtype=jnp.float32))
  out = []
  with common.make_mesh([0]):  # one device: the same arithmetic, the fastest compile
    state = jax.device_put(state, jax.devices()[0])
    for batch in batches:
      state, step_out = step(state, jax.random.PRNGKey(0), model_lib.batch_to_map(batch))
      out.append((float(step_out.loss), {k: float(v) for k, v in step_out.summary_tensors.items()},
                  {k: np.asarray(v) for k, v in flatten(state.mdl_vars).items()}))
  return init, out


def test_learner_steps_equal_paxml_train_steps():
  """MPMD (3 meshes) and SPMD steps with the experiment's learner (ShardedAdafactor, schedule,
  weight decay, clipping by the norm over all meshes) equal paxml's own train steps."""
  exp = TinyMoDELearner()
  batches = [model_lib.synthetic_batch(exp.TRAIN_BATCH_SIZE, exp.SEQUENCE_LENGTH,
                                       exp.VOCAB_SIZE, seed=s) for s in range(LEARNER_STEPS)]
  init, pax = _paxml_steps(batches)
  lr = [summaries['learning/lr_aggregate_scalar'] for _, summaries, _ in pax]
  scale = [summaries['learning/grad_scale_aggregate_scalar'] for _, summaries, _ in pax]
  assert lr[0] == 0 < lr[1] and lr[3] < lr[2], lr  # warm-up, then decay
  assert max(scale) < 0.5, scale  # clipping acts on every step
  gate_keys = {f'lm/transformer/blocks_{b}/gate_weight_{w}_scalar'
               for b in range(exp.NUM_BLOCKS) for w in ('backbone', 'expert_0', 'expert_1')}
  learner_keys = {f'{k}_aggregate_scalar' for k in (
      'lr', 'learning/lr', 'learning/raw_grad_norm', 'learning/grad_scale',
      'learning/clipped_grad_norm', 'learning/is_valid_step', 'learning/var_norm')}
  trainers = {'mpmd': build.mpmd_trainer(TinyMoDELearner), 'spmd': build.spmd_trainer(
      TinyMoDELearner, [0, 1])}
  assert len(trainers['mpmd'].meshes) == 3
  for name, trainer in trainers.items():
    state = trainer.init_state(init)
    for i, batch in enumerate(batches):
      state, out = trainer.train_step(state, batch)
      pax_loss, pax_summaries, pax_vars = pax[i]
      where = f'{name} step {i}'
      np.testing.assert_allclose(float(out.loss), pax_loss, rtol=1e-6, err_msg=where)
      assert set(out.summaries) >= gate_keys | learner_keys, where
      for key, value in out.summaries.items():
        np.testing.assert_allclose(float(value), pax_summaries[key], rtol=1e-5,
                                   err_msg=f'{where}: {key}')
      params = (trainer.host_params(state) if name == 'mpmd' else
                {k: np.asarray(v) for part in ('train', 'frozen') for k, v in state[part].items()})
      assert set(params) == set(pax_vars)
      for path, value in pax_vars.items():
        np.testing.assert_allclose(params[path], value, rtol=1e-5, atol=1e-7,
                                   err_msg=f'{where}: {path}')
    assert trainer.step_count(state) == LEARNER_STEPS
