"""Shared test set-up: 8 virtual CPU devices and the tests' XLA flags (set before JAX is imported
anywhere; run_env.TEST_XLA_FLAGS says why)."""

import os

from tests import run_env

os.environ['XLA_FLAGS'] = ' '.join(filter(None, (
    os.environ.get('XLA_FLAGS', ''), run_env.TEST_XLA_FLAGS,
    '--xla_force_host_platform_device_count=8')))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# Pax reads absl flags (e.g. --pmap_use_tensorstore) inside library calls; use their defaults.
from absl import flags  # pylint: disable=g-import-not-at-top

flags.FLAGS.mark_as_parsed()
