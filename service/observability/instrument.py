"""Per-request operations hooks of the Flask app: request id, JSON access line, Prometheus metrics."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from service.observability import logs, metrics

_log = logs.get_logger("cartox.access")
EVALUATE_SERVICE = "evaluate"


def route_label() -> str:
    """The matched route template (e.g. /cds-services/car-t-toxicity), never the raw path: fixed cardinality."""
    return request.url_rule.rule if request.url_rule is not None else "unmatched"


def evaluated_service(route: str, method: str) -> str | None:
    """The service a POST evaluates for: a CDS Hooks service id, or `evaluate`; None for anything else."""
    if method != "POST":
        return None
    if route == "/evaluate":
        return EVALUATE_SERVICE
    parts = route.split("/")
    if len(parts) == 3 and parts[1] == "cds-services" and "<" not in parts[2]:
        return parts[2]
    return None


def instrument(app: Flask) -> None:
    """Register the hooks; call before any other before_request so that every request gets its id."""

    @app.before_request
    def start_request() -> None:
        g.cartox_started = time.perf_counter()
        g.cartox_request_id = logs.request_id_from(request.headers.get(logs.REQUEST_ID_HEADER))
        logs.bind_request(g.cartox_request_id)

    @app.after_request
    def finish_request(response: Response) -> Response:
        request_id = g.get("cartox_request_id") or logs.request_id_from(None)
        response.headers[logs.REQUEST_ID_HEADER] = request_id
        seconds = time.perf_counter() - g.get("cartox_started", time.perf_counter())
        route = route_label()
        metrics.record_request(route, request.method, response.status_code, seconds)
        service = evaluated_service(route, request.method)
        if service is not None and response.status_code < 400:
            metrics.record_evaluation(service)
        _log.info("request", method=request.method, route=route, status=response.status_code,
                  duration_ms=round(seconds * 1000, 3))
        return response

    @app.teardown_request
    def end_request(_error: BaseException | None) -> None:
        logs.unbind_request()
