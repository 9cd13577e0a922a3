"""schemathesis against a running `cartox serve`, driven by the OpenAPI document it serves at /openapi.json:
no 5xx, every response (status, content type, body) is one the document describes, and every CDS Hooks
document among them passes the CDS Hooks 2.0 conformance check. Examples are bounded per operation so that
the run stays well under a minute."""

from __future__ import annotations

import json
import urllib.request

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance, status_code_conformance

from service.http_api.openapi import openapi_document

pytestmark = pytest.mark.deploy

EXAMPLES_PER_OPERATION = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# The packaged document, loaded at collection (the server starts later); test_served_document_is_the_packaged_one
# proves that it is the one the server serves.
schema = schemathesis.openapi.from_dict(openapi_document())


def test_served_document_is_the_packaged_one(cartox_server):
    with urllib.request.urlopen(f"{cartox_server.base_url}/openapi.json", timeout=10) as response:
        assert json.loads(response.read()) == openapi_document()


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
def test_api_answers_as_documented(case, cartox_server, cds_conformance):
    response = case.call_and_validate(base_url=cartox_server.base_url, checks=CHECKS, timeout=30)
    content_type = next((values[0] for name, values in response.headers.items() if name.lower() == "content-type"), "")
    mimetype = content_type.split(";")[0].strip()
    kind = cds_conformance.document_kind(case.method, case.formatted_path, response.status_code, mimetype)
    if kind is not None:
        assert cds_conformance.violations(response.json(), kind) == []
