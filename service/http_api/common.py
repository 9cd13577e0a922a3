"""Shared HTTP plumbing: content types, request parameters, FHIR OperationOutcome responses."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
from flask import Response, current_app, request

from service.errors import InputError, Issue, operation_outcome
from service.fhir_input.times import TimeError, parse_infusion_date, parse_instant_parameter
from service.pipeline import Engine

JSON_TYPES = ("application/json", "application/fhir+json")
FHIR_JSON = "application/fhir+json"


def engine() -> Engine:
    return current_app.extensions["cartox.engine"]


def json_response(document: object, status: int = 200, mimetype: str = "application/json") -> Response:
    return Response(orjson.dumps(document), status=status, mimetype=mimetype)


def outcome_response(issues: list[Issue], status: int) -> Response:
    codesystem = engine().output.codesystem
    return json_response(operation_outcome(issues, codesystem), status, FHIR_JSON)


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
    return request.get_data(cache=False)


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
