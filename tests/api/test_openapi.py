"""GET /openapi.json: a valid OpenAPI 3.1 document that describes every route the app serves."""

from __future__ import annotations

import re

from openapi_spec_validator import OpenAPIV31SpecValidator, validate

UNDOCUMENTED_METHODS = {"HEAD", "OPTIONS"}  # answered by Flask for every route


def _template(path: str) -> str:
    """/cds-services/<service_id>/feedback and /cds-services/{id}/feedback both become /cds-services/{}/feedback."""
    return re.sub(r"\{[^}]*\}", "{}", re.sub(r"<(?:[^:>]+:)?[^>]+>", "{}", path))


def _documented_path(paths: dict, rule: str) -> str | None:
    """The OpenAPI path describing a Flask rule: the same template, or a template matching a literal rule."""
    wanted = _template(rule)
    for path in paths:
        if _template(path) == wanted:
            return path
        pattern = "^" + re.sub(r"\\\{\\\}", "[^/]+", re.escape(_template(path))) + "$"
        if "{" not in wanted and re.match(pattern, wanted):
            return path
    return None


def test_openapi_document_is_valid_openapi_3_1(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    document = response.get_json()
    assert document["openapi"] == "3.1.0"
    validate(document, cls=OpenAPIV31SpecValidator)
    from service import __version__

    assert document["info"]["version"] == __version__


def test_every_route_and_method_is_documented(app, client):
    paths = client.get("/openapi.json").get_json()["paths"]
    undocumented = []
    for rule in app.url_map.iter_rules():
        path = _documented_path(paths, rule.rule)
        for method in sorted(set(rule.methods or ()) - UNDOCUMENTED_METHODS):
            if path is None or method.lower() not in paths[path]:
                undocumented.append(f"{method} {rule.rule}")
    assert not undocumented, f"routes missing from openapi.yaml: {undocumented}"


def test_every_operation_documents_errors_as_operation_outcome(client):
    document = client.get("/openapi.json").get_json()
    error = document["components"]["responses"]["Error"]["content"]
    assert list(error) == ["application/fhir+json"]
    assert error["application/fhir+json"]["schema"] == {"$ref": "#/components/schemas/OperationOutcome"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["responses"]["4XX"] == {"$ref": "#/components/responses/Error"}, f"{method} {path}"


def test_the_feedback_operation_follows_cds_hooks(client):
    document = client.get("/openapi.json").get_json()
    operation = document["paths"]["/cds-services/{id}/feedback"]["post"]
    assert set(operation["parameters"][0]["schema"]["enum"]) == {"car-t-toxicity", "car-t-glucocorticoid-order-check"}
    item = document["components"]["schemas"]["Feedback"]["properties"]["feedback"]["items"]
    assert item["required"] == ["card", "outcome", "outcomeTimestamp"]
    assert item["properties"]["outcome"]["enum"] == ["accepted", "overridden"]
    assert set(item["properties"]["overrideReason"]["properties"]) == {"reason", "userComment"}
    assert "200" in operation["responses"]
