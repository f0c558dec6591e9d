r"""Input-pipeline throughput vs. the small-scale training step's token consumption.

  python benchmarks/data_pipeline.py [--task=mode_math_code] [--batch_size=32] [--seq_len=256]

Measures (1) tokens/s delivered by the Pax SeqIOInput (packed training batches) and
(2) tokens/s consumed by a jitted train step (forward + backward + SGD update) of a small
praxis TransformerLm on this machine, and prints their ratio: > 1 means data is not the
bottleneck. Needs a finished build (`make data`).
"""

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from praxis import base_hyperparams
from praxis import base_layer
from praxis import layers
from praxis import pax_fiddle
from praxis import py_utils

from mode_pax.data import inputs
from mode_pax.data import tasks

_TASK = flags.DEFINE_string('task', 'mode_math_code', 'Task or mixture to read.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Batch size.')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 256, 'Sequence length.')
_BATCHES = flags.DEFINE_integer('batches', 200, 'Input batches to time.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Train steps to time.')
_D_MODEL = flags.DEFINE_integer('d_model', 256, 'Model width of the reference LM.')
_LAYERS = flags.DEFINE_integer('num_layers', 4, 'Layers of the reference LM.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Build folder (default data/build).')


def input_tokens_per_second() -> tuple[float, float]:
  """(slot tokens/s, real non-padding tokens/s) of packed training batches."""
  params = inputs.seqio_input_params(_TASK.value, 'train', _BATCH.value, _SEQ_LEN.value,
                                     data_dir=_DATA_DIR.value, input_random_seed=0)
  inp = base_hyperparams.instantiate(params)
  for _ in range(10):  # warm up (shuffle buffer, tokenizer)
    inp.get_next()
  real = 0.0
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    batch = inp.get_next()
    real += float((1.0 - batch.paddings).sum())
  elapsed = time.perf_counter() - start
  return _BATCHES.value * _BATCH.value * _SEQ_LEN.value / elapsed, real / elapsed


def train_step_tokens_per_second(vocab_size: int) -> float:
  """Tokens/s of a jitted SGD train step of a small TransformerLm."""
  d = _D_MODEL.value
  lm_p = pax_fiddle.Config(layers.TransformerLm, name='lm', model_dims=d,
                           vocab_size=vocab_size)
  lm_p.stacked_transformer_tpl = pax_fiddle.Config(
      layers.StackedTransformer, num_layers=_LAYERS.value, model_dims=d, hidden_dims=4 * d,
      num_heads=max(1, d // 64), mask_self_attention=True)
  lm_p.softmax_tpl.params_init = base_layer.WeightInit.Gaussian(1.0 / d**0.5)
  lm = base_hyperparams.instantiate(lm_p)
  b, t = _BATCH.value, _SEQ_LEN.value
  ids = jnp.asarray(np.random.RandomState(0).randint(3, vocab_size, (b, t)), jnp.int32)
  paddings = jnp.zeros((b, t), jnp.float32)
  labels = py_utils.NestedMap(class_ids=ids, class_weights=1.0 - paddings)
  variables = lm.init(jax.random.PRNGKey(0), ids, paddings, labels=labels)

  def loss_fn(params):
    out = lm.apply({**variables, 'params': params}, ids, paddings, labels=labels)
    return out.avg_xent

  @jax.jit
  def step(params):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    return jax.tree_util.tree_map(lambda p, g: p - 1e-3 * g, params, grads), loss

  params = variables['params']
  params, loss = step(params)  # compile
  loss.block_until_ready()
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    params, loss = step(params)
  loss.block_until_ready()
  return _STEPS.value * b * t / (time.perf_counter() - start)


def main(argv):
  del argv
  tasks.register_tasks(_DATA_DIR.value)
  slots, real = input_tokens_per_second()
  consumed = train_step_tokens_per_second(tasks.vocab_size(_DATA_DIR.value))
  print(f'task={_TASK.value} batch={_BATCH.value} seq_len={_SEQ_LEN.value}')
  print(f'input pipeline: {slots:,.0f} tokens/s ({real:,.0f} non-padding tokens/s, '
        f'packing efficiency {real / slots:.1%})')
  print(f'train step (TransformerLm d={_D_MODEL.value}, {_LAYERS.value} layers, jax '
        f'{jax.default_backend()}): {consumed:,.0f} tokens/s')
  print(f'input / consumption ratio: {slots / consumed:.1f}x '
        f"({'data is not the bottleneck' if slots > consumed else 'DATA IS THE BOTTLENECK'})")


if __name__ == '__main__':
  app.run(main)
