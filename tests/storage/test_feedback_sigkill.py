"""An acknowledged feedback survives SIGKILL: `cartox serve` is killed (its whole process group) as soon as the
200 arrives, restarted on the same database, and every acknowledged row is there."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from service.storage.database import Database
from service.storage.tables import evaluations, feedback

pytestmark = pytest.mark.deploy

CARTOX = Path(sys.executable).with_name("cartox")
ROUNDS = 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _environment(url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARTOX_", "GUNICORN"))}
    env["XDG_RUNTIME_DIR"] = str(tmp_path)  # gunicorn's control socket
    if url.startswith("sqlite"):
        env["CARTOX_DATA_DIR"] = str(Path(url.removeprefix("sqlite:///")).parent)  # the default SQLite file there
    else:
        env["CARTOX_DATABASE_URL"] = url
    return env


def _exchange(port: int, raw: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send a request and return (status, body) as soon as the whole answer is in: the server may die right after."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while True:
            head, separator, body = data.partition(b"\r\n\r\n")
            if separator:
                lines = head.decode("latin-1").split("\r\n")
                length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
                if len(body) >= length:
                    return int(lines[0].split()[1]), body[:length]
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed before the whole answer: {data[:200]!r}")
            data += chunk


def _serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    with open(log, "ab") as out:
        process = subprocess.Popen([str(CARTOX), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                   env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, f"cartox serve exited with {process.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 2)[0] == 200:
                return process, port
        except OSError:
            time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail(f"cartox serve not ready within 60 s:\n{log.read_text()[-3000:]}")


def _feedback_request(card: str) -> bytes:
    body = json.dumps({"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-03-07T12:00:00Z",
                                     "overrideReason": {"userComment": "killed right after"}}]}).encode()
    head = (f"POST /cds-services/car-t-toxicity/feedback HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def test_acknowledged_feedback_survives_sigkill_of_the_server(database_url, tmp_path):
    env = _environment(database_url, tmp_path)
    log = tmp_path / "serve.log"
    acknowledged = []
    for round_number in range(ROUNDS):
        process, port = _serve(env, log)
        card = f"00000000-0000-4000-8000-{round_number:012d}"
        try:
            status, body = _exchange(port, _feedback_request(card))
        finally:
            os.killpg(process.pid, signal.SIGKILL)  # the master and its worker, at once
            process.wait(timeout=10)
        assert status == 200, body[:500]
        assert json.loads(body)["stored"] == 1
        acknowledged.append(card)
    # Restarts cleanly on what the killed servers left; an evaluation's audit record, written by the worker's
    # background thread, is flushed when the server stops normally.
    process, port = _serve(env, log)
    try:
        status, body = _exchange(port, _evaluate_request())
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    assert status == 200, body[:500]
    database = Database(database_url)
    try:
        with database.engine.connect() as connection:
            stored = [row.card_uuid for row in connection.execute(select(feedback.c.card_uuid).order_by(feedback.c.id))]
            audited = connection.execute(select(evaluations.c.service_id)).scalars().all()
    finally:
        database.dispose()
    assert stored == acknowledged
    assert audited == ["evaluate"]


def _evaluate_request() -> bytes:
    body = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1"}}]}).encode()
    head = (f"POST /evaluate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/fhir+json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body
