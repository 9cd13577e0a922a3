"""`cartox serve` in production mode as README "Security" documents it, with a test issuer key: every
endpoint answers a valid JWT, a missing or replayed one gets 401, a browser origin on the allow-list can
preflight and read the answers, /evaluate takes an API key, /healthz stays open."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

pytestmark = pytest.mark.deploy

CARTOX = Path(sys.executable).with_name("cartox")
ISSUER = "https://ehr.example.org"
ORIGIN = "https://ehr.example.org"
API_KEY = "deploy-test-api-key-0123456789"
AS_OF = "2026-03-07T12:00:00%2B01:00"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    assert url.startswith("http://127.0.0.1:"), url
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


class ProductionServer:
    def __init__(self, tmp_path: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP384R1())
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwks_file = tmp_path / "ehr-jwks.json"
        jwks_file.write_text(json.dumps({"keys": [{**public, "kid": "ehr-1", "use": "sig", "alg": "ES384"}]}))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CARTOX_", "GUNICORN"))}
        env.update({
            "XDG_RUNTIME_DIR": str(tmp_path),
            "CARTOX_MODE": "production",
            "CARTOX_EXTERNAL_BASE_URLS": self.base,
            "CARTOX_TRUSTED_ISSUERS": json.dumps({ISSUER: {"jwks_file": str(jwks_file)}}),
            "CARTOX_CORS_ORIGINS": ORIGIN,
            "CARTOX_API_KEYS": API_KEY,
            "CARTOX_AUDIT_KEY": "production-test-audit-key-0123456789abcdef",
        })
        self.log_path = tmp_path / "serve.log"
        self._log = open(self.log_path, "wb")
        # one worker: the jti replay store of this branch is per process (a shared store is injected at merge)
        self.proc = subprocess.Popen([str(CARTOX), "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                                     env=env, cwd=tmp_path, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"cartox serve exited with {self.proc.returncode}:\n{self.log()}"
            try:
                if http("GET", f"{self.base}/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"/healthz did not answer within 60 s\n{self.log()}")

    def token(self, path: str, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "sub": "ehr", "aud": self.base + path, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4()), **claims}
        return jwt.encode(payload, self.key, algorithm="ES384", headers={"kid": "ehr-1"})

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self._log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionServer]:
    running = ProductionServer(tmp_path_factory.mktemp("production"))
    try:
        running.wait_healthy()
        yield running
    finally:
        running.stop()


def hook_request() -> dict[str, Any]:
    return {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "fhirServer": "https://ehr.example.org/fhir",
            "context": {"userId": "Practitioner/p1", "patientId": "p1"},
            "prefetch": {"patient": {"resourceType": "Patient", "id": "p1", "birthDate": "1961-03-14"},
                         "observations": None, "medicationAdministrations": None, "conditions": None}}


def test_start_says_production_mode(server: ProductionServer) -> None:
    assert f"cartox listening on {server.base} (production mode" in server.log()
    assert "DEVELOPMENT MODE" not in server.log()


def test_every_endpoint_with_a_valid_jwt(server: ProductionServer) -> None:
    status, _, body = http("GET", f"{server.base}/cds-services", headers={"Authorization": f"Bearer {server.token('/cds-services')}"})
    assert status == 200 and json.loads(body)["services"]
    path = "/cds-services/car-t-toxicity"
    status, _, body = http("POST", server.base + path, hook_request(), {"Authorization": f"Bearer {server.token(path)}"})
    assert status == 200, body[:500]
    assert "cards" in json.loads(body)
    status, _, _ = http("GET", f"{server.base}/evaluate", headers={"Authorization": f"Bearer {server.token('/evaluate')}"})
    assert status == 200


def test_missing_and_replayed_tokens_get_401(server: ProductionServer) -> None:
    path = "/cds-services/car-t-toxicity"
    status, headers, body = http("POST", server.base + path, hook_request())
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert json.loads(body)["issue"][0]["details"]["coding"][0]["code"] == "unauthorized"
    token = server.token(path)
    assert http("POST", server.base + path, hook_request(), {"Authorization": f"Bearer {token}"})[0] == 200
    assert http("POST", server.base + path, hook_request(), {"Authorization": f"Bearer {token}"})[0] == 401
    assert token not in server.log() and "replayed" in server.log()


def test_browser_origin_on_the_allow_list(server: ProductionServer) -> None:
    for path in ("/cds-services", "/cds-services/car-t-toxicity", "/cds-services/car-t-glucocorticoid-order-check"):
        status, headers, _ = http("OPTIONS", server.base + path, headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"})
        assert status == 200 and headers["access-control-allow-origin"] == ORIGIN, (path, status, headers)
    status, headers, _ = http("GET", f"{server.base}/cds-services",
                              headers={"Origin": ORIGIN, "Authorization": f"Bearer {server.token('/cds-services')}"})
    assert status == 200 and headers["access-control-allow-origin"] == ORIGIN


def test_evaluate_with_an_api_key_and_health_open(server: ProductionServer) -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": []}
    assert http("POST", f"{server.base}/evaluate?asOf={AS_OF}", bundle, {"X-API-Key": API_KEY})[0] == 200
    assert http("POST", f"{server.base}/evaluate?asOf={AS_OF}", bundle)[0] == 401
    assert http("GET", f"{server.base}/healthz")[0] == 200
