"""Building the MPMD runtime (or its SPMD reference) from a registered Pax experiment.

An experiment is a `methods.MoDE` experiment; the sharding-study experiments
(`experiments/sharding.py`) add MESH_PLAN (a preset name or a spec such as '0-3|4|5|6|7') and
NUM_DEVICES.
"""

from __future__ import annotations

from typing import Sequence

import jax
import optax

from mode_pax import registry
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
  pieces = model_lib.MoDEPieces(exp.task().model)
  return pieces, model_lib.input_specs(exp.TRAIN_BATCH_SIZE, exp.SEQUENCE_LENGTH)


def plan_of(exp, plan: str | plan_lib.MeshPlan | None = None,
            num_devices: int | None = None) -> plan_lib.MeshPlan:
  exp = experiment_instance(exp)
  n = num_devices or getattr(exp, 'NUM_DEVICES', None) or len(jax.devices())
  return plan_lib.get_plan(plan or getattr(exp, 'MESH_PLAN', 'mesh5'),
                           num_experts=exp.NUM_DOMAIN_EXPERTS, num_devices=n)


def optimizer_of(exp) -> optax.GradientTransformation:
  """Adam at the experiment's learning rate (the Pax runs use Adafactor; both sides match)."""
  return optax.adam(experiment_instance(exp).LEARNING_RATE)


def mpmd_trainer(exp, plan=None, *, optimizer=None, trainable: Sequence[str] | None = None,
                 transport: transfer.Transport | None = None) -> runtime.MpmdTrainer:
  """The MPMD trainer of an experiment under its (or the given) mesh plan."""
  inst = experiment_instance(exp)
  pieces, specs = pieces_of(inst)
  plan = plan_of(inst, plan)
  return runtime.MpmdTrainer(
      pieces, plan, optimizer or optimizer_of(inst), specs,
      trainable=inst.trainable_variables() if trainable is None else trainable,
      transport=transport)


def spmd_trainer(exp, device_ids: Sequence[int] | None = None, *, optimizer=None,
                 trainable: Sequence[str] | None = None) -> spmd.SpmdTrainer:
  """The one-mesh SPMD reference trainer of an experiment."""
  inst = experiment_instance(exp)
  pieces, specs = pieces_of(inst)
  ids = list(range(len(jax.devices()))) if device_ids is None else list(device_ids)
  return spmd.SpmdTrainer(pieces, ids, optimizer or optimizer_of(inst), specs,
                          trainable=inst.trainable_variables() if trainable is None else trainable)
