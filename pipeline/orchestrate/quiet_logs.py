"""A quiet command line: no TensorFlow, absl or Beam log lines before lmpipe's own output.

Importing this module sets TF_CPP_MIN_LOG_LEVEL (unless the user set it), so it must come
before anything that imports TensorFlow; `configure_logging` then sets up Python logging
and imports TensorFlow with its C++ start-up lines hidden. TF_CPP_MIN_LOG_LEVEL=0 shows
everything.

Example:
    >>> configure_logging(import_tensorflow=True)   # in the CLI's main, before a subcommand
"""

from __future__ import annotations

import logging
import os
import sys

# TensorFlow's C++ log (oneDNN, CUDA probing, cuInit on a machine without a GPU) is noise
# on a command line.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Import-time warnings of optional extras this project does not use (Beam's GCP client).
_IMPORT_NOISE = (("root", "apitools not found"),)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow and probes its devices with the process's stderr (fd 2) on
    /dev/null: TensorFlow's C++ logs lines before absl::InitializeLog() whatever
    TF_CPP_MIN_LOG_LEVEL says (oneDNN, CUDA probing, cuInit). Python errors still surface
    (raised after stderr is back); TF_CPP_MIN_LOG_LEVEL=0 skips this and shows them all."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _ImportNoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.name == name and record.getMessage().startswith(text) for name, text in _IMPORT_NOISE)


def configure_logging(import_tensorflow: bool) -> None:
    """WARNING-level Python logging without the import-time notices of unused extras and
    MLflow's system-metrics start/stop lines; with `import_tensorflow`, TensorFlow loaded quietly."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ImportNoiseFilter())
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    if import_tensorflow:
        import_tensorflow_quietly()
