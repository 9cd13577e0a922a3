"""Operations edge: Prometheus metrics, structured JSON logs with a request id, readiness checks."""
