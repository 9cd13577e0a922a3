"""`cartox check` against a really started `cartox serve` on loopback: the whole scenario pack passes, with
a JWT minted per call; a deployment that answers differently fails, named, with a non-zero exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from service.resources import rules_dir
from service.rule_cases.cases import load_cases
from service.rules_engine.load import case_files

pytestmark = pytest.mark.deploy

CARTOX = Path(sys.executable).with_name("cartox")
# The same string-hash seed for the served instance and the check: which of two administrations of one
# criterion a card names follows set order (test_output_does_not_depend_on_the_hash_seed below).
AS_OF = "2026-03-05T12:00:00+01:00"


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTOX_")}
    return subprocess.run([str(CARTOX), "check", *args], env=env, capture_output=True, text=True, timeout=300)


def test_the_whole_scenario_pack_passes_against_a_served_instance_with_signed_calls(serve_cartox, tmp_path):
    cartox_server = serve_cartox()
    key = tmp_path / "client-key.pem"
    key.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    result = _check("--url", cartox_server.base_url, "--signing-key", str(key), "--issuer", "https://ehr.example.org")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    directory = rules_dir()
    cases = [f"{f.name}::{c.name}" for f in case_files(directory) for c in load_cases(f, directory / "schema")]
    needing_settings = {f"{f.name}::{c.name}" for f in case_files(directory) for c in load_cases(f, directory / "schema")
                        if c.spec.get("settings")}
    assert lines[0] == "ok   discovery"
    assert {line[5:] for line in lines if line.startswith("ok   ")} == {"discovery", *set(cases) - needing_settings}
    assert {line[5:] for line in lines if line.startswith("skip ")} == needing_settings
    assert lines[-1] == f"{len(cases) - len(needing_settings) + 1} passed, 0 failed, {len(needing_settings)} skipped against {cartox_server.base_url}"


def test_a_deployment_answering_differently_fails_by_name(serve_cartox):
    other = serve_cartox(workers=1, env={"CARTOX_GUIDELINE": "ASCO-2021"})  # a site default this shell does not have
    result = _check("--url", other.base_url, "-k", "s004-grade-1")
    assert result.returncode == 1, result.stdout
    fails = [line for line in result.stdout.splitlines() if line.startswith("FAIL ")]
    assert fails and all("s004-grade-1" in line for line in fails)
    assert "evaluate-fhir: $." in result.stdout and "cds-hooks: $.cards" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("1 passed, ")  # discovery alone


def test_an_unreachable_deployment_fails(tmp_path):
    result = _check("--url", "http://127.0.0.1:9", "-k", "fever-only-grade-1")
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].startswith("FAIL discovery")
    assert "ConnectionError" in result.stdout


def test_signing_options_go_together():
    result = _check("--url", "http://127.0.0.1:9", "--issuer", "x")
    assert result.returncode == 2 and "--signing-key and --issuer go together" in result.stderr


def test_output_does_not_depend_on_the_hash_seed(tmp_path):
    """Identical input and evaluation time give identical output, in every process (`cartox check` relies on it)."""
    import orjson

    directory = rules_dir()
    case = next(c for c in load_cases(directory / "crs_astct.cases.yaml", directory / "schema")
                if c.name == "two-vasopressors-one-after-another-grade-3")
    from service.rule_cases.cases import case_bundle

    bundle = tmp_path / "bundle.json"
    bundle.write_bytes(orjson.dumps(case_bundle(case)))
    outputs = [subprocess.run([str(CARTOX), "evaluate", str(bundle), "--as-of", AS_OF, "--format", "fhir"], capture_output=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}, timeout=120, check=True).stdout for seed in ("0", "1")]
    assert outputs[0] == outputs[1]


def test_every_call_carries_its_own_token_for_the_url_called(tmp_path):
    """A recording endpoint stands in for the deployment: each token verifies with the client's public key,
    names the URL it was sent to as aud, and has a jti of its own; the API key goes to /evaluate instead."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import jwt

    seen: list[tuple[str, dict[str, str]]] = []

    class Recorder(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _answer

        def log_message(self, *_args) -> None:
            pass

    recorder = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{recorder.server_address[1]}/cartox"
    key = ec.generate_private_key(ec.SECP384R1())
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    try:
        signed = _check("--url", base, "--signing-key", str(key_file), "--issuer", "https://ehr.example.org", "-k", "fever-only-grade-1")
        keyed = _check("--url", base, "--signing-key", str(key_file), "--issuer", "https://ehr.example.org", "--api-key", "k-42",
                       "-k", "fever-only-grade-1")
    finally:
        recorder.shutdown()
    assert signed.returncode == keyed.returncode == 1  # nothing answered as cartox does
    paths = [path.split("?")[0] for path, _ in seen]
    assert paths == ["/cartox/cds-services", "/cartox/cds-services/car-t-toxicity", "/cartox/evaluate", "/cartox/evaluate"] * 2
    jtis = []
    for (path, headers), api_key_run in zip(seen, [False] * 4 + [True] * 4):
        if api_key_run and path.startswith("/cartox/evaluate"):
            assert headers["x-api-key"] == "k-42" and "authorization" not in headers
            continue
        token = headers["authorization"].removeprefix("Bearer ")
        claims = jwt.decode(token, key.public_key(), algorithms=["ES384"], audience="http://127.0.0.1:%d%s" % (
            recorder.server_address[1], path.split("?")[0]), issuer="https://ehr.example.org")
        assert claims["exp"] - claims["iat"] == 60
        jtis.append(claims["jti"])
    assert len(jtis) == len(set(jtis)) == 6
