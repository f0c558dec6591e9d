"""Building the MPMD runtime (or its SPMD reference) from a registered Pax experiment.

An experiment is a `methods.MoDE` experiment; the sharding-study experiments
(`experiments/sharding.py`) add MESH_PLAN (a preset name or a spec such as '0-3|4|5|6|7') and
NUM_DEVICES.
"""

from __future__ import annotations

from typing import Sequence

import jax
import optax
from paxml import learners as learners_lib

from mode_pax import registry
from mode_pax.mpmd import learner as learner_lib
from mode_pax.mpmd import model as model_lib
from mode_pax.mpmd import plan as plan_lib
from mode_pax.mpmd import runtime
from mode_pax.mpmd import spmd
from mode_pax.mpmd import transfer


def experiment_instance(exp) -> object:
  exp = registry.lookup(exp) if isinstance(exp, str) else exp
  return exp() if isinstance(exp, type) else exp


def pieces_of(exp) -> tuple[model_lib.MoDEPieces, object]:
  """(MoDEPieces, batch specs) of an experiment (class, name or instance)."""
  exp = experiment_instance(exp)
  task_p = exp.task()
  pieces = model_lib.MoDEPieces(task_p.model, summary_verbosity=task_p.summary_verbosity)
  return pieces, model_lib.input_specs(exp.TRAIN_BATCH_SIZE, exp.SEQUENCE_LENGTH)


def plan_of(exp, plan: str | plan_lib.MeshPlan | None = None,
            num_devices: int | None = None) -> plan_lib.MeshPlan:
  """The mesh plan (given, or the experiment's MESH_PLAN) for `num_devices` devices (default:
  the experiment's NUM_DEVICES, else this process's devices)."""
  exp = experiment_instance(exp)
  n = num_devices or getattr(exp, 'NUM_DEVICES', None) or len(jax.devices())
  return plan_lib.get_plan(plan or getattr(exp, 'MESH_PLAN', 'mesh5'),
                           num_experts=exp.NUM_DOMAIN_EXPERTS, num_devices=n)


def checked_plan(exp, plan: str | plan_lib.MeshPlan | None = None, *,
                 num_devices: int) -> plan_lib.MeshPlan:
  """The plan a run on `num_devices` devices would use, checked as the run checks it.

  The plan is written for the experiment's NUM_DEVICES, or for `num_devices` when it has none
  (not for this machine's devices: a launcher checks a TPU slice or its workers from here).
  Checks that it fits the devices, places every expert, and that every model-parallel dimension
  divides over its mesh (abstract init: shapes only, nothing compiles or allocates).

  Raises:
    PlanError: the plan cannot run on `num_devices` devices.
    ValueError: the experiment is not a MoDE experiment the MPMD runtime can place.
  """
  inst = experiment_instance(exp)
  if not hasattr(inst, 'NUM_DOMAIN_EXPERTS'):
    raise ValueError(f'{registry.experiment_name(type(inst))} is not a MoDE experiment '
                     '(mode_pax.methods.MoDE): the MPMD runtime places experts on meshes; give '
                     'a mode.sharding.X experiment or another MoDE one.')
  written_for = getattr(inst, 'NUM_DEVICES', None) or num_devices
  out = plan_of(inst, plan, num_devices=written_for)
  out.validate(num_devices=num_devices, num_experts=inst.NUM_DOMAIN_EXPERTS)
  pieces, specs = pieces_of(inst)
  out.check_divisibility(pieces.sharded_dims(specs))
  return out


def optimizer_of(exp) -> learners_lib.Learner:
  """The experiment's own praxis learner (`task.train.learner`), as paxml's train step uses it:
  its optimizer (ShardedAdafactor for LmExperiment), learning-rate schedule, weight decay and
  gradient clipping (see mpmd/learner.py)."""
  return learner_lib.learner_of(experiment_instance(exp).task())


def mpmd_trainer(exp, plan=None, *,
                 optimizer: learners_lib.Learner | optax.GradientTransformation | None = None,
                 trainable: Sequence[str] | None = None,
                 transport: transfer.Transport | None = None) -> runtime.MpmdTrainer:
  """The MPMD trainer of an experiment under its (or the given) mesh plan; optimizer: default
  the experiment's learner (`optimizer_of`), or an optax transformation replacing it."""
  inst = experiment_instance(exp)
  pieces, specs = pieces_of(inst)
  plan = plan_of(inst, plan)
  return runtime.MpmdTrainer(
      pieces, plan, optimizer or optimizer_of(inst), specs,
      trainable=inst.trainable_variables() if trainable is None else trainable,
      transport=transport)


def spmd_trainer(exp, device_ids: Sequence[int] | None = None, *,
                 optimizer: learners_lib.Learner | optax.GradientTransformation | None = None,
                 trainable: Sequence[str] | None = None) -> spmd.SpmdTrainer:
  """The one-mesh SPMD reference trainer of an experiment (optimizer as for `mpmd_trainer`)."""
  inst = experiment_instance(exp)
  pieces, specs = pieces_of(inst)
  ids = list(range(len(jax.devices()))) if device_ids is None else list(device_ids)
  return spmd.SpmdTrainer(pieces, ids, optimizer or optimizer_of(inst), specs,
                          trainable=inst.trainable_variables() if trainable is None else trainable)
