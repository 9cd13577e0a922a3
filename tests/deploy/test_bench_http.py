"""bench/run.py --http-ratio: the 30-day call and the bare orjson.loads endpoint on a real `cartox serve`
(and, with --secured-env / --signing-key, a second server with a signed request each time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

pytestmark = pytest.mark.deploy

BENCH = Path(__file__).resolve().parents[2] / "bench" / "run.py"


def test_http_ratio_reports_both_endpoints_and_the_secured_run(tmp_path):
    key = tmp_path / "key.pem"
    key.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    out = tmp_path / "ratio.json"
    result = subprocess.run([sys.executable, str(BENCH), "--http-ratio", "--ratio-requests", "3", "--warmup", "0",
                             "--secured-env", "CARTOX_LOG_LEVEL=WARNING", "--signing-key", str(key), "--issuer", "https://ehr.example.org",
                             "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ratio = json.loads(out.read_text())["http_ratio"]
    assert ratio["bytes"] > 4_000_000  # the 30-day patient
    for run in ("plain", "secured"):
        for endpoint in ("evaluate", "loads"):
            stats = ratio[run][endpoint]
            assert stats["requests"] == 3 and stats["errors"] == 0
            assert 0 < stats["min_ms"] <= stats["p50_ms"] <= stats["p99_ms"]
        assert ratio[run]["ratio_p50"] == ratio[run]["evaluate"]["p50_ms"] / ratio[run]["loads"]["p50_ms"]
    assert ratio["secured_over_plain_p50"] == ratio["secured"]["evaluate"]["p50_ms"] / ratio["plain"]["evaluate"]["p50_ms"]
    assert "evaluate/loads: p50" in result.stdout and "JWT and audit on / off" in result.stdout
