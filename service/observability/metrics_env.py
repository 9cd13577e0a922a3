"""Name of the variable that switches prometheus_client to multiprocess mode (importable without it)."""

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
