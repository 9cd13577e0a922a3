"""Flask application factory: settings, the engine (rules compiled once), CORS, errors as OperationOutcome."""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from service.errors import CartoxError, InputError, Issue
from service.http_api import audit, auth, bench, cds_hooks, evaluate, feedback, health, openapi, prefetch
from service.http_api.common import BODY_TIMED_OUT, BODY_TOO_LARGE, BODY_VERDICT, outcome_response
from service.observability.instrument import instrument
from service.observability.logs import configure_logging
from service.pipeline import Engine
from service.security.config import security_config
from service.security.replay import ReplayStore
from service.settings import Settings
from service.storage import Storage, open_storage

log = logging.getLogger("cartox")

# HTTP errors raised by werkzeug (routing, a body cut off) or by a later layer (401: authentication):
# status -> (stable cartox code, FHIR IssueType). Other 4xx: input-bad-request; 5xx: internal-error.
_HTTP_ERRORS = {
    400: ("input-bad-request", "invalid"),
    401: ("unauthorized", "login"),
    404: ("not-found", "not-found"),
    405: ("method-not-allowed", "not-supported"),
    406: ("input-not-acceptable", "not-supported"),
    408: ("input-timeout", "timeout"),
    415: ("input-unsupported-media-type", "not-supported"),
}


def create_app(settings: Settings | None = None, engine: Engine | None = None, storage: Storage | None = None,
               replay_store: ReplayStore | None = None) -> Flask:
    """The application. Raises ValueError naming the variable for a security configuration the service cannot run
    with, and StorageError when the database cannot be used as it is (see service.storage)."""
    settings = settings or (engine.settings if engine else Settings.from_env())
    security = security_config(settings)
    if security.production and settings.audit and not settings.audit_key:
        # several instances must hash patient ids alike, and a key generated on one host is lost with it
        raise ValueError("CARTOX_AUDIT_KEY: production mode needs the audit key (32 characters or more), the same on every instance")
    configure_logging(settings.log_level)
    app = Flask(__name__, static_folder=None)  # no static files: no /static route
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["cartox.engine"] = engine or Engine(settings)
    instrument(app)  # first: every request, even one refused by a later hook, gets its id and metrics
    app.extensions[prefetch.EXTENSION_KEY] = prefetch.init_app_client(settings, development=not security.production)
    app.extensions["cartox.storage"] = storage = storage or open_storage(settings)
    for module in (audit, cds_hooks, evaluate, feedback, health, openapi):
        app.register_blueprint(module.blueprint)
    if settings.bench_endpoints:
        app.register_blueprint(bench.blueprint)
    health.register_readiness_check(app, "rules", health.rules_loaded)
    health.register_readiness_check(app, "database", storage.database.ping)

    @app.before_request
    def body_verdict() -> None:
        """The server front stopped reading the body (service.server): answer before anything else."""
        verdict = request.environ.get(BODY_VERDICT)
        if verdict == BODY_TOO_LARGE:
            raise RequestEntityTooLarge()
        if verdict == BODY_TIMED_OUT:
            seconds = settings.body_timeout_seconds
            raise InputError(Issue("input-timeout", f"The request body did not arrive within {seconds} s (CARTOX_BODY_TIMEOUT_SECONDS)",
                                   None, fhir_type="timeout"), status=408)

    @app.after_request
    def headers(response: Response) -> Response:
        # Answers are patient data: no MIME sniffing of them, no copy in any cache.
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        return response

    # CORS for the configured origins; authentication per mode (service.http_api.auth, README "Security").
    auth.install(app, security, replay_store or storage.replay)  # jti replay checked across workers (the database)

    @app.errorhandler(CartoxError)
    def cartox_error(error: CartoxError) -> Response:
        return outcome_response(error.issues, error.status)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_error: RequestEntityTooLarge) -> Response:
        limit = settings.max_body_bytes
        return outcome_response([Issue("input-body-too-large", f"Body larger than the limit of {limit} bytes (CARTOX_MAX_BODY_BYTES)",
                                       None, fhir_type="too-long")], 413)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code, fhir_type = _HTTP_ERRORS.get(status, ("input-bad-request", "invalid") if status < 500 else ("internal-error", "exception"))
        response = outcome_response([Issue(code, f"{error.name}: {request.method} {request.path}", None, fhir_type=fhir_type)], status)
        for name, value in error.get_headers():  # Allow of a 405, WWW-Authenticate of a 401 ...
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return outcome_response([Issue("internal-error", "Internal error: the request was not evaluated", None, fhir_type="exception")], 500)

    return app
