"""benchmarks/train_step.py's matmul configurations: parsed shapes, checked before any work."""

import numpy as np
import pytest

from benchmarks import train_step


def test_matmul_config_times_the_named_product():
  assert train_step.matmul_shape('matmul:1024x128x8192') == (1024, 128, 8192)
  matmul = train_step.Matmul(3, 5, 7)
  assert matmul.flops == 2 * 3 * 5 * 7
  # What it computes is [m, k] x [k, n] of its operands (numpy as the reference).
  np.testing.assert_allclose(
      np.asarray(matmul._fn(matmul._a, matmul._b)),  # pylint: disable=protected-access
      np.asarray(matmul._a) @ np.asarray(matmul._b), rtol=1e-5)  # pylint: disable=protected-access


@pytest.mark.parametrize('config', ['matmul:2x2', 'matmul:2x0x2', 'matmul:axbxc'])
def test_a_bad_matmul_config_is_refused_before_any_compiling(config, monkeypatch):
  monkeypatch.setattr(train_step, 'build_task', lambda *a: pytest.fail('built a task'))
  with pytest.raises(ValueError, match=rf'--configs: {config!r}: .*matmul:MxKxN|at least 1'):
    train_step.main(['--configs', f'pax:Backbone,{config}', '--out', ''])
