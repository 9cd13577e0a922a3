"""Flask application factory: settings, the engine (rules compiled once), CORS, errors as OperationOutcome."""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from service.errors import CartoxError, Issue
from service.http_api import cds_hooks, evaluate, health
from service.http_api.common import outcome_response
from service.pipeline import Engine
from service.settings import Settings

log = logging.getLogger("cartox")

_HTTP_CODES = {404: "not-found", 405: "method-not-allowed", 406: "input-not-acceptable", 415: "input-unsupported-media-type"}


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> Flask:
    settings = settings or (engine.settings if engine else Settings.from_env())
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["cartox.engine"] = engine or Engine(settings)
    for module in (cds_hooks, evaluate, health):
        app.register_blueprint(module.blueprint)

    @app.after_request
    def cors(response: Response) -> Response:
        # CDS Hooks clients call from the browser (SMART apps, sandboxes): allow any origin, no cookies.
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Max-Age"] = "600"
        return response

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
        code = _HTTP_CODES.get(status, "input-bad-parameter" if status < 500 else "internal-error")
        return outcome_response([Issue(code, f"{error.name}: {request.method} {request.path}", None,
                                       fhir_type="not-found" if status == 404 else "not-supported")], status)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return outcome_response([Issue("internal-error", "Internal error: the request was not evaluated", None, fhir_type="exception")], 500)

    return app
