"""CORS: browser CDS clients on the allow-list; preflight answered without credentials on every route."""

from __future__ import annotations

import pytest

ALLOWED = "https://ehr.example.org"
ROUTES = ["/cds-services", "/cds-services/car-t-toxicity", "/cds-services/car-t-glucocorticoid-order-check",
          "/cds-services/car-t-toxicity/feedback", "/evaluate"]


@pytest.fixture(scope="module")
def app(production_app):
    return production_app(cors_origins=f"{ALLOWED}, https://sandbox.cds-hooks.org")


def preflight(client, path: str, origin: str):
    return client.options(path, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                         "Access-Control-Request-Headers": "authorization, content-type"})


@pytest.mark.parametrize("path", ROUTES)
def test_preflight_from_an_allowed_origin_without_credentials(app, path):
    response = preflight(app.test_client(), path, ALLOWED)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")} == {"authorization", "content-type"}
    assert "POST" in {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert response.headers["Access-Control-Max-Age"] == "600"


@pytest.mark.parametrize("path", ROUTES)
def test_preflight_from_another_origin_gets_no_cors_headers(app, path):
    response = preflight(app.test_client(), path, "https://evil.example.org")
    assert not [name for name in response.headers.keys() if name.startswith("Access-Control-")]


def test_origins_are_matched_exactly(app):
    """An origin is a literal, not a pattern or a prefix."""
    for origin in ("https://ehr.example.org.evil.example", "https://ehrXexample.org", "http://ehr.example.org"):
        assert "Access-Control-Allow-Origin" not in preflight(app.test_client(), "/cds-services", origin).headers, origin


def test_allowed_origin_reads_the_answer_and_the_401(app, mint):
    client = app.test_client()
    refused = client.get("/cds-services", headers={"Origin": ALLOWED})
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "WWW-Authenticate" in refused.headers["Access-Control-Expose-Headers"]
    token = mint("/cds-services")
    answered = client.get("/cds-services", headers={"Origin": ALLOWED, "Authorization": f"Bearer {token}"})
    assert answered.status_code == 200 and answered.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert answered.headers["Vary"] == "Origin"  # two origins configured: the answer depends on the caller's


def test_production_without_origins_has_no_cors(production_app):
    client = production_app(cors_origins="").test_client()
    assert "Access-Control-Allow-Origin" not in preflight(client, "/cds-services", ALLOWED).headers


def test_development_allows_any_origin(app_factory):
    client = app_factory().test_client()
    response = preflight(client, "/cds-services/car-t-toxicity", "http://localhost:3000")
    assert response.status_code == 200 and response.headers["Access-Control-Allow-Origin"] == "*"
    assert client.get("/cds-services").headers["Access-Control-Allow-Origin"] == "*"


def test_private_network_preflight_for_allowed_origins_only(app):
    """Chrome asks before a public page calls a private address (a hospital intranet, a laptop)."""
    client = app.test_client()

    def ask(origin: str):
        return client.options("/cds-services/car-t-toxicity", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Private-Network": "true"})

    assert ask(ALLOWED).headers["Access-Control-Allow-Private-Network"] == "true"
    assert "Access-Control-Allow-Private-Network" not in ask("https://evil.example.org").headers
