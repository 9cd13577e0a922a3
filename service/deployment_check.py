"""`cartox check`: the shipped scenario pack run against a deployed cartox, so that a site can verify it.

Every rule case (rules/*.cases.yaml) is sent three times: as a CDS Hooks patient-view request with the
case's data as prefetch, and as a Bundle to POST /evaluate in both formats (cards and FHIR). Identical input
and evaluation time give identical output, so each answer must equal, field for field, what this
installation computes for the same request with the same configuration (the CARTOX_* variables of this
shell: run the check with the deployment's). The case's own expectations are checked on that local answer
as well, so a pass means the deployment gives the graded, reviewed result.

Each call carries a fresh credential: a JWT signed with the client's private key (ES384 or RS384 by key
type; aud = the URL called, a new jti, a short exp), or an API key for /evaluate.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jwt
import orjson
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from service.rule_cases.cases import Case, CaseFailure, case_bundle, load_cases, run_case
from service.settings import Settings

TOXICITY_SERVICE = "/cds-services/car-t-toxicity"
TOKEN_LIFETIME_SECONDS = 60
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# A hookInstance is any uuid; one derived from the case name keeps every request of a case reproducible.
_HOOK_NAMESPACE = uuid.UUID("0f5c3c9e-3b0e-4c55-9d55-5a0c1c6b7f21")


class CheckError(Exception):
    """The check cannot run at all (unreadable key, unknown key type ...): reported without traceback."""


class Signer:
    """Mints one JWT per call as a CDS Client does (CDS Hooks 2.0 security)."""

    def __init__(self, private_key_pem: bytes, issuer: str, key_id: str | None = None) -> None:
        try:
            key = load_pem_private_key(private_key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise CheckError(f"--signing-key: not an unencrypted PEM private key ({exc})") from None
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if key.curve.name != "secp384r1":
                raise CheckError(f"--signing-key: ES384 needs a P-384 key, not {key.curve.name}")
            self.algorithm = "ES384"
        elif isinstance(key, rsa.RSAPrivateKey):
            self.algorithm = "RS384"
        else:
            raise CheckError(f"--signing-key: a {type(key).__name__} cannot sign ES384 or RS384 (use an EC P-384 or RSA key)")
        self._key = key
        self.issuer = issuer
        self.key_id = key_id or key_thumbprint(self._key.public_key())

    def token(self, audience: str) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": self.issuer, "aud": audience, "iat": now, "exp": now + TOKEN_LIFETIME_SECONDS,
                  "jti": str(uuid.uuid4())}
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers={"kid": self.key_id, "typ": "JWT"})


def key_thumbprint(public_key: Any) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): the key's kid unless one is given."""
    algorithm = ECAlgorithm if isinstance(public_key, ec.EllipticCurvePublicKey) else RSAAlgorithm
    jwk = json.loads(algorithm.to_jwk(public_key))
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class Credentials:
    signer: Signer | None = None
    api_key: str | None = None
    api_key_header: str = "X-API-Key"

    def headers(self, url: str, for_evaluate: bool) -> dict[str, str]:
        """A fresh token for this URL (jti cannot repeat), or the API key on /evaluate."""
        if for_evaluate and self.api_key:
            return {self.api_key_header: self.api_key}
        if self.signer is not None:
            audience = url.split("?", 1)[0]
            return {"Authorization": f"Bearer {self.signer.token(audience)}"}
        return {}


@dataclass(frozen=True)
class Call:
    """One HTTP request of a case: what is sent, and the label its result is printed under."""

    label: str
    method: str
    path: str  # with its query string
    body: bytes | None
    content_type: str | None = None
    accept: str | None = None


@dataclass
class Result:
    name: str
    status: str  # ok | FAIL | skip
    reasons: list[str] = field(default_factory=list)


def prefetch_of(bundle: dict[str, Any]) -> dict[str, Any]:
    """The case's resources as the four prefetch keys of the service: the Patient and searchset Bundles."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for entry in bundle["entry"]:
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])

    def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
        entries = [{"resource": resource, "search": {"mode": "match"}} for resource in resources]
        return {"resourceType": "Bundle", "type": "searchset", "total": len(resources), **({"entry": entries} if entries else {})}

    patients = by_type.get("Patient", [])
    return {
        "patient": patients[0] if patients else None,
        "observations": searchset(by_type.get("Observation", [])),
        "medicationAdministrations": searchset(by_type.get("MedicationAdministration", []) + by_type.get("Medication", [])),
        "conditions": searchset(by_type.get("Condition", [])),
    }


def _time(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def case_calls(case: Case) -> list[Call]:
    """The CDS Hooks request and the two /evaluate requests of a case (same data, same parameters)."""
    spec = case.spec
    params = {"asOf": _time(spec["as_of"]), "infusionDate": spec.get("infusion_date"), "guideline": spec.get("guideline")}
    query = "?" + "&".join(f"{name}={quote(_time(value), safe='')}" for name, value in params.items() if value is not None)
    bundle = case_bundle(case)
    hook_request = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid5(_HOOK_NAMESPACE, f"{case.file.name}::{case.name}")),
        "context": {"patientId": bundle["entry"][0]["resource"]["id"], "userId": "Practitioner/cartox-check"},
        "prefetch": prefetch_of(bundle),
    }
    return [
        Call("cds-hooks", "POST", TOXICITY_SERVICE + query, orjson.dumps(hook_request), "application/json"),
        Call("evaluate-cards", "POST", "/evaluate" + query, orjson.dumps(bundle), "application/fhir+json", "application/json"),
        Call("evaluate-fhir", "POST", "/evaluate" + query, orjson.dumps(bundle), "application/fhir+json", "application/fhir+json"),
    ]


def first_difference(expected: Any, actual: Any, path: str = "$") -> str | None:
    """The JSON path of the first difference between two documents, None when they are equal."""
    if type(expected) is not type(actual) and not (isinstance(expected, (int, float)) and isinstance(actual, (int, float))):
        return f"{path}: expected {type(expected).__name__}, got {type(actual).__name__}"
    if isinstance(expected, dict):
        for key in expected.keys() | actual.keys():
            if key not in actual:
                return f"{path}.{key}: missing"
            if key not in expected:
                return f"{path}.{key}: unexpected"
            found = first_difference(expected[key], actual[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(expected, list):
        if len(expected) != len(actual):
            return f"{path}: expected {len(expected)} items, got {len(actual)}"
        for index, (left, right) in enumerate(zip(expected, actual)):
            found = first_difference(left, right, f"{path}[{index}]")
            if found:
                return found
        return None
    if expected != actual:
        left, right = str(expected), str(actual)
        start = max(next((i for i, (a, b) in enumerate(zip(left, right)) if a != b), min(len(left), len(right))) - 30, 0)
        return f"{path}: expected {left[start:start + 80]!r}, got {right[start:start + 80]!r}"
    return None


class LocalReference:
    """This installation's answers to the same calls: one Flask app per settings variant, no network."""

    def __init__(self, base: Settings, rules_dir: Path) -> None:
        self.base = base.with_values(log_level="WARNING")  # the reference's own request lines are noise here
        self.rules_dir = rules_dir
        self._clients: dict[str, Any] = {}

    def answer(self, case: Case, call: Call) -> tuple[int, Any]:
        client = self._client(case.spec.get("settings", {}))
        headers = {"Accept": call.accept} if call.accept else {}
        response = client.open(call.path, method=call.method, data=call.body, content_type=call.content_type, headers=headers)
        return response.status_code, orjson.loads(response.get_data())

    def _client(self, changes: dict[str, Any]) -> Any:
        key = repr(sorted(changes.items()))
        if key not in self._clients:
            from service.app import create_app
            from service.pipeline import Engine
            from service.rules_engine.load import load_rule_set

            settings = self.base.with_values(**changes)
            rules = load_rule_set(self.rules_dir, settings.canonical_base, settings.rule_overrides)
            self._clients[key] = create_app(settings, Engine(settings, rules)).test_client()
        return self._clients[key]


def server_settings_needed(case: Case, base: Settings) -> dict[str, Any]:
    """The settings a case needs that this configuration does not have (the deployment's are unknown here)."""
    return {name: value for name, value in case.spec.get("settings", {}).items() if getattr(base, name) != value}


def run_check(base_url: str, credentials: Credentials, rules_dir: Path, settings: Settings, keyword: str | None = None,
              timeout: float = 30.0, report: Callable[[Result], None] = lambda _result: None) -> list[Result]:
    """Discovery, then every case's calls; each result is handed to `report` as soon as it is known."""
    from service.rules_engine.load import case_files

    base_url = base_url.rstrip("/")
    session = requests.Session()
    session.trust_env = urlsplit(base_url).hostname not in _LOOPBACK  # no proxy between us and a local service
    reference = LocalReference(settings, rules_dir)
    results: list[Result] = []

    def send(call: Call) -> tuple[int, Any]:
        url = base_url + call.path
        headers = credentials.headers(url, call.path.startswith("/evaluate"))
        if call.content_type:
            headers["Content-Type"] = call.content_type
        if call.accept:
            headers["Accept"] = call.accept
        response = session.request(call.method, url, data=call.body, headers=headers, timeout=timeout)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text[:200]

    def record(result: Result) -> None:
        results.append(result)
        report(result)

    record(_check_discovery(send))
    for case_file in case_files(rules_dir):
        for case in load_cases(case_file, rules_dir / "schema"):
            if keyword and keyword not in case.name:
                continue
            record(_check_case(case, send, reference, settings, rules_dir))
    return results


def _check_discovery(send: Callable[[Call], tuple[int, Any]]) -> Result:
    try:
        status, body = send(Call("discovery", "GET", "/cds-services", None))
    except requests.RequestException as exc:
        return Result("discovery", "FAIL", [f"GET /cds-services: {type(exc).__name__}: {exc}"])
    services = {service.get("id") for service in body.get("services", [])} if status == 200 and isinstance(body, dict) else set()
    if TOXICITY_SERVICE.rsplit("/", 1)[1] not in services:
        return Result("discovery", "FAIL", [f"GET /cds-services: {status}, services {sorted(map(str, services))}"])
    return Result("discovery", "ok")


def _check_case(case: Case, send: Callable[[Call], tuple[int, Any]], reference: LocalReference, settings: Settings,
                rules_dir: Path) -> Result:
    name = f"{case.file.name}::{case.name}"
    needed = server_settings_needed(case, settings)
    if needed:
        variables = ", ".join(f"CARTOX_{key.upper()}={str(value).lower()}" for key, value in needed.items())
        return Result(name, "skip", [f"needs the server and this shell configured with {variables}"])
    reasons: list[str] = []
    try:
        run_case(case, rules_dir)
    except CaseFailure as exc:
        reasons.append(f"expectation (computed here): {exc}")
    for call in case_calls(case):
        try:
            status, body = send(call)
        except requests.RequestException as exc:
            reasons.append(f"{call.label}: {type(exc).__name__}: {exc}")
            continue
        expected_status, expected_body = reference.answer(case, call)
        if status != expected_status:
            reasons.append(f"{call.label}: HTTP {status}, expected {expected_status}: {_brief(body)}")
            continue
        difference = first_difference(expected_body, body)
        if difference:
            reasons.append(f"{call.label}: {difference}")
    return Result(name, "FAIL" if reasons else "ok", reasons)


def _brief(body: Any) -> str:
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        codes = [issue.get("details", {}).get("coding", [{}])[0].get("code") for issue in body.get("issue", [])]
        return f"OperationOutcome {codes}"
    return str(body)[:160]


def summary(results: list[Result], base_url: str) -> str:
    counts = {status: sum(1 for r in results if r.status == status) for status in ("ok", "FAIL", "skip")}
    return f"{counts['ok']} passed, {counts['FAIL']} failed, {counts['skip']} skipped against {base_url}"


def results_lines(result: Result) -> Iterator[str]:
    yield f"{result.status:<4} {result.name}"
    for reason in result.reasons:
        yield f"       {reason}"
