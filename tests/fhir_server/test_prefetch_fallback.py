"""CDS Hooks prefetch fallback against a real FHIR server on loopback (tests/fhir_server/server.mjs).

The generated patient (bench/generate.py, CRS grade 3 by day 4, ICANS data) is loaded into the server; a call
without prefetch must give exactly the cards (with their RiskAssessments and CarePlan) of the same call with
the full prefetch. Then: partial prefetch, paging, null values, and every way the server can fail, each a 412
within the time budget that says which data and why.
"""

from __future__ import annotations

import http.server
import threading
import time
from typing import Any, Iterator

import orjson
import pytest
import requests

AS_OF = "2026-03-07T12:00:00+01:00"
SERVICE = "/cds-services/car-t-toxicity"
KEYS = ("patient", "observations", "medicationAdministrations", "conditions")  # required
OPTIONAL = ("procedures",)  # fetched when missing; left out when that fails
# Time a 412 may take beyond the budget: the test client, the evaluation of nothing, a loaded CI machine.
MARGIN_SECONDS = 1.0


def _searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}", "resource": r,
                       "search": {"mode": "match"}} for r in resources]}


def _full_prefetch(bundle: dict[str, Any]) -> dict[str, Any]:
    """What an EHR that prefetches everything sends for the generated patient."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for entry in bundle["entry"]:
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    (patient,) = by_type["Patient"]
    return {"patient": patient, "observations": _searchset(by_type["Observation"]),
            "medicationAdministrations": _searchset(by_type["MedicationAdministration"]),
            "conditions": _searchset(by_type.get("Condition", [])), "procedures": _searchset(by_type.get("Procedure", []))}


def _hook_request(fhir_server: str | None, prefetch: dict[str, Any] | None = None, token: str | None = None,
                  patient_id: str = "pat-bench") -> dict[str, Any]:
    request: dict[str, Any] = {"hook": "patient-view", "hookInstance": "5b0c1e9e-8a57-4f0c-b1a3-6f2a7d3c9e10",
                               "context": {"userId": "Practitioner/prn-hem-01", "patientId": patient_id}}
    if fhir_server is not None:
        request["fhirServer"] = fhir_server
    if prefetch is not None:
        request["prefetch"] = prefetch
    if token is not None:
        request["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                        "scope": "patient/*.read", "subject": "cartox"}
    return request


def _post(test_client, body: dict[str, Any], as_of: str = AS_OF):
    return test_client.post(f"{SERVICE}?asOf={as_of.replace('+', '%2B')}", data=orjson.dumps(body), content_type="application/json")


def _cards(response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.get_data(as_text=True)[:800]
    return orjson.loads(response.get_data())["cards"]


def _completeness(card: dict[str, Any]) -> str:
    prediction = card["suggestions"][0]["actions"][0]["resource"]["prediction"][0]
    return {e["url"].rsplit("/", 1)[-1]: e.get("valueCode") for e in prediction["extension"]}["data-completeness"]


def _says_partial(cards: list[dict[str, Any]]) -> bool:
    """A card says that a page of observations is missing, and its assessment is marked incomplete."""
    partial = [card for card in cards if "prefetch\\.observations\\: searchset has a next page" in card["detail"]]
    return bool(partial) and all(_completeness(card) == "incomplete" for card in partial)


@pytest.fixture(scope="session")
def loaded_server(fhir_server, _small_bytes):
    """The server with the generated patient and a patient whose vasopressor is known only through an
    included Medication (MedicationAdministration.medicationReference)."""
    bundle = orjson.loads(_small_bytes)
    fhir_server.load([entry["resource"] for entry in bundle["entry"]])
    fhir_server.load(_pressor_patient())
    return fhir_server


def _pressor_patient() -> list[dict[str, Any]]:
    subject = {"reference": "Patient/pat-ref"}
    quantity = {"system": "http://unitsofmeasure.org"}
    return [
        {"resourceType": "Patient", "id": "pat-ref", "birthDate": "1961-03-14"},
        {"resourceType": "Medication", "id": "med-ne", "code": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "7512"}], "text": "Norepinephrine 8 mg/250 mL"}},
        {"resourceType": "MedicationAdministration", "id": "ne1", "status": "in-progress", "subject": subject,
         "medicationReference": {"reference": "Medication/med-ne"}, "effectivePeriod": {"start": "2026-03-05T09:00:00+01:00"}},
        {"resourceType": "MedicationAdministration", "id": "cart", "status": "completed", "subject": subject,
         "medicationCodeableConcept": {"text": "axicabtagene ciloleucel"}, "effectiveDateTime": "2026-03-02T10:00:00+01:00"},
        {"resourceType": "Observation", "id": "ref-t1", "status": "final", "subject": subject,
         "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]}, "effectiveDateTime": "2026-03-05T08:00:00+01:00",
         "valueQuantity": {"value": 38.9, "unit": "Cel", "code": "Cel", **quantity}},
    ]


@pytest.fixture
def server(loaded_server):
    loaded_server.clear_requests()
    return loaded_server


@pytest.fixture(scope="session")
def expected_cards(app, _small_bytes) -> list[dict[str, Any]]:
    """The cards of the generated patient with the full prefetch (no FHIR query)."""
    cards = _cards(_post(app.test_client(), _hook_request(None, _full_prefetch(orjson.loads(_small_bytes)))))
    assert [card["summary"].split(" ")[0] for card in cards] == ["CRS", "Neutropenia", "ICAHT", "ICANS", "Glucocorticoids"]
    return cards


def _queried(server, resource_type: str) -> list[dict[str, Any]]:
    return [r for r in server.requests_received() if r["url"].startswith(f"/fhir/{resource_type}")
            or r["url"].startswith(f"/secured/fhir/{resource_type}")]


# --------------------------------------------------------------------------------------------------
# The same cards with and without prefetch
# --------------------------------------------------------------------------------------------------
def test_cards_without_prefetch_equal_cards_with_full_prefetch(client, server, expected_cards):
    cards = _cards(_post(client, _hook_request(server.base)))
    assert cards == expected_cards
    suggested = [action["resource"]["resourceType"] for card in cards for s in card["suggestions"] for action in s["actions"]]
    assert "RiskAssessment" in suggested and "CarePlan" in suggested
    received = sorted(server.requests_received(), key=lambda r: r["url"])
    assert [r["url"].split("?")[0] for r in received] == [
        "/fhir/Condition", "/fhir/MedicationAdministration", "/fhir/Observation", "/fhir/Patient/pat-bench", "/fhir/Procedure"]
    assert all(r["authorization"] is None for r in received), "no fhirAuthorization: no Authorization header"
    assert "_include=MedicationAdministration:medication" in received[1]["url"]


def test_included_medication_is_fetched_and_read(client, server):
    """The vasopressor is known only by the Medication the search includes: CRS grade 3, as with prefetch."""
    card = _cards(_post(client, _hook_request(server.base, patient_id="pat-ref"), as_of="2026-03-05T12:00:00+01:00"))[0]
    prediction = card["suggestions"][0]["actions"][0]["resource"]["prediction"][0]
    assert prediction["outcome"]["coding"][0]["code"] == "grade-3"
    basis = [b["reference"] for b in card["suggestions"][0]["actions"][0]["resource"]["basis"]]
    assert "MedicationAdministration/ne1" in basis


@pytest.mark.parametrize("sent", [("patient", "observations"), ("medicationAdministrations",), ("conditions", "patient")])
def test_partial_prefetch_is_merged(client, server, expected_cards, small_bundle, sent):
    full = _full_prefetch(small_bundle)
    cards = _cards(_post(client, _hook_request(server.base, {key: full[key] for key in sent})))
    assert cards == expected_cards
    fetched = {r["url"].split("?")[0].rsplit("/", 2)[-1 if "?" in r["url"] else -2] for r in server.requests_received()}
    resource_types = {"patient": "Patient", "observations": "Observation", "medicationAdministrations": "MedicationAdministration",
                      "conditions": "Condition", "procedures": "Procedure"}
    assert fetched == {resource_types[key] for key in KEYS + OPTIONAL if key not in sent}


def test_null_prefetch_value_is_not_fetched(client, server):
    response = _post(client, _hook_request(server.base, {"conditions": None, "medicationAdministrations": None}))
    cards = _cards(response)
    assert cards, "observations alone still grade"
    assert _queried(server, "Condition") == [] and _queried(server, "MedicationAdministration") == []
    assert len(_queried(server, "Observation")) == 1


def test_paging_with_a_small_page_size_gives_the_same_cards(fetching_app, server, expected_cards):
    client = fetching_app(fhir_page_size=7).test_client()
    assert _cards(_post(client, _hook_request(server.base))) == expected_cards
    pages = _queried(server, "Observation")
    assert len(pages) > 5, "the observations come in pages of 7"
    assert all("_count=7" in page["url"] for page in pages)
    assert [page["url"].split("_offset=")[1] for page in pages[1:]] == [str(7 * n) for n in range(1, len(pages))]


def test_page_cap_leaves_the_data_partial(fetching_app, server, expected_cards):
    client = fetching_app(fhir_page_size=7, fhir_max_pages=2).test_client()
    cards = _cards(_post(client, _hook_request(server.base)))
    assert len(_queried(server, "Observation")) == 2
    assert _says_partial(cards)


def test_prefetched_searchset_with_next_link_is_completed(client, server, expected_cards, small_bundle):
    """The EHR prefetched the first page of observations only: the other pages are fetched and merged."""
    first_page = requests.get(f"{server.base}/Observation", params={"patient": "pat-bench", "_count": "10"}, timeout=30).json()
    assert any(link["relation"] == "next" for link in first_page["link"])
    full = _full_prefetch(small_bundle)
    server.clear_requests()
    prefetch = {key: full[key] for key in ("patient", "medicationAdministrations", "conditions")} | {"observations": first_page}
    cards = _cards(_post(client, _hook_request(server.base, prefetch)))
    assert len(_queried(server, "Observation")) == 8  # 85 observations: 9 pages of 10, the first prefetched
    assert [_completeness(card) for card in cards] == [_completeness(card) for card in expected_cards]
    assert [card["summary"] for card in cards] == [card["summary"] for card in expected_cards]


# --------------------------------------------------------------------------------------------------
# Tokens and origins
# --------------------------------------------------------------------------------------------------
def test_access_token_is_sent_as_bearer_to_fhir_server(client, server, expected_cards):
    cards = _cards(_post(client, _hook_request(server.secured_base, token="cartox-test-token")))
    assert cards == expected_cards
    received = server.requests_received()
    assert len(received) == 5 and {r["authorization"] for r in received} == {"Bearer cartox-test-token"}  # 4 required, procedures


def test_token_required_and_missing_is_412_saying_401(client, server, outcome_issue):
    started = time.monotonic()
    response = _post(client, _hook_request(server.secured_base))
    outcome_issue(response, 412, "prefetch-fetch-unauthorized", "prefetch.patient")
    assert time.monotonic() - started < 2
    issues = orjson.loads(response.get_data())["issue"]
    assert [i["expression"][0] for i in issues] == [f"prefetch.{key}" for key in KEYS]
    assert all("answered 401 Unauthorized" in i["diagnostics"] for i in issues)
    urls = [r["url"] for r in server.requests_received()]
    assert urls and len(urls) == len(set(urls)), "a 401 is not retried"


def test_next_link_to_another_origin_is_not_followed(client, server, small_bundle):
    """localhost and 127.0.0.1 are two origins: the token must not go to a next link on the other one."""
    first_page = requests.get(f"{server.base}/Observation", params={"patient": "pat-bench", "_count": "10"}, timeout=30).json()
    for link in first_page["link"]:
        link["url"] = link["url"].replace("127.0.0.1", "localhost")
    full = _full_prefetch(small_bundle)
    server.clear_requests()
    prefetch = {key: full[key] for key in ("patient", "medicationAdministrations", "conditions", "procedures")} | {"observations": first_page}
    cards = _cards(_post(client, _hook_request(server.base, prefetch, token="cartox-test-token")))
    assert server.requests_received() == [], "nothing was asked of the other origin (nor of any)"
    assert _says_partial(cards)


# --------------------------------------------------------------------------------------------------
# Allow-list
# --------------------------------------------------------------------------------------------------
def test_server_not_on_allowlist_is_never_queried(fetching_app, server, outcome_issue):
    client = fetching_app(fhir_server_allowlist={"*": ("https://ehr.example.org/fhir",)}).test_client()
    response = _post(client, _hook_request(server.base, token="cartox-test-token"))
    outcome_issue(response, 412, "prefetch-server-not-allowed", "prefetch.patient")
    assert server.requests_received() == []


def test_issuer_entry_does_not_allow_an_unsigned_call(fetching_app, server, outcome_issue):
    client = fetching_app(fhir_server_allowlist={"https://ehr.example.org/issuer": (server.base,)}).test_client()
    outcome_issue(_post(client, _hook_request(server.base)), 412, "prefetch-server-not-allowed", "prefetch.patient")
    assert server.requests_received() == []


def test_allowlisted_server_is_queried(fetching_app, server, expected_cards):
    client = fetching_app(fhir_server_allowlist={"*": (server.base + "/",)}).test_client()
    assert _cards(_post(client, _hook_request(server.base))) == expected_cards


# --------------------------------------------------------------------------------------------------
# Server down, slow, failing: 412 within the budget
# --------------------------------------------------------------------------------------------------
def test_server_down_is_412_within_budget(fetching_app, closed_port, outcome_issue):
    budget = 2.0
    client = fetching_app(fhir_fetch_budget_seconds=budget).test_client()
    started = time.monotonic()
    response = _post(client, _hook_request(f"http://127.0.0.1:{closed_port}/fhir"))
    elapsed = time.monotonic() - started
    issue = outcome_issue(response, 412, "prefetch-fetch-failed", "prefetch.patient")
    assert "connection refused" in issue["diagnostics"]
    assert elapsed <= budget + MARGIN_SECONDS, elapsed


@pytest.mark.parametrize("budget, read_timeout", [(1.5, 3.0), (1.5, 0.5)])
def test_server_that_never_answers_is_412_at_the_budget(fetching_app, silent_server, outcome_issue, budget, read_timeout):
    """The read timeout is longer than the budget (the budget cuts it), or shorter (retries fill the budget)."""
    client = fetching_app(fhir_fetch_budget_seconds=budget, fhir_read_timeout_seconds=read_timeout).test_client()
    started = time.monotonic()
    response = _post(client, _hook_request(silent_server))
    elapsed = time.monotonic() - started
    issue = outcome_issue(response, 412, "prefetch-fetch-timeout", "prefetch.patient")
    assert "did not answer in time" in issue["diagnostics"] or "within the budget of 1.5 s" in issue["diagnostics"]
    assert budget - 0.6 <= elapsed <= budget + MARGIN_SECONDS, elapsed


def test_server_that_trickles_its_answer_is_412_at_the_budget(fetching_app, trickling_server, outcome_issue):
    """Every byte comes before the read timeout, the whole never does: the budget still ends it."""
    budget = 1.5
    client = fetching_app(fhir_fetch_budget_seconds=budget, fhir_read_timeout_seconds=1.0).test_client()
    started = time.monotonic()
    response = _post(client, _hook_request(trickling_server))
    elapsed = time.monotonic() - started
    issue = outcome_issue(response, 412, "prefetch-fetch-timeout", "prefetch.patient")
    assert "within the budget of 1.5 s" in issue["diagnostics"]
    assert budget - 0.1 <= elapsed <= budget + MARGIN_SECONDS, elapsed


class _FlakyProxy(http.server.ThreadingHTTPServer):
    """Answers each path first with `status` (and Retry-After), then as the real FHIR server does."""

    def __init__(self, upstream: str, status: int, retry_after: str | None) -> None:
        self.upstream, self.status, self.retry_after = upstream, status, retry_after
        self.seen: list[str] = []
        super().__init__(("127.0.0.1", 0), _FlakyHandler)


class _FlakyHandler(http.server.BaseHTTPRequestHandler):
    server: _FlakyProxy

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        first = self.path not in self.server.seen
        self.server.seen.append(self.path)
        if first:
            self.send_response(self.server.status)
            if self.server.retry_after is not None:
                self.send_header("Retry-After", self.server.retry_after)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        upstream = requests.get(self.server.upstream + self.path.removeprefix("/fhir"), timeout=30)
        self.send_response(upstream.status_code)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(upstream.content)))
        self.end_headers()
        self.wfile.write(upstream.content)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def flaky_proxy(server):
    made: list[_FlakyProxy] = []

    def start(status: int, retry_after: str | None) -> _FlakyProxy:
        proxy = _FlakyProxy(server.base, status, retry_after)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        made.append(proxy)
        return proxy

    yield start
    for proxy in made:
        proxy.shutdown()
        proxy.server_close()


@pytest.mark.parametrize("status, retry_after", [(503, None), (429, "1"), (502, "0")])
def test_429_and_5xx_are_retried(fetching_app, flaky_proxy, expected_cards, small_bundle, status, retry_after):
    proxy = flaky_proxy(status, retry_after)
    client = fetching_app().test_client()
    full = _full_prefetch(small_bundle)
    del full["observations"]
    started = time.monotonic()
    cards = _cards(_post(client, _hook_request(f"http://127.0.0.1:{proxy.server_address[1]}/fhir", full)))
    elapsed = time.monotonic() - started
    assert cards == expected_cards
    assert len(proxy.seen) == 2 and proxy.seen[0] == proxy.seen[1], "the observation search, then its retry"
    assert elapsed >= (1.0 if retry_after == "1" else 0.0 if retry_after == "0" else 0.2), "Retry-After, else the backoff"


def test_retry_after_beyond_the_budget_is_412_at_once(fetching_app, flaky_proxy, outcome_issue):
    proxy = flaky_proxy(429, "30")
    client = fetching_app(fhir_fetch_budget_seconds=2.0).test_client()
    started = time.monotonic()
    response = _post(client, _hook_request(f"http://127.0.0.1:{proxy.server_address[1]}/fhir"))
    issue = outcome_issue(response, 412, "prefetch-fetch-failed", "prefetch.patient")
    assert "429 Too Many Requests" in issue["diagnostics"] and "no time left in the budget" in issue["diagnostics"]
    assert time.monotonic() - started < 1.0
    assert proxy.seen and len(proxy.seen) == len(set(proxy.seen)), "no query retried"


def test_paged_prefetch_without_fhir_server_is_used_as_partial(client, small_bundle):
    """Nothing to fetch the other pages from: the pages sent are evaluated and the cards say so."""
    prefetch = _full_prefetch(small_bundle)
    prefetch["observations"]["link"] = [{"relation": "next", "url": "https://ehr.example.org/fhir/Observation?page=2"}]
    assert _says_partial(_cards(_post(client, _hook_request(None, prefetch))))


def test_unknown_patient_is_412_saying_404(client, server, outcome_issue):
    issue = outcome_issue(_post(client, _hook_request(server.base, patient_id="no-such-patient")), 412, "prefetch-fetch-failed",
                          "prefetch.patient")
    assert issue["diagnostics"].endswith("answered 404 Not Found")
    others = orjson.loads(_post(client, _hook_request(server.base, patient_id="no-such-patient")).get_data())["issue"][1:]
    assert all("since the query for 'patient' failed: " in other["diagnostics"] for other in others), \
        "the searches (empty) did not fail: they are listed only when the patient's 404 cut them short"


def test_order_sign_service_fetches_too(client, server):
    """The order-sign service declares the same prefetch and falls back the same way."""
    draft = {"resourceType": "MedicationRequest", "id": "draft-dex", "status": "draft", "intent": "order",
             "subject": {"reference": "Patient/pat-bench"},
             "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "3264"}],
                                           "text": "dexamethasone"},
             "dosageInstruction": [{"timing": {"repeat": {"frequency": 1, "period": 6, "periodUnit": "h", "boundsDuration": {
                 "value": 3, "unit": "d", "system": "http://unitsofmeasure.org", "code": "d"}}},
                 "route": {"text": "intravenous"},
                 "doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}]}]}
    body = _hook_request(server.base) | {"hook": "order-sign"}
    body["context"]["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]}
    response = client.post(f"/cds-services/car-t-glucocorticoid-order-check?asOf={AS_OF.replace('+', '%2B')}",
                           data=orjson.dumps(body), content_type="application/json")
    cards = _cards(response)
    assert cards and any("dexamethasone" in card["summary"].lower() for card in cards)
    assert len(server.requests_received()) == 5  # the 4 required keys and the optional procedures


@pytest.mark.parametrize("observations", [
    {"resourceType": "Bundle", "type": "searchset", "entry": "not a list", "link": [{"relation": "next", "url": "x"}]},
    {"resourceType": "Observation", "id": "o1", "link": [{"relation": "next", "url": "x"}]},
])
def test_malformed_paged_prefetch_is_reported_not_fetched(client, server, small_bundle, observations):
    prefetch = _full_prefetch(small_bundle) | {"observations": observations}
    response = _post(client, _hook_request(server.base, prefetch))
    assert 400 <= response.status_code < 500 and response.status_code != 412, response.get_data(as_text=True)[:300]
    assert server.requests_received() == []


class _RecordingServer(http.server.ThreadingHTTPServer):
    """Answers every GET with `status`, `headers` and `body`, and records the request headers it got."""

    def __init__(self, status: int, headers: dict[str, str], body: dict[str, Any] | None) -> None:
        self.status, self.headers, self.body = status, headers, body
        self.received: list[dict[str, str]] = []
        super().__init__(("127.0.0.1", 0), _RecordingHandler)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/fhir"


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    server: _RecordingServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.received.append(dict(self.headers))
        payload = orjson.dumps(self.server.body) if self.server.body is not None else b""
        self.send_response(self.server.status)
        for name, value in self.server.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recording_server() -> Iterator[Any]:
    made: list[_RecordingServer] = []

    def start(status: int = 200, headers: dict[str, str] | None = None, body: dict[str, Any] | None = None) -> _RecordingServer:
        recorder = _RecordingServer(status, headers or {}, body)
        threading.Thread(target=recorder.serve_forever, daemon=True).start()
        made.append(recorder)
        return recorder

    yield start
    for recorder in made:
        recorder.shutdown()
        recorder.server_close()


def test_redirect_is_not_followed_and_the_token_stays(fetching_app, recording_server, outcome_issue):
    elsewhere = recording_server()
    redirecting = recording_server(302, {"Location": f"{elsewhere.base}/Patient/pat-bench"})
    response = _post(fetching_app().test_client(), _hook_request(redirecting.base, token="cartox-test-token"))
    issue = outcome_issue(response, 412, "prefetch-fetch-failed", "prefetch.patient")
    assert "302 Found (redirects are not followed)" in issue["diagnostics"]
    assert elsewhere.received == []
    assert redirecting.received[0]["Authorization"] == "Bearer cartox-test-token"


def test_fhir_server_cookies_are_never_sent_back(fetching_app, recording_server, small_bundle):
    """A cookie one FHIR server sets must not ride on a later call made for another caller."""
    patient = {"resourceType": "Patient", "id": "pat-bench", "birthDate": "1961-03-14"}
    recorder = recording_server(200, {"Content-Type": "application/fhir+json", "Set-Cookie": "session=abc; Path=/"}, patient)
    client = fetching_app().test_client()
    full = _full_prefetch(small_bundle)
    del full["patient"]
    for _ in range(2):
        _cards(_post(client, _hook_request(recorder.base, full)))
    assert len(recorder.received) == 2
    assert all("Cookie" not in headers and "Authorization" not in headers for headers in recorder.received)


def test_optional_procedures_unfetchable_are_left_out(client, server, expected_cards, small_bundle):
    """The four required keys sent, fhirServer not allowed (no loopback): the call is answered without the
    optional procedures, nothing is queried."""
    full = _full_prefetch(small_bundle)
    required = {key: full[key] for key in KEYS}
    cards = _cards(_post(client, _hook_request("https://ehr.example.org/fhir", required)))
    assert cards == expected_cards
    assert server.requests_received() == []
