"""Parameter accounting: the paper-scale configs reproduce Table 1's parameter column."""

import pytest

from mode_pax import param_count
from mode_pax import registry


@pytest.fixture(scope='module')
def table1_rows():
  return param_count.paper_table1_rows()


def test_paper_scale_configs_match_table1_within_one_percent(table1_rows):
  for method, exp, paper_billions, count in table1_rows:
    assert abs(count.total / 1e9 - paper_billions) / paper_billions < 0.01, (method, exp, count)


def test_trainable_parameters_follow_each_method(table1_rows):
  counts = {method: count for method, _, _, count in table1_rows}
  full = counts['Full-parameter Fine-tuning']
  assert full.trainable == full.total
  lora = counts['LoRA']
  assert lora.trainable == lora.by_role['lora'] == lora.total - full.total
  # Rank 16 on q, k, v and the output projection of 18 layers of width 2048.
  assert lora.trainable == 18 * 4 * 16 * (2048 + 2048)
  one = counts['MoDE 1x Uninitialized Expert']
  two = counts['MoDE 2x Experts']
  assert two.by_role['experts'] == 2 * one.by_role['experts']
  assert two.trainable == two.by_role['experts'] + two.by_role['gates']
  frozen = counts['MoDE 2x Frozen Experts']
  assert frozen.trainable == frozen.by_role['gates'] == 3 * (2048 * 3 + 3)
  # The backbone is the same model in every method.
  assert len({c.by_role['backbone'] for c in counts.values()}) == 1


def test_scanned_layers_count_every_layer():
  """The SmolLM2 Backbone stores its 30 layers scanned in 3 blocks: its count is the published
  SmolLM2-135M's (the leading layer dimension of scanned variables counts)."""
  count = param_count.count_experiment(registry.lookup('mode.smollm2.Backbone'))
  assert count.total == 134_515_008 == count.trainable
  expert = param_count.count_experiment(registry.lookup('mode.smollm2.CodeExpert'))
  # One expert layer per block, 3 blocks, each a SmolLM2 layer: 4 attention projections (9 query
  # heads, 3 key/value heads of 64) + 3 FFN matrices + 2 norms.
  layer = 576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536 + 2 * 576
  assert expert.by_role['experts'] == 3 * layer
  assert expert.by_role['backbone'] == count.total


TPU_RUNS = [f'mode.{family}.{recipe}' for family in ('gemma2b', 'llama32_1b')
            for recipe in ('ComposeMathCode', 'FullFinetuneMathCode')]  # the largest of each


@pytest.mark.parametrize('name', TPU_RUNS)
def test_tpu_experiments_fit_their_chips_hbm(name):
  experiment_cls = registry.lookup(name)
  memory = param_count.memory_per_chip(experiment_cls)
  count = param_count.count_experiment(experiment_cls)
  assert memory.devices == 16
  # Sharding spreads the float32 variables over the chips (none lost, some replicated).
  assert 4 * count.total / memory.devices <= memory.params < 4 * count.total / 2
  assert 0 < memory.gradients <= memory.params
  assert memory.total < param_count.HBM_BYTES[experiment_cls.TPU_CHIP], memory
