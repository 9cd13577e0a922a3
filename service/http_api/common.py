"""Shared HTTP plumbing: content types, request parameters, FHIR OperationOutcome responses."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import orjson
from flask import Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

from service.errors import InputError, Issue, operation_outcome
from service.fhir_input.times import TimeError, parse_infusion_date, parse_instant_parameter
from service.pipeline import Engine

JSON_TYPES = ("application/json", "application/fhir+json")
FHIR_JSON = "application/fhir+json"

# Set by the server front (service.server) when it stopped reading a body: the app answers 408 or 413.
BODY_VERDICT = "cartox.body_verdict"
BODY_TIMED_OUT = "timed-out"
BODY_TOO_LARGE = "too-large"

# msgspec ends a decode error with the offset it stopped at: "... trailing characters (byte 10)".
_BYTE_OFFSET = re.compile(r"\(byte (\d+)\)")


def engine() -> Engine:
    return current_app.extensions["cartox.engine"]


def json_response(document: object, status: int = 200, mimetype: str = "application/json") -> Response:
    return Response(orjson.dumps(document), status=status, mimetype=mimetype)


def error_outcome(issues: list[Issue], codesystem_url: str) -> dict[str, Any]:
    """The OperationOutcome of an error; an input-not-json issue with a known offset has diagnostics "byte N"."""
    document = operation_outcome(issues, codesystem_url)
    for issue, rendered in zip(issues, document["issue"]):
        offset = _BYTE_OFFSET.search(issue.message) if issue.code == "input-not-json" else None
        if offset:
            rendered["diagnostics"] = f"byte {offset.group(1)}"
    return document


def outcome_response(issues: list[Issue], status: int) -> Response:
    return json_response(error_outcome(issues, engine().output.codesystem), status, FHIR_JSON)


def require_json_body() -> bytes:
    """The raw body of a JSON / FHIR JSON request (415 for any other content type)."""
    mimetype = request.mimetype
    if mimetype not in JSON_TYPES:
        shown = mimetype or "none"
        raise InputError(
            Issue("input-unsupported-media-type", f"Content-Type {shown!r} is not supported: send application/json or application/fhir+json",
                  None, fhir_type="not-supported"),
            status=415,
        )
    return read_body()


def read_body() -> bytes:
    """The whole body, or 413 above MAX_CONTENT_LENGTH, whether it has a Content-Length or is chunked.

    werkzeug's own stream stops a chunked body at the limit without saying that it went on (the truncated
    body would be evaluated): read through a stream one byte longer to tell.
    """
    limit: int = current_app.config["MAX_CONTENT_LENGTH"]
    body = get_input_stream(request.environ, max_content_length=limit + 1).read()
    if len(body) > limit:
        raise RequestEntityTooLarge()
    return body


def as_of_parameter(name: str = "asOf") -> datetime:
    raw = request.args.get(name)
    if raw is None:
        return datetime.now(timezone.utc)
    try:
        return parse_instant_parameter(raw)
    except TimeError as exc:
        raise InputError(Issue("input-bad-parameter", f"{name}: {exc}", name)) from exc


def infusion_parameter(name: str = "infusionDate") -> tuple[datetime | None, bool]:
    """infusionDate as a date or a dateTime with a UTC offset (see parse_infusion_date)."""
    raw = request.args.get(name)
    if raw is None:
        return None, False
    try:
        return parse_infusion_date(raw)
    except TimeError as exc:
        raise InputError(Issue("input-bad-parameter", f"{name}: {exc}", name)) from exc


def strict_parameter(name: str = "validate") -> bool | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if raw not in ("strict", "lenient"):
        raise InputError(Issue("input-bad-parameter", f"{name} must be 'strict' or 'lenient', not {raw!r}", name))
    return raw == "strict"
