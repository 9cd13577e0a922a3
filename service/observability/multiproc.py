"""The per-start directory of prometheus_client's multiprocess mode (see service.observability.metrics)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from service.observability.metrics_env import MULTIPROC_ENV


@contextmanager
def multiprocess_metrics_dir() -> Iterator[str]:
    """A fresh, private directory named in PROMETHEUS_MULTIPROC_DIR for one server run, removed after it.

    Must be entered before prometheus_client is imported: the library picks its value class at import.
    A fresh directory per start means no worker of an earlier run is ever counted. gunicorn workers are
    forked inside this block and leave it through SystemExit too: only the process that made the
    directory removes it.
    """
    owner = os.getpid()
    directory = tempfile.mkdtemp(prefix="cartox-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield directory
    finally:
        if os.getpid() == owner:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(directory, ignore_errors=True)
