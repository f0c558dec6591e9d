"""Parameter accounting: the paper-scale configs reproduce Table 1's parameter column."""

import pytest

from mode_pax import param_count


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
