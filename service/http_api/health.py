"""Operations endpoints: GET /healthz (alive), GET /readyz (able to serve), GET /metrics (Prometheus).

Readiness is pluggable: app.extensions["cartox.readiness"] maps a check's name to a callable that returns
when the check passes and raises when it does not (the rules check is registered by create_app; storage
registers its database check with register_readiness_check). The reason of a failure goes to the log only.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Flask, Response, current_app

from service import __version__
from service.http_api.common import engine, json_response
from service.observability import logs, metrics

READINESS = "cartox.readiness"
ReadinessCheck = Callable[[], None]

blueprint = Blueprint("health", __name__)
_log = logs.get_logger("cartox.readiness")


def register_readiness_check(app: Flask, name: str, check: ReadinessCheck) -> None:
    app.extensions.setdefault(READINESS, {})[name] = check


def rules_loaded() -> None:
    rules = engine().rules
    if not rules.files:
        raise RuntimeError("no rule file loaded")


@blueprint.get("/healthz")
def healthz() -> Response:
    rules = engine().rules
    return json_response({
        "status": "ok",
        "version": __version__,
        "rulesLoaded": True,
        "ruleSetVersion": rules.version,
        "ruleFiles": rules.files,
        "guidelines": list(rules.guideline_ids),
    })


@blueprint.get("/readyz")
def readyz() -> Response:
    """200 when every registered check passes, else 503 naming the failing checks."""
    checks: dict[str, ReadinessCheck] = current_app.extensions.get(READINESS, {})
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
        except Exception as exc:  # a failing check of any kind means not ready; the reason is logged, not shown
            _log.warning("readiness check failed", check=name, error=type(exc).__name__, reason=str(exc))
            results[name] = "failing"
        else:
            results[name] = "ok"
    ready = "failing" not in results.values()
    return json_response({"status": "ready" if ready else "not-ready", "checks": results}, 200 if ready else 503)


@blueprint.get("/metrics")
def prometheus_metrics() -> Response:
    text, content_type = metrics.exposition()
    return Response(text, content_type=content_type)
