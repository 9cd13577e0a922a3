"""POST /bench/loads (CARTOX_BENCH_ENDPOINTS=true only): the floor bench/run.py compares evaluations with.

It reads the body and runs orjson.loads on it, nothing else, behind the same server front and Flask hooks
as /evaluate, so the ratio of the two latencies is the cost of the evaluation itself.
"""

from __future__ import annotations

import orjson
from flask import Blueprint, Response

from service.errors import InputError, Issue
from service.http_api.common import json_response, read_body

blueprint = Blueprint("bench", __name__)


@blueprint.post("/bench/loads")
def loads() -> Response:
    try:
        document = orjson.loads(read_body())
    except orjson.JSONDecodeError as exc:
        raise InputError(Issue("input-not-json", f"Body is not valid JSON: {exc}", None, fhir_type="structure")) from exc
    return json_response({"parsed": type(document).__name__})
