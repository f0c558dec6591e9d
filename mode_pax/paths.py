"""Where each stage of the MoDE procedure finds its inputs: the one place for locations.

Every location can be overridden from the command line through an environment variable, e.g.
`MODE_PAX_RUNS=/tmp/runs python -m paxml.main --exp=mode.small.CodeExpert ...`:

  MODE_PAX_RUNS          root of the stages' job_log_dirs: the run of experiment `mode.small.X`
                         lives in $MODE_PAX_RUNS/mode.small.X (default: runs/ in the repository).
  MODE_PAX_BACKBONE_CKPT folder holding the backbone's checkpoint_XXXXXXXX folders; at paper scale
                         this is the pre-trained LM (default: the backbone stage's run).
  MODE_PAX_DATA_DIR      the built datasets (see mode_pax.data; default data/build/); the build
                         in a pre-trained LM's own tokenizer T is its subfolder T/.
  MODE_PAX_EVAL_SPLIT    the split that eval inputs read (default validation; the pipeline
                         evaluates finished runs on test).

These are read when an experiment's config is built (they decide the paths in it); nothing here
touches the file system but `latest_checkpoint_step`.
"""

from __future__ import annotations

import os
import pathlib

from etils import epath

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def runs_root() -> str:
  return os.environ.get('MODE_PAX_RUNS') or str(REPO_ROOT / 'runs')


def backbone_checkpoint_override() -> str | None:
  """MODE_PAX_BACKBONE_CKPT: the backbone's checkpoint folder, instead of the backbone stage's."""
  return os.environ.get('MODE_PAX_BACKBONE_CKPT') or None


def eval_split() -> str:
  """The split eval inputs read: validation while developing, test only for final reporting."""
  return os.environ.get('MODE_PAX_EVAL_SPLIT', 'validation')


def run_dir(experiment_name: str) -> str:
  """The job_log_dir of the run of a registered experiment (`registry.experiment_name`)."""
  return os.path.join(runs_root(), experiment_name)


def data_dir(tokenizer: str | None = None) -> str:
  """MODE_PAX_DATA_DIR: the data build (default data/build in the repository).

  tokenizer: the name of a pre-trained LM's tokenizer (an experiment's TOKENIZER, e.g.
  'smollm2'): its build is the subfolder of that name. None: the build's own vocabulary.
  """
  root = os.environ.get('MODE_PAX_DATA_DIR') or str(REPO_ROOT / 'data' / 'build')
  if not tokenizer:
    return root
  return f'{root.rstrip("/")}/{tokenizer}' if '://' in root else os.path.join(root, tokenizer)


def checkpoint_dir(job_log_dir: str) -> str:
  return os.path.join(job_log_dir, 'checkpoints')


def latest_checkpoint_step(ckpt_dir: str) -> int | None:
  """The newest finished step in a Pax checkpoint folder, or None when there is none."""
  path = epath.Path(ckpt_dir)
  if not path.exists():
    return None
  steps = [int(p.name.split('_')[-1]) for p in path.iterdir()
           if p.name.startswith('checkpoint_') and p.name.split('_')[-1].isdigit()]
  return max(steps) if steps else None
