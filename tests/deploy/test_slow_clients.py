"""Slow and stalled clients against a really started `cartox serve` (real sockets, 127.0.0.1 only).

Clients that announce a body and stall must not stop /healthz or an evaluation from answering; the
stalled body ends with a 408 after CARTOX_BODY_TIMEOUT_SECONDS; a chunked body over
CARTOX_MAX_BODY_BYTES is refused with a 413, never evaluated truncated. The server runs one worker
process with two threads, fewer than the stalled clients, so nothing here passes by spare capacity.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

pytestmark = pytest.mark.deploy

CARTOX = Path(sys.executable).with_name("cartox")  # the console script of the environment under test
BODY_TIMEOUT = 3  # CARTOX_BODY_TIMEOUT_SECONDS of the server under test
MAX_BODY = 200_000  # CARTOX_MAX_BODY_BYTES of the server under test: above what the stalled clients announce
PROMPT = 2.0  # seconds within which /healthz and an evaluation must answer beside stalled clients
AS_OF = "2026-03-05T12:00:00%2B01:00"

# CAR-T infusion on 2026-03-02, fever 38.4 °C on day 3: ASTCT CRS grade 1 at AS_OF.
BUNDLE = json.dumps({
    "resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1", "birthDate": "1965-04-02"}},
        {"resource": {"resourceType": "MedicationAdministration", "id": "cart", "status": "completed",
                      "medicationCodeableConcept": {"text": "axicabtagene ciloleucel"},
                      "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-03-02T10:00:00+01:00"}},
        {"resource": {"resourceType": "Observation", "id": "t1", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
                      "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-03-05T08:00:00+01:00",
                      "valueQuantity": {"value": 38.4, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"}}},
    ],
}).encode()


class Answer:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}

    def json(self) -> dict:
        return json.loads(self.body)

    def code(self) -> str:
        return self.json()["issue"][0]["details"]["coding"][0]["code"]


class Service:
    """`cartox serve` in its own process group on a free loopback port; stop() ends the whole group."""

    def __init__(self, tmp_path: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        run_dir = tmp_path / "run"  # gunicorn >= 25.1 puts its control socket in $XDG_RUNTIME_DIR
        run_dir.mkdir(mode=0o700)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CARTOX_", "GUNICORN"))}
        env.update(CARTOX_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT), CARTOX_MAX_BODY_BYTES=str(MAX_BODY), XDG_RUNTIME_DIR=str(run_dir))
        self.log = tmp_path / "serve.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(CARTOX), "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1", "--threads", "2"],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def request(self, raw: bytes, timeout: float = 10.0) -> Answer:
        """Send raw bytes, read the answer until the server closes (every request here says Connection: close)."""
        with self.connect(timeout) as sock:
            sock.sendall(raw)
            return Answer(read_all(sock))

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"cartox serve exited with {self.proc.returncode}:\n{self.log.read_text()}"
            try:
                if self.request(get("/healthz"), timeout=2).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"/healthz not answering within {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=10)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()


def post(body: bytes, *, chunked: bool = False, path: str = f"/evaluate?asOf={AS_OF}") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/fhir+json\r\nConnection: close\r\n"
    if not chunked:
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 4096]), body[i:i + 4096]) for i in range(0, len(body), 4096))
    return f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + chunks + b"0\r\n\r\n"


def stalled_client(service: Service) -> socket.socket:
    """Headers announcing 100000 bytes of body, 16 of them sent, then nothing."""
    sock = service.connect()
    sock.sendall(post(b"", path=f"/evaluate?asOf={AS_OF}").replace(b"Content-Length: 0", b"Content-Length: 100000")
                 + b'{"resourceType":')
    return sock


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    started = Service(tmp_path_factory.mktemp("slow-clients"))
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


def timed(service: Service, raw: bytes) -> tuple[Answer, float]:
    began = time.monotonic()
    answer = service.request(raw, timeout=PROMPT + 5)
    return answer, time.monotonic() - began


def test_stalled_bodies_do_not_block_other_clients(service: Service) -> None:
    stalled = [stalled_client(service) for _ in range(4)]  # twice the server's threads
    try:
        time.sleep(0.5)  # let the server take them in
        health, seconds = timed(service, get("/healthz"))
        assert health.status == 200 and health.json()["status"] == "ok"
        assert seconds < PROMPT, f"/healthz took {seconds:.2f} s beside 4 stalled clients"

        evaluation, seconds = timed(service, post(BUNDLE))
        assert evaluation.status == 200, evaluation.body[:500]
        assert [card["indicator"] for card in evaluation.json()["cards"]] == ["warning", "info"]  # CRS grade 1; ICANS not assessable (no ICE)
        assert seconds < PROMPT, f"POST /evaluate took {seconds:.2f} s beside 4 stalled clients"
    finally:
        for sock in stalled:
            sock.close()


def test_a_stalled_body_ends_with_408_then_the_connection_closes(service: Service) -> None:
    began = time.monotonic()
    with stalled_client(service) as sock:
        answer = Answer(read_all(sock))  # read_all returns once the server has closed the connection
    waited = time.monotonic() - began
    assert answer.status == 408
    assert answer.code() == "input-timeout"
    assert answer.headers["connection"] == "close"
    assert BODY_TIMEOUT - 0.5 < waited < BODY_TIMEOUT + 3, f"408 after {waited:.1f} s (timeout {BODY_TIMEOUT} s)"


def test_a_trickled_body_gets_no_more_time_than_a_stalled_one(service: Service) -> None:
    """The deadline is for the whole body, not per read: a byte every 0.4 s does not extend it."""
    began = time.monotonic()
    with stalled_client(service) as sock:
        # Send only while nothing has come back: a byte arriving after the server closed would reset the connection.
        while not select.select([sock], [], [], 0.4)[0] and time.monotonic() - began < BODY_TIMEOUT + 5:
            sock.sendall(b" ")
        answer = Answer(read_all(sock))
    waited = time.monotonic() - began
    assert answer.status == 408
    assert answer.code() == "input-timeout"
    assert waited < BODY_TIMEOUT + 2, f"408 after {waited:.1f} s"


def test_a_chunked_body_over_the_limit_is_413(service: Service) -> None:
    """A chunked body announces no length: the limit applies to the bytes as they arrive."""
    body = BUNDLE[:-2] + b" " * MAX_BODY + b"]}"  # valid JSON: its first MAX_BODY bytes are not
    answer = service.request(post(body, chunked=True))
    assert answer.status == 413
    assert answer.code() == "input-body-too-large"
    assert str(MAX_BODY) in answer.json()["issue"][0]["details"]["text"]


def test_a_declared_length_over_the_limit_is_refused_before_the_body(service: Service) -> None:
    with service.connect() as sock:
        sock.sendall(post(b"").replace(b"Content-Length: 0", f"Content-Length: {MAX_BODY + 1}".encode()))
        answer = Answer(read_all(sock))
    assert answer.status == 413
    assert answer.code() == "input-body-too-large"


def test_a_chunked_body_within_the_limit_is_evaluated(service: Service) -> None:
    answer = service.request(post(BUNDLE, chunked=True))
    assert answer.status == 200, answer.body[:500]
    assert [card["indicator"] for card in answer.json()["cards"]] == ["warning", "info"]  # CRS grade 1; ICANS not assessable


@pytest.mark.parametrize("raw, status", [
    (get("/healthz"), 200),
    (post(BUNDLE), 200),
    (get("/nope"), 404),
    (post(b"{not json"), 400),
], ids=["healthz", "evaluate", "404", "400"])
def test_security_headers_and_no_server_banner(service: Service, raw: bytes, status: int) -> None:
    answer = service.request(raw)
    assert answer.status == status
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-store"
    assert "server" not in answer.headers, answer.headers
