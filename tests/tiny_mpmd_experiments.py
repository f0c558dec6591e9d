"""A tiny MoDE experiment that trains on the fixture corpus, for the MPMD launcher tests.

Its workers import it by name (`--exp=tests.tiny_mpmd_experiments.TinyMoDEOnData`); the data
build is the one `MODE_PAX_DATA_DIR` points at (`tests.run_env.pointed_at`).
"""

from mode_pax import experiment
from mode_pax import registry
from mode_pax.data import tasks as data_tasks
from mode_pax.mpmd import testing


class TinyMoDEOnData(testing.TinyMoDE2):
  """TinyMoDE with two experts reading the fixture build's code task: the backbone on device 0
  (process 0 of a two-process run), both experts on device 1 (process 1)."""
  VOCAB_SIZE = 640  # the fixture build's vocabulary fits
  SEQUENCE_LENGTH = 32
  TRAIN_BATCH_SIZE = 2
  TRAIN_DATA = data_tasks.CODE
  EVAL_DATA = (data_tasks.CODE,)
  EVAL_BATCH_SIZE = 4
  MESH_PLAN = '0|1|1'
  NUM_DEVICES = 2
  ICI_MESH_SHAPE = [1, 1, 1]  # paxml.main (eval) runs it on one device
  # The learner's schedule over the tests' 4 steps: warm-up in one, then decay.
  LEARNING_RATE = 1e-2
  WARMUP_STEPS = 1
  MAX_STEPS = 4

  # The MoDE experiment's own training and evaluation inputs (TinyMoDE has none).
  datasets = experiment.LmExperiment.datasets


# paxml.main finds it by name (--exp=tests.tiny_mpmd_experiments.TinyMoDEOnData).
registry.register([TinyMoDEOnData])
