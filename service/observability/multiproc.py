"""The per-start directory of prometheus_client's multiprocess mode (see service.observability.metrics)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from service.observability.metrics_env import MULTIPROC_ENV


def prepare_multiprocess_metrics() -> str:
    """A fresh, private directory named in PROMETHEUS_MULTIPROC_DIR for this server run, removed at its exit.

    Call before prometheus_client is imported: the library picks its value class at import. A fresh
    directory per start means no worker of an earlier run is ever counted. gunicorn workers are forked
    from this process and run its exit handlers too: only the process that made the directory removes it.
    """
    owner = os.getpid()
    directory = tempfile.mkdtemp(prefix="cartox-metrics-")
    os.environ[MULTIPROC_ENV] = directory

    def remove() -> None:
        if os.getpid() == owner:
            shutil.rmtree(directory, ignore_errors=True)

    atexit.register(remove)
    return directory
