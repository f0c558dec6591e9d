"""Shared test set-up: 8 virtual CPU devices (set before JAX is imported anywhere)."""

import os

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# Pax reads absl flags (e.g. --pmap_use_tensorstore) inside library calls; use their defaults.
from absl import flags  # pylint: disable=g-import-not-at-top

flags.FLAGS.mark_as_parsed()
