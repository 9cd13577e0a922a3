"""Configuration errors of the installed `cartox` console script; which directory `cartox rules` checked.

A CARTOX_ variable the service cannot run with ends `cartox serve` and `cartox evaluate` with exit
status 2 and one line on stderr naming the variable, never a traceback (and `serve` never starts).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.deploy

CARTOX = Path(sys.executable).with_name("cartox")  # the console script of the environment under test

# (variable, value, words the one line must contain besides the variable)
BAD_CONFIGURATIONS = [
    ("CARTOX_PORT", "eighty", ["'eighty'"]),
    ("CARTOX_PORT", "70000", ["1-65535"]),
    ("CARTOX_GUIDELINE", "NCCN-2099", ["NCCN-2099", "seed-S004"]),
    ("CARTOX_RULE_OVERRIDES", "{not json", ["JSON"]),
    ("CARTOX_RULE_OVERRIDES", '["crs-astct"]', ["rule-id"]),
    ("CARTOX_RULE_OVERRIDES", '{"crs-astct": {"fever_celsius": 45}}', ["fever_celsius=45", "allowed range 37.5-39"]),
    ("CARTOX_RULE_OVERRIDES", '{"crs-astct": {"fever_celsius": "hot"}}', ["fever_celsius", "wrong type"]),
    ("CARTOX_RULE_OVERRIDES", '{"crs-astct": {"no_such_parameter": 1}}', ["no_such_parameter"]),
    ("CARTOX_RULE_OVERRIDES", '{"no-such-rule": {"window_hours": 12}}', ["no-such-rule"]),
    ("CARTOX_MAX_BODY_BYTES", "32MB", ["'32MB'"]),
    ("CARTOX_MAX_BODY_BYTES", "0", ["outside the allowed range"]),
    ("CARTOX_BODY_TIMEOUT_SECONDS", "-5", ["outside the allowed range"]),
    ("CARTOX_ACCEPT_PRELIMINARY", "maybe", ["'maybe'", "true or false"]),
    ("CARTOX_STRICT_VALIDATION", "2", ["'2'"]),
    ("CARTOX_LOG_LEVEL", "loud", ["'loud'", "DEBUG"]),
    ("CARTOX_CANONICAL_BASE", "cartox.example.org", ["http(s) URL"]),
    ("CARTOX_RULES_DIR", "/nonexistent/rules", ["/nonexistent/rules"]),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(args: list[str], env: dict[str, str], tmp_path: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CARTOX_", "GUNICORN"))}
    clean["XDG_RUNTIME_DIR"] = str(tmp_path)  # gunicorn's control socket, should `serve` start after all
    try:
        return subprocess.run([str(CARTOX), *args], env={**clean, **env}, cwd=tmp_path, input=stdin,
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"cartox {' '.join(args)} still running after 60 s with {env}: it should have refused the configuration ({exc.stderr!r})")


def assert_one_line_naming(result: subprocess.CompletedProcess[str], variable: str, words: list[str]) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr[-2000:]}"
    assert lines[0].startswith(f"cartox: configuration error: {variable}"), lines[0]
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert result.stdout == ""


@pytest.mark.parametrize("variable, value, words", BAD_CONFIGURATIONS, ids=[f"{v}={x}" for v, x, _ in BAD_CONFIGURATIONS])
def test_serve_refuses_a_bad_configuration(tmp_path: Path, variable: str, value: str, words: list[str]) -> None:
    result = run(["serve", "--host", "127.0.0.1", "--port", str(free_port())], {variable: value}, tmp_path)
    assert_one_line_naming(result, variable, words)


# Security settings `serve` refuses (README "Security"): (address, environment, variable, words). 192.0.2.10 is a
# documentation address (TEST-NET-1) no machine has: a non-loopback address that could never be bound.
ISSUERS = '{"https://ehr.example.org": {"jwks_url": "https://ehr.example.org/jwks.json"}}'
SECURITY_CONFIGURATIONS = [
    ("192.0.2.10", {}, "CARTOX_TRUSTED_ISSUERS", ["production mode", "192.0.2.10"]),
    ("192.0.2.10", {"CARTOX_MODE": "development"}, "CARTOX_MODE", ["192.0.2.10", "CARTOX_ALLOW_INSECURE_DEVELOPMENT=1"]),
    ("127.0.0.1", {"CARTOX_MODE": "production"}, "CARTOX_TRUSTED_ISSUERS", ["at least one trusted JWT issuer"]),
    ("127.0.0.1", {"CARTOX_MODE": "production", "CARTOX_TRUSTED_ISSUERS": ISSUERS}, "CARTOX_EXTERNAL_BASE_URLS", ["aud"]),
    ("127.0.0.1", {"CARTOX_MODE": "production", "CARTOX_TRUSTED_ISSUERS": ISSUERS, "CARTOX_EXTERNAL_BASE_URLS": "https://cds.example.org",
                   "CARTOX_CORS_ORIGINS": "*"}, "CARTOX_CORS_ORIGINS", ["'*'"]),
    ("127.0.0.1", {"CARTOX_MODE": "production", "CARTOX_API_KEYS": "a-long-enough-api-key-0123"}, "CARTOX_AUDIT_KEY",
     ["production mode needs the audit key"]),
    ("127.0.0.1", {"CARTOX_MODE": "prod"}, "CARTOX_MODE", ["'prod'"]),
    ("127.0.0.1", {"CARTOX_TRUSTED_ISSUERS": "{oops"}, "CARTOX_TRUSTED_ISSUERS", ["not valid JSON"]),
    ("127.0.0.1", {"CARTOX_JWT_LEEWAY_SECONDS": "3600"}, "CARTOX_JWT_LEEWAY_SECONDS", ["0-300"]),
]


@pytest.mark.parametrize("host, env, variable, words", SECURITY_CONFIGURATIONS,
                         ids=[f"{host}-{'-'.join(env) or 'default'}" for host, env, _, _ in SECURITY_CONFIGURATIONS])
def test_serve_refuses_an_insecure_or_bad_security_configuration(tmp_path: Path, host: str, env: dict[str, str], variable: str,
                                                                 words: list[str]) -> None:
    result = run(["serve", "--host", host, "--port", str(free_port())], env, tmp_path)
    assert_one_line_naming(result, variable, words)


@pytest.mark.parametrize("variable, value, words", [BAD_CONFIGURATIONS[0], BAD_CONFIGURATIONS[2], BAD_CONFIGURATIONS[5]],
                         ids=["port", "guideline", "override-range"])
def test_evaluate_refuses_a_bad_configuration(tmp_path: Path, variable: str, value: str, words: list[str]) -> None:
    result = run(["evaluate", "-"], {variable: value}, tmp_path, stdin='{"resourceType": "Bundle", "type": "collection"}')
    assert_one_line_naming(result, variable, words)


def test_override_within_the_range_is_used(tmp_path: Path) -> None:
    """The same variable with an allowed value: evaluate runs and the rule set version records the override."""
    bundle = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": []})
    plain = run(["evaluate", "-", "--format", "fhir"], {}, tmp_path, stdin=bundle)
    site = run(["evaluate", "-", "--format", "fhir"], {"CARTOX_RULE_OVERRIDES": '{"crs-astct": {"fever_celsius": 38.3}}'}, tmp_path, stdin=bundle)
    assert plain.returncode == 0 and site.returncode == 0, (plain.stderr[-1000:], site.stderr[-1000:])
    assert plain.stdout != site.stdout  # same input, other rule-set version (content hash includes overrides)


@pytest.mark.parametrize("command", ["lint", "test"])
def test_rules_commands_say_which_directory_they_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    from click.testing import CliRunner

    from service.cli import main
    from service.resources import rules_dir

    monkeypatch.delenv("CARTOX_RULES_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    only = ["-k", "fever"] if command == "test" else []
    runner = CliRunner()

    shipped = runner.invoke(main, ["rules", command, *only])
    assert shipped.exit_code == 0, shipped.output[-2000:]
    assert shipped.output.splitlines()[0] == f"rules directory: {rules_dir().resolve()}"

    site = tmp_path / "site-rules"
    shutil.copytree(rules_dir(), site, ignore=shutil.ignore_patterns("__pycache__"))
    chosen = runner.invoke(main, ["rules", command, "--dir", "site-rules", *only])  # given relative, reported absolute
    assert chosen.exit_code == 0, chosen.output[-2000:]
    assert chosen.output.splitlines()[0] == f"rules directory: {site.resolve()}"

    missing = runner.invoke(main, ["rules", command, "--dir", "no-such-dir"])
    assert missing.exit_code == 2 and "'no-such-dir' does not exist" in missing.output
