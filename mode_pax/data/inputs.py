"""Pax input params for the MoDE seqio tasks.

Building the params is pure (no file system access), so an experiment's config can be built
on a machine without the data; the tasks are registered when the input is instantiated.
"""

from paxml import seqio_input
from praxis import pax_fiddle

from mode_pax.data import tasks


class MoDESeqIOInput(seqio_input.SeqIOInput):
  """SeqIOInput that registers the MoDE tasks of `data_dir` before looking its task up.

  Attributes:
    data_dir: the build folder whose tasks this input reads (an absolute path or URL).
  """
  data_dir: str | None = None

  def __post_init__(self):
    # SeqIOInput looks `mixture_name` up in the seqio registries in its __post_init__.
    tasks.register_tasks(self.data_dir)
    super().__post_init__()


def seqio_input_params(
    task_name: str,
    split: str,
    batch_size: int,
    seq_len: int = 256,
    is_training: bool | None = None,
    data_dir: str | None = None,
    input_random_seed: int | None = None,
    name: str | None = None,
) -> pax_fiddle.Config[MoDESeqIOInput]:
  """SeqIOInput params for a MoDE task; reads nothing (the data is needed on instantiation).

  Training: packed sequences, shuffled, repeated forever. Evaluation: unpacked, one full
  pass over the split (`reset_for_eval`, `eval_loop_num_batches=-1`), and the rows that pad
  the last batch get zero weight (`annotate_padding_fields`), so every example counts once.

  Args:
    task_name: e.g. 'mode_code', 'mode_math_code_n1000' (see mode_pax.data.tasks).
    split: 'train', 'validation' or 'test'.
    batch_size: per-process batch size.
    seq_len: `targets` length (longer examples are cut into several, not truncated).
    is_training: default: split == 'train'.
    data_dir: the build folder (default $MODE_PAX_DATA_DIR or data/build, resolved now).
    input_random_seed: shuffle seed for training input.
    name: input name (shows in eval summaries); default '<task>_<split>'.
  """
  if is_training is None:
    is_training = split == 'train'
  params = pax_fiddle.Config(
      MoDESeqIOInput,
      name=name or f'{task_name}_{split}',
      data_dir=tasks.resolve_data_dir(data_dir),
      mixture_name=task_name,
      split_name=split,
      task_feature_lengths={'targets': seq_len},
      feature_converter=seqio_input.LanguageModelFeatures(
          pack=is_training, use_custom_packing_ops=False),
      is_training=is_training,
      batch_size=batch_size,
      input_random_seed=input_random_seed,
      use_cached=False,
  )
  if is_training:
    params.shuffle = True
    params.repeat = True
  else:
    params.shuffle = False
    params.repeat = False
    params.reset_for_eval = True
    params.eval_loop_num_batches = -1
    params.annotate_padding_fields = True
    params.eval_auto_pad = True
  return params
