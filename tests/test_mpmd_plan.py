"""Mesh plans: the paper's presets and clear errors for plans that cannot run."""

import jax
import optax
import pytest

from mode_pax.mpmd import build
from mode_pax.mpmd import plan as plan_lib
from mode_pax.mpmd import runtime
from mode_pax.mpmd import testing

PlanError = plan_lib.PlanError


def test_paper_presets_for_8_devices():
  one = plan_lib.get_plan('mesh1').validate(8, 4)
  assert one.meshes() == [tuple(range(8))] and one.is_spmd
  three = plan_lib.get_plan('mesh3').validate(8, 4)
  assert three.meshes() == [(0, 1, 2, 3), (4, 5), (6, 7)]
  assert [three.mesh_index_of_expert(j) for j in range(4)] == [1, 1, 2, 2]
  five = plan_lib.get_plan('mesh5').validate(8, 4)
  assert five.meshes() == [(0, 1, 2, 3), (4,), (5,), (6,), (7,)]
  size = plan_lib.get_plan('expert_size', num_experts=2).validate(8, 2)
  assert size.meshes() == [tuple(range(6)), (6,), (7,)]
  merges = plan_lib.get_plan('merges').validate(8, 4)
  assert merges.meshes() == five.meshes()
  assert 'expert 3' in five.describe() and 'softmax' in five.describe()


def test_parse_round_trips():
  plan = plan_lib.get_plan('0-3|4,5|4,5|6|7')
  assert plan.backbone == (0, 1, 2, 3) and plan.experts == ((4, 5), (4, 5), (6,), (7,))
  assert plan_lib.MeshPlan.parse(plan.spec()) == plan


@pytest.mark.parametrize('spec,num_experts,words', [
    ('0-3|4|5|6|8', 4, ['device(s) [8]', 'only 8 devices']),       # does not fit
    ('0-3|3,4|5|6|7', 4, ['overlap', '[3]', 'disjoint']),          # partial overlap
    ('0-3|4|5|6', 4, ['unplaced', 'expert(s) 3']),                 # a branch unplaced
    ('0-3|4|5|6|7|7', 4, ['only 4', 'extra placements']),          # too many placements
    ('0-3|4|5||7', 4, ['expert 2 is unplaced']),                   # empty placement
    ('0,1,1|4|5|6|7', 4, ['twice']),
])
def test_bad_plans_get_clear_errors(spec, num_experts, words):
  with pytest.raises(PlanError) as err:
    plan_lib.get_plan(spec).validate(8, num_experts)
  for w in words:
    assert w in str(err.value), str(err.value)


def test_unknown_plan_and_bad_spec():
  with pytest.raises(PlanError, match='unknown mesh plan'):
    plan_lib.get_plan('mesh7x')
  with pytest.raises(PlanError, match='cannot read'):
    plan_lib.MeshPlan.parse('0-3|a')


def test_errors_come_before_any_compilation(monkeypatch):
  pieces, specs = build.pieces_of(testing.TinyMoDE)
  pieces.var_hparams(specs)  # shapes only (abstract init); nothing below may jit
  compiled = []
  monkeypatch.setattr(jax, 'jit', lambda *a, **k: compiled.append(a) or (lambda *x: None))
  for spec, match in (('0-3|4|5|6|7|8', 'only 4'), ('0-8|4|5|6|7', 'only 8 devices'),
                      ('0-2|3|4|5|6', 'does not divide over the 3 devices')):
    with pytest.raises(PlanError, match=match):
      runtime.MpmdTrainer(pieces, plan_lib.get_plan(spec), optax.sgd(0.1), specs)
  assert not compiled


def test_checked_plan_is_the_runs_plan_checked_without_compiling(monkeypatch):
  compiled = []
  monkeypatch.setattr(jax, 'jit', lambda *a, **k: compiled.append(a) or (lambda *x: None))
  # Written for NUM_DEVICES (3) when the experiment has one; devices beyond it idle.
  plan = build.checked_plan(testing.TinyMoDE2, num_devices=4)
  assert plan.spec() == '0,1|2|2' and plan.devices_used() == [0, 1, 2]
  assert plan.unused_devices(4) == [3]
  # Without NUM_DEVICES, for the devices given (not this process's 8).
  any_devices = type('AnyDevices', (testing.TinyMoDE,), {'NUM_DEVICES': None})
  assert build.checked_plan(any_devices, num_devices=6).spec() == '0,1|2|3|4|5'
  with pytest.raises(PlanError, match='only 4 devices'):
    build.checked_plan(testing.TinyMoDE, num_devices=4)
  with pytest.raises(PlanError, match='does not divide over the 3 devices'):
    build.checked_plan(testing.TinyMoDE, '0-2|3|4|5|6', num_devices=8)
  assert not compiled
