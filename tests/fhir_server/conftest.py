"""The real FHIR server of the prefetch-fallback tests (tests/fhir_server/server.mjs: Medplum's FhirRouter and
in-memory repository) and loopback test doubles for a server that is down or never answers.

`fhir_server`: the server named by CARTOX_TEST_FHIR_URL (started by .ci/run), or else one started here with
node (after `npm ci` when its packages are missing). When it cannot start, the tests fail under CI
(CARTOX_CI=1) and are skipped with the reason otherwise (a machine without node).
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

HERE = Path(__file__).resolve().parent
# The in-memory repository evaluates a search by FHIRPath over every resource: on a loaded 2-core CI machine
# one search can take seconds. Tests of what is fetched get a roomy budget; tests of the budget set their own.
ROOMY = {"fhir_fetch_budget_seconds": 60.0, "fhir_read_timeout_seconds": 30.0}
TOKEN = "cartox-test-token"  # the server's default CARTOX_TEST_FHIR_TOKEN
START_SECONDS = 60


@dataclass(frozen=True)
class FhirTestServer:
    root: str  # http://127.0.0.1:PORT

    @property
    def base(self) -> str:
        return f"{self.root}/fhir"

    @property
    def secured_base(self) -> str:
        """The same data behind `Authorization: Bearer cartox-test-token` (401 without it)."""
        return f"{self.root}/secured/fhir"

    def load(self, resources: list[dict[str, Any]]) -> None:
        """PUT every resource with its id, in one transaction."""
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources]}
        response = requests.post(self.base, json=bundle, timeout=60)
        assert response.status_code == 200, response.text[:500]
        statuses = {entry["response"]["status"] for entry in response.json()["entry"]}
        assert statuses <= {"200", "201"}, statuses

    def requests_received(self) -> list[dict[str, Any]]:
        """Requests since the last clear: method, url (path and query), authorization header or None."""
        return requests.get(f"{self.root}/_requests", timeout=10).json()["requests"]

    def clear_requests(self) -> None:
        requests.delete(f"{self.root}/_requests", timeout=10)


def _cannot_start(why: str) -> None:
    message = f"the test FHIR server (tests/fhir_server) cannot start: {why}"
    if os.environ.get("CARTOX_CI") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _start() -> tuple[subprocess.Popen[str], str]:
    node = shutil.which("node")
    if node is None:
        _cannot_start("node is not installed (Node 20.19+ is needed)")
    if not (HERE / "node_modules").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            _cannot_start("npm is not installed")
        installed = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, capture_output=True, text=True, timeout=300)
        if installed.returncode != 0:
            _cannot_start(f"npm ci failed: {installed.stderr.strip()[-800:]}")
    process = subprocess.Popen([node, "server.mjs", "--port", "0"], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        ready = selector.select(timeout=START_SECONDS)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("listening "):
        process.kill()
        _cannot_start(f"no 'listening' line within {START_SECONDS} s: {line!r} {process.stderr.read()[-800:] if process.stderr else ''}")
    return process, line.split()[1]


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirTestServer]:
    url = os.environ.get("CARTOX_TEST_FHIR_URL")
    if url:
        yield FhirTestServer(url.rstrip("/"))
        return
    process, root = _start()
    try:
        yield FhirTestServer(root)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def fetching_app(app_factory):
    """app_factory with the roomy FHIR timeouts unless told otherwise: ``fetching_app(fhir_page_size=7)``."""

    def make(**settings_values: Any):
        return app_factory(**(ROOMY | settings_values))

    return make


@pytest.fixture
def client(fetching_app):
    """The root conftest's test client, with the roomy FHIR timeouts."""
    return fetching_app().test_client()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback server that accepts connections and never answers (the slow-server test double)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/fhir"
    finally:
        stop.set()
        thread.join(timeout=2)
        for connection in accepted:
            connection.close()
        listener.close()


@pytest.fixture
def trickling_server() -> Iterator[str]:
    """A loopback server that answers 200 at once, then sends its body one byte every 0.1 s, for minutes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def trickle(connection: socket.socket) -> None:
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 100000\r\n\r\n{")
            while not stop.wait(0.1):
                try:
                    connection.sendall(b" ")
                except OSError:
                    return

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection = listener.accept()[0]
            except OSError:
                continue
            threading.Thread(target=trickle, args=(connection,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/fhir"
    finally:
        stop.set()
        thread.join(timeout=2)
        listener.close()
