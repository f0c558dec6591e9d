"""The paper's recipes at a size that trains in seconds, on the fixture corpus (test-only)."""

import collections
import os
import time

from jax import numpy as jnp
from praxis import pax_fiddle

from mode import recipes
from mode import studies
from mode_pax import registry


class TinyScale:
  NUM_LAYERS = 2
  MODEL_DIMS = 32
  HIDDEN_DIMS = 64
  DIMS_PER_HEAD = 16
  NUM_HEADS = 2
  VOCAB_SIZE = 640  # the fixture build's vocabulary fits
  FPROP_DTYPE = jnp.float32
  NUM_BLOCKS = 2
  EXPERT_LAYERS = 1
  ICI_MESH_SHAPE = [1, 1, 1]
  TRAIN_BATCH_SIZE = 4
  EVAL_BATCH_SIZE = 16
  SEQUENCE_LENGTH = 64
  LEARNING_RATE = 1e-2
  WARMUP_STEPS = 1
  MAX_STEPS = 4
  CHECKPOINT_EVERY_N_STEPS = 2
  EVAL_INTERVAL_STEPS = 100
  SUMMARY_INTERVAL_STEPS = 2
  LORA_RANK = 4
  # As mode.small: the compositions' runs go through the vmapped experts, every run through the
  # conditional optimizer update without the norm summaries it drops.
  VECTORIZE_EXPERTS = True
  CONDITIONAL_OPTIMIZER_UPDATE = True
  VARIABLE_NORM_SUMMARY = False
  LEARNER_NORM_SUMMARIES = False


# backbone_steps: the study test's end-to-end run (one new stage besides the fixture's Backbone).
SWEEPS = studies.Sweeps(lora_ranks=(2,), code_sizes=(10,), mixture_sizes=(20,),
                        expert_layer_counts=(1,), backbone_steps=(2,))
globals().update(recipes.register_all(TinyScale, __name__, SWEEPS))


# Interrupting a run at a known point, for the resume test: the training input stops serving
# batches (blocks) after MODE_PAX_TEST_PAUSE_AFTER_BATCHES of them, so the test can kill the
# paxml.main process while it waits, after its step-2 checkpoint and before its last step.
PAUSE_ENV = 'MODE_PAX_TEST_PAUSE_AFTER_BATCHES'
_served = collections.Counter()


def _pausing(input_cls):
  class PausingInput(input_cls):

    def get_next(self):
      pause_after = int(os.environ.get(PAUSE_ENV, '0'))
      if pause_after and _served[id(self)] >= pause_after:
        print(f'{PAUSE_ENV}: paused after {pause_after} batches', flush=True)
        while True:
          time.sleep(60)
      _served[id(self)] += 1
      return super().get_next()

  return PausingInput


class ResumableMathExpert(MathExpert):  # pylint: disable=undefined-variable
  """MathExpert whose training input can pause (PAUSE_ENV); otherwise the same run."""

  def datasets(self):
    train, *evals = super().datasets()
    pausing = pax_fiddle.Config(_pausing(pax_fiddle.get_callable(train)), **train.__arguments__)
    return [pausing] + evals


registry.register([ResumableMathExpert])


class ComposeMathCodeGatesOfExperts(ComposeMathCode):  # pylint: disable=undefined-variable
  """ComposeMathCode whose gates start from its experts' (random-start) single-domain gates."""
  GATES_FROM_EXPERTS = True


registry.register([ComposeMathCodeGatesOfExperts])
