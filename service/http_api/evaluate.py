"""POST /evaluate: a FHIR Bundle in; CDS Hooks cards or a FHIR Bundle out."""

from __future__ import annotations

from flask import Blueprint, Response, request

from service.errors import InputError, Issue
from service.http_api.audit import audit_evaluation
from service.http_api.common import (
    FHIR_JSON,
    as_of_parameter,
    engine,
    infusion_parameter,
    json_response,
    require_json_body,
    strict_parameter,
)
from service.pipeline import RequestOptions, render

blueprint = Blueprint("evaluate", __name__)

_FORMATS = {"fhir": "fhir", "cards": "cards", "json": "cards", "application/fhir+json": "fhir", "application/json": "cards"}


def response_format() -> str:
    """_format wins over Accept; Accept prefers the client's best of JSON (cards) and FHIR JSON (Bundle)."""
    explicit = request.args.get("_format")
    if explicit is not None:
        chosen = _FORMATS.get(explicit)
        if chosen is None:
            raise InputError(
                Issue("input-not-acceptable", f"_format {explicit!r} cannot be served: use fhir or cards", "_format", fhir_type="not-supported"),
                status=406,
            )
        return chosen
    if not request.headers.get("Accept"):
        return "cards"
    best = request.accept_mimetypes.best_match(["application/json", FHIR_JSON])
    if best is None:
        raise InputError(
            Issue("input-not-acceptable", f"Accept {request.headers.get('Accept')!r} cannot be served: use application/json or application/fhir+json",
                  None, fhir_type="not-supported"),
            status=406,
        )
    return "fhir" if best == FHIR_JSON else "cards"


@blueprint.post("/evaluate")
def evaluate() -> Response:
    fmt = response_format()
    body = require_json_body()
    infusion, date_only = infusion_parameter()
    options = RequestOptions(
        as_of=as_of_parameter(),
        guideline=request.args.get("guideline"),
        infusion=infusion,
        infusion_date_only=date_only,
        strict=strict_parameter(),
    )
    service = engine()
    service.check_guideline(options.guideline)
    outcome = service.evaluate_bundle_bytes(body, options)
    output_ids = [resource["id"] for resource in (*outcome.resources, outcome.operation_outcome)]
    audit_evaluation("evaluate", body, outcome, outcome.cards if fmt == "cards" else (), output_ids)
    return Response(render(outcome, fmt), mimetype=FHIR_JSON if fmt == "fhir" else "application/json")


@blueprint.get("/evaluate")
def evaluate_help() -> Response:
    return json_response({
        "usage": "POST a FHIR R4 Bundle (application/fhir+json) to /evaluate",
        "parameters": {
            "asOf": "evaluation time, ISO 8601 with a UTC offset (default: now)",
            "guideline": "management guideline version: " + ", ".join(engine().rules.guideline_ids),
            "infusionDate": "day 0 (date or dateTime with offset); overrides the CAR-T infusion in the bundle",
            "validate": "strict | lenient (strict = full FHIR R4B validation of accepted resources)",
            "_format": "fhir (Bundle) | cards (CDS Hooks response, default)",
        },
    })
